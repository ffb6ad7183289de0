"""Tests for exercise 09: a hand-worked table, a float64 loop over a real enumerated table of the
arithmetic world, and the properties regret ≥ 0, regret(π*) = 0, regret = τ·KL(π‖π*)."""

import math

import pytest
import torch

F64 = torch.float64
# One prompt, three responses: π_ref = (1/2, 1/4, 1/4), rewards (0, ln 2, 0) at τ = 1, so
# Z = 1/2 + 1/4·2 + 1/4 = 5/4 and π* = (2/5, 2/5, 1/5). The policy π = (1/4, 1/2, 1/4).
REF = torch.tensor([[0.5, 0.25, 0.25]], dtype=F64).log()
R = torch.tensor([[0.0, math.log(2), 0.0]], dtype=F64)
PI = torch.tensor([[0.25, 0.5, 0.25]], dtype=F64).log()
# KL(π‖π*) = 1/4 ln(5/8) + 1/2 ln(5/4) + 1/4 ln(5/4)
KL_STAR = 0.25 * math.log(5 / 8) + 0.75 * math.log(5 / 4)


def test_hand_worked_kl_to_optimal(ex):
    got = ex.kl_to_optimal(PI, REF, R, 1.0)
    reverse = 0.4 * math.log(0.4 / 0.25) + 0.4 * math.log(0.4 / 0.5) + 0.2 * math.log(0.2 / 0.25)
    hint = ("that is KL(π*‖π): the first argument of KL is the policy, the weights are π's"
            if abs(float(got[0]) - reverse) < 1e-9 else "check log π* = log π_ref + r/τ − log Z")
    assert got.shape == (1,), f"one value per prompt, got shape {tuple(got.shape)}"
    assert float(got[0]) == pytest.approx(KL_STAR, abs=1e-12), f"got {float(got[0])}, want {KL_STAR}: {hint}"


def test_hand_worked_regret(ex):
    # J* = ln(5/4); J(π) = 1/2 ln 2 − KL(π‖π_ref), KL(π‖π_ref) = 1/4 ln(1/2) + 1/2 ln 2 = 1/4 ln 2
    want = math.log(5 / 4) - (0.5 * math.log(2) - 0.25 * math.log(2))
    got = float(ex.regret(PI, REF, R, 1.0)[0])
    hint = ("did you leave out the −τ·KL(π‖π_ref) term of J?" if abs(got - (math.log(5 / 4) - 0.5 * math.log(2))) < 1e-9
            else "J* = τ log Z_τ, J = E_π[r] − τ KL(π‖π_ref)")
    assert got == pytest.approx(want, abs=1e-12), f"got {got}, want {want}: {hint}"


def random_tables(n=4, y=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.log_softmax(torch.randn(n, y, generator=g, dtype=F64), -1)
    r = torch.rand(n, y, generator=g, dtype=F64)
    return g, ref, r


def test_regret_is_tau_times_the_kl_to_the_optimum_and_never_negative(ex):
    g, ref, r = random_tables()
    for tau in (0.05, 0.3, 2.0):
        pi = torch.log_softmax(2 * torch.randn(ref.shape, generator=g, dtype=F64), -1)
        reg, kl = ex.regret(pi, ref, r, tau), ex.kl_to_optimal(pi, ref, r, tau)
        assert (reg >= -1e-12).all(), f"a negative regret at τ = {tau}: J* must be the best J of any policy"
        assert torch.allclose(reg, tau * kl, rtol=1e-9, atol=1e-12), (
            f"regret ≠ τ·KL(π‖π*) at τ = {tau}: one of the two is off (is τ applied to the KL term?)")


def test_the_optimum_has_zero_regret_and_a_deterministic_policy_is_finite(ex):
    _, ref, r = random_tables(seed=1)
    tau = 0.3
    scores = ref + r / tau
    star = scores - torch.logsumexp(scores, -1, keepdim=True)
    assert ex.regret(star, ref, r, tau).abs().max() < 1e-12, "π* itself must have regret 0"
    assert ex.kl_to_optimal(star, ref, r, tau).abs().max() < 1e-12, "KL(π*‖π*) must be 0"
    onehot = torch.full_like(ref, -math.inf)
    onehot[:, 0] = 0.0
    got = ex.kl_to_optimal(onehot, ref, r, tau)
    assert torch.isfinite(got).all(), ("a response with π(y|x) = 0 must add 0, not 0·(−inf) = nan: "
                                       "use torch.where on π > 0")


@pytest.fixture(scope="module")
def arithmetic_table():
    """A real enumerated table: a fresh GPT restricted to the arithmetic world's responses."""
    from rpo_mini import exact, stages
    from rpo_mini.model import GPT, GPTConfig
    from rpo_mini.tokenizer import make_encoding, train_bpe
    from rpo_mini.worlds import WorldConfig, make_world

    world = make_world(WorldConfig(name="arithmetic", corpus_size=300))
    enc = make_encoding(train_bpe([p + r for p, r in world.corpus], 300))
    torch.manual_seed(0)
    model = GPT(stages.model_config(world, enc, GPTConfig(n_layer=1, n_embd=16, n_head=2), 4)).eval()
    prompts = world.test_prompts[:3]
    responses = [enc.encode_ordinary(y) + [enc.eot_token] for y in world.responses()]
    table = exact.logprob_table(model, [enc.encode_ordinary(p) for p in prompts], responses, enc.eot_token)
    rewards = exact.reward_table(world, prompts, "partial")
    return table, rewards


def test_on_an_enumerated_table_of_the_arithmetic_world(ex, arithmetic_table):
    ref, r = arithmetic_table                      # π_ref: the fresh model; π: a sharpened copy of it
    pi = torch.log_softmax(3 * ref, -1)
    tau = 0.2
    for x in range(ref.shape[0]):                   # the definitions, response by response, in floats
        z = sum(math.exp(a + b / tau) for a, b in zip(ref[x].tolist(), r[x].tolist()))
        star = [math.exp(a + b / tau) / z for a, b in zip(ref[x].tolist(), r[x].tolist())]
        p = pi[x].exp().tolist()
        kl_star = sum(pp * math.log(pp / s) for pp, s in zip(p, star) if pp > 0)
        kl_ref = sum(pp * (a - b) for pp, a, b in zip(p, pi[x].tolist(), ref[x].tolist()) if pp > 0)
        j = sum(pp * rr for pp, rr in zip(p, r[x].tolist())) - tau * kl_ref
        assert float(ex.kl_to_optimal(pi, ref, r, tau)[x]) == pytest.approx(kl_star, rel=1e-8)
        assert float(ex.regret(pi, ref, r, tau)[x]) == pytest.approx(tau * math.log(z) - j, rel=1e-8)
