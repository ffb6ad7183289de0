"""Tests for rpo_mini/losses.py.

Every expected value comes from an independent computation: a plain Python loop with the
math module, a closed form, or a hand-worked example -- never from the code under test.
"""

import math

import pytest
import torch

from rpo_mini.losses import (
    binarize_rewards, dro_loss, group_sizes, kto_loss, kto_mismatched, log_partition,
    quantile_rewards, rpo_loss, rpo_targets, sequence_logprobs, sft_loss, sft_select,
)

F64 = torch.float64


def t64(values):
    return torch.tensor(values, dtype=F64)


# ---------------------------------------------------------------------------------------
# naive references
# ---------------------------------------------------------------------------------------

def naive_logsumexp(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def naive_log_partition(rewards, ids, tau, estimator, ref=None):
    """Per-sample log Z_hat by looping over prompts with Python floats."""
    out = []
    for i in range(len(rewards)):
        group = [j for j in range(len(rewards)) if ids[j] == ids[i]]
        if estimator == "mean":
            out.append(naive_logsumexp([rewards[j] / tau for j in group]) - math.log(len(group)))
        elif estimator == "ref":
            out.append(naive_logsumexp([ref[j] + rewards[j] / tau for j in group]))
        else:  # uniform: the log-mean-exp of the K mid-rank quantiles 0, 1/(K-1), ..., 1 (0.5 alone)
            k = len(group)
            qs = [q / (k - 1) for q in range(k)] if k > 1 else [0.5]
            out.append(naive_logsumexp([q / tau for q in qs]) - math.log(k))
    return out


def naive_sequence_logprob(logits, tokens, mask, b):
    """Sum over response positions t of log softmax(logits[b, t-1])[tokens[b, t]], by hand."""
    total, count = 0.0, 0
    for t in range(1, tokens.shape[1]):
        if mask[b, t]:
            row = logits[b, t - 1].tolist()
            total += row[int(tokens[b, t])] - naive_logsumexp(row)
            count += 1
    return total, count


@pytest.fixture
def batch():
    """3 sequences of length 8 over a vocabulary of 6; token 5 is end-of-text and padding."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 8, 6, generator=g)
    tokens = torch.tensor([[1, 2, 3, 4, 5, 5, 5, 5],    # prompt 2, response 3 (incl. EOT), pad 3
                           [2, 2, 1, 0, 3, 2, 4, 5],    # prompt 3, response 5, no pad
                           [4, 1, 0, 3, 5, 5, 5, 5]])   # prompt 4, response 1 (EOT only), pad 3
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 0],
                         [0, 0, 0, 1, 1, 1, 1, 1],
                         [0, 0, 0, 0, 1, 0, 0, 0]])
    return logits, tokens, mask


# ---------------------------------------------------------------------------------------
# sequence_logprobs
# ---------------------------------------------------------------------------------------

def test_sequence_logprobs_matches_naive_loop(batch):
    logits, tokens, mask = batch
    got = sequence_logprobs(logits, tokens, mask)
    want = [naive_sequence_logprob(logits, tokens, mask, b)[0] for b in range(3)]
    assert got.dtype == torch.float32
    assert torch.allclose(got, torch.tensor(want), atol=1e-5)


def test_sequence_logprobs_ignores_prompt_logits_and_padding(batch):
    logits, tokens, mask = batch
    before = sequence_logprobs(logits, tokens, mask)
    # Logits at position t predict token t+1: disturb every position whose target is not a
    # response token (prompt targets, padding targets, and the last position).
    next_is_response = torch.zeros_like(mask, dtype=torch.bool)
    next_is_response[:, :-1] = mask[:, 1:].bool()
    noisy = logits.clone()
    noisy[~next_is_response] = 100 * torch.randn_like(noisy[~next_is_response])
    # Padding tokens may be anything, even an invalid id.
    padded_tokens = torch.where((mask == 0) & (torch.arange(8) > 4), torch.full_like(tokens, -1), tokens)
    after = sequence_logprobs(noisy, padded_tokens, mask)
    assert torch.equal(before, after)
    # Sanity: disturbing a response position does change the result.
    noisy[0, 2] += torch.arange(6.0)
    assert not torch.allclose(sequence_logprobs(noisy, tokens, mask)[0], before[0])


def test_sequence_logprobs_end_of_text_counts_padding_does_not():
    # Uniform logits over V = 4: every predicted token has log-prob log(1/4). The response is
    # 2 tokens + end-of-text (id 3); padding repeats id 3 twice more and must not count.
    tokens = torch.tensor([[0, 1, 2, 2, 3, 3, 3]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0]])
    logits = torch.zeros(1, 7, 4)
    got = sequence_logprobs(logits, tokens, mask)
    assert got.item() == pytest.approx(3 * math.log(0.25))
    # Make end-of-text likelier at the position predicting it: the sum must move by the change.
    logits[0, 3, 3] = 2.0
    want = 2 * math.log(0.25) + (2.0 - math.log(3 + math.exp(2.0)))
    assert sequence_logprobs(logits, tokens, mask).item() == pytest.approx(want, rel=1e-6)


def test_sequence_logprobs_length_normalize_uses_response_length(batch):
    logits, tokens, mask = batch
    got = sequence_logprobs(logits, tokens, mask, length_normalize=True)
    for b in range(3):
        total, count = naive_sequence_logprob(logits, tokens, mask, b)
        assert count == int(mask[b].sum())  # 3, 5, 1 response tokens; padded length is 7
        assert got[b].item() == pytest.approx(total / count, rel=1e-5)


# ---------------------------------------------------------------------------------------
# log_partition, rpo_targets, quantile_rewards, group_sizes
# ---------------------------------------------------------------------------------------

IDS = [4, 1, 4, 9, 1, 4, 7, 1]  # unsorted, non-contiguous ids; prompt 9 and 7 are lone samples


def random_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(len(IDS), generator=g, dtype=F64) * 2
    ref = -torch.rand(len(IDS), generator=g, dtype=F64) * 10
    return rewards, torch.tensor(IDS), ref


@pytest.mark.parametrize("tau", [0.1, 1.0, 5.0])
@pytest.mark.parametrize("estimator", ["mean", "ref", "uniform"])  # "loo": tests/test_exact.py
def test_log_partition_matches_naive(estimator, tau):
    rewards, ids, ref = random_problem()
    if estimator == "uniform":
        rewards = torch.rand(len(IDS), dtype=F64, generator=torch.Generator().manual_seed(1))
    got = log_partition(rewards, ids, tau, estimator=estimator, ref_logps=ref)
    want = naive_log_partition(rewards.tolist(), IDS, tau, estimator, ref.tolist())
    assert got.dtype == F64
    assert torch.allclose(got, t64(want), rtol=1e-12, atol=1e-12)


def naive_iw_log_partition(rewards, ids, tau, ref, behavior):
    """"iw" by hand: per group, log((1/K) Σ_j π_ref(y_j)/μ(y_j) e^{r_j/τ}), math.exp in float64."""
    out = []
    for i in range(len(rewards)):
        group = [j for j in range(len(rewards)) if ids[j] == ids[i]]
        s = sum(math.exp(rewards[j] / tau + ref[j] - behavior[j]) for j in group)
        out.append(math.log(s / len(group)))
    return out


@pytest.mark.parametrize("tau", [0.3, 1.0, 5.0])
def test_log_partition_iw_matches_a_naive_loop_over_groups_of_different_sizes(tau):
    rewards, ids, ref = random_problem()  # groups of 3, 3, 1 and 1 samples
    behavior = -torch.rand(len(IDS), generator=torch.Generator().manual_seed(2), dtype=F64) * 10
    got = log_partition(rewards, ids, tau, "iw", ref_logps=ref, behavior_logps=behavior)
    want = naive_iw_log_partition(rewards.tolist(), IDS, tau, ref.tolist(), behavior.tolist())
    assert got.dtype == F64
    assert torch.allclose(got, t64(want), rtol=1e-12, atol=1e-12)
    # the weights really matter: neither "mean" nor "ref" gives these numbers
    assert not torch.allclose(got, log_partition(rewards, ids, tau, "mean"), atol=1e-3)
    assert not torch.allclose(got, log_partition(rewards, ids, tau, "ref", ref_logps=ref), atol=1e-3)


def test_log_partition_iw_with_the_reference_as_generator_is_the_mean_estimator():
    rewards, ids, ref = random_problem()
    for tau in (0.2, 1.0, 4.0):
        iw = log_partition(rewards, ids, tau, "iw", ref_logps=ref, behavior_logps=ref.clone())
        assert torch.allclose(iw, log_partition(rewards, ids, tau, "mean"), rtol=1e-12, atol=1e-12)


def test_log_partition_iw_is_an_unbiased_monte_carlo_estimate_of_z_under_the_generator():
    """Two prompts, four responses each, samples drawn from a known μ ≠ π_ref: exp(log Ẑ) is the
    sample mean of π_ref/μ e^{r/τ}, whose expectation under μ is Z = Σ_y π_ref(y) e^{r(y)/τ}. The
    tolerance is 4 standard errors of that mean, from its exact variance under μ; the uncorrected
    mean of e^{r/τ} over the same samples misses Z by many times that tolerance."""
    tau, k = 0.5, 50000
    problems = [  # (π_ref, μ, rewards) per prompt
        ([0.4, 0.3, 0.2, 0.1], [0.15, 0.2, 0.3, 0.35], [1.0, 0.5, 0.0, -0.5]),
        ([0.05, 0.15, 0.3, 0.5], [0.5, 0.25, 0.15, 0.1], [1.0, -1.0, 0.3, 0.2]),
    ]
    g = torch.Generator().manual_seed(11)
    rewards, ids, ref, behavior, checks = [], [], [], [], []
    for x, (pi_ref, mu, r) in enumerate(problems):
        ys = torch.multinomial(torch.tensor(mu, dtype=F64), k, replacement=True, generator=g).tolist()
        rewards += [r[y] for y in ys]
        ref += [math.log(pi_ref[y]) for y in ys]
        behavior += [math.log(mu[y]) for y in ys]
        ids += [x] * k
        z = sum(p * math.exp(v / tau) for p, v in zip(pi_ref, r))
        w = [p / m * math.exp(v / tau) for p, m, v in zip(pi_ref, mu, r)]  # the weight of each response
        var = sum(m * wi ** 2 for m, wi in zip(mu, w)) - z ** 2          # Var_μ[w], exactly
        on_mu = sum(m * math.exp(v / tau) for m, v in zip(mu, r))       # what the uncorrected mean tends to
        checks.append((z, 4 * math.sqrt(var / k), on_mu))
    est = log_partition(t64(rewards), torch.tensor(ids), tau, "iw", ref_logps=t64(ref),
                        behavior_logps=t64(behavior))
    mean = log_partition(t64(rewards), torch.tensor(ids), tau, "mean")
    for x, (z, tol, on_mu) in enumerate(checks):
        assert abs(math.exp(est[x * k].item()) - z) < tol, (x, math.exp(est[x * k].item()), z, tol)
        assert abs(on_mu - z) > 10 * tol                                   # the test bites
        assert abs(math.exp(mean[x * k].item()) - z) > 5 * tol
        assert tol < 0.05 * z                                              # and is tight


@pytest.mark.parametrize("tau", [1e-3, 1e3])
def test_log_partition_uniform_extreme_tau(tau):
    got = log_partition(torch.full((3,), 0.5, dtype=F64), torch.tensor([0, 0, 1]), tau, "uniform")
    # a pair takes the quantiles {0, 1}: log((1 + e^{1/tau}) / 2), by hand for each tau; a lone
    # sample the quantile 0.5: 0.5 / tau
    pair = 1 / tau + math.log1p(math.exp(-1 / tau)) - math.log(2) if tau < 1 else math.log((1 + math.exp(1 / tau)) / 2)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, t64([pair, pair, 0.5 / tau]), rtol=1e-12)


@pytest.mark.parametrize("estimator", ["mean", "ref"])
def test_log_partition_invariant_to_sample_order(estimator):
    rewards, ids, ref = random_problem()
    perm = torch.randperm(len(IDS), generator=torch.Generator().manual_seed(3))
    base = log_partition(rewards, ids, 0.7, estimator, ref_logps=ref)
    permuted = log_partition(rewards[perm], ids[perm], 0.7, estimator, ref_logps=ref[perm])
    assert torch.allclose(permuted, base[perm], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("estimator", ["mean", "ref"])
def test_shifting_one_prompts_rewards_shifts_its_value_only(estimator):
    rewards, ids, ref = random_problem()
    tau, c = 0.5, 3.25
    shifted = torch.where(ids == 4, rewards + c, rewards)
    before = log_partition(rewards, ids, tau, estimator, ref_logps=ref)
    after = log_partition(shifted, ids, tau, estimator, ref_logps=ref)
    expected_shift = torch.where(ids == 4, t64(c), t64(0.0))
    assert torch.allclose(tau * after - tau * before, expected_shift, atol=1e-12)
    assert torch.allclose(rpo_targets(shifted, after, tau), rpo_targets(rewards, before, tau), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_log_partition_no_overflow_at_large_r_over_tau(dtype):
    tau = 1e-3
    rewards = torch.tensor([10.0, 9.999, 10.0, -5.0], dtype=dtype)  # r / tau up to 1e4
    ids = torch.tensor([0, 0, 0, 1])
    got = log_partition(rewards, ids, tau, "mean")
    r = rewards.tolist()  # float64 copies of the exact inputs
    want = [naive_logsumexp([r[0] / tau, r[1] / tau, r[2] / tau]) - math.log(3)] * 3 + [r[3] / tau]
    assert torch.isfinite(got).all()
    assert torch.allclose(got.double(), t64(want), rtol=1e-6 if dtype == torch.float32 else 1e-12)


def test_lone_sample_has_zero_target_under_mean():
    rewards, ids, _ = random_problem()
    tau = 0.3
    targets = rpo_targets(rewards, log_partition(rewards, ids, tau, "mean"), tau)
    lone = (ids == 9) | (ids == 7)
    assert torch.equal(targets[lone], torch.zeros(2, dtype=F64))
    assert (targets[~lone] != 0).all()


def test_rpo_targets_formula():
    got = rpo_targets(t64([1.0, -2.0]), t64([0.5, 0.25]), 2.0)
    assert torch.allclose(got, t64([1.0 / 2 - 0.5, -2.0 / 2 - 0.25]))


def test_group_sizes():
    assert group_sizes(torch.tensor(IDS)).tolist() == [3, 3, 3, 1, 3, 3, 1, 3]


@pytest.mark.parametrize("call, message", [
    (lambda: log_partition(t64([1.0, 2.0]), torch.tensor([0, 0, 1]), 1.0), "shape mismatch"),
    (lambda: log_partition(t64([[1.0, 2.0]]), torch.tensor([[0, 0]]), 1.0), "must be 1-D"),
    (lambda: log_partition(t64([1.0, 2.0]), torch.tensor([0, 0]), 0.0), "tau must be"),
    (lambda: log_partition(t64([1.0, 2.0]), torch.tensor([0, 0]), -1.0), "tau must be"),
    (lambda: log_partition(t64([1.0, 2.0]), torch.tensor([0, 0]), math.inf), "tau must be"),
    (lambda: log_partition(t64([1.0, 2.0]), torch.tensor([0, 0]), 1.0, "ref"), "needs ref_logps"),
    (lambda: log_partition(t64([1.0, 2.0]), torch.tensor([0, 0]), 1.0, "ref", t64([0.0])),
     "shape mismatch"),
    (lambda: log_partition(t64([1.0, 2.0]), torch.tensor([0, 0]), 1.0, "median"),
     "unknown estimator 'median'; valid: mean, loo, ref, iw, uniform, exact"),
    (lambda: log_partition(t64([1.0, 2.0]), torch.tensor([0, 0]), 1.0, "iw", t64([-1.0, -2.0])),
     "needs ref_logps and behavior_logps"),
    (lambda: log_partition(t64([1.0, 2.0]), torch.tensor([0, 0]), 1.0, "iw", behavior_logps=t64([-1.0, -2.0])),
     "needs ref_logps and behavior_logps"),
    (lambda: log_partition(t64([1.0, 2.0]), torch.tensor([0, 0]), 1.0, "iw", t64([-1.0, -2.0]), None, t64([-1.0])),
     "shape mismatch"),
    (lambda: log_partition(t64([1.0, 2.0]), torch.tensor([0, 0]), 1.0, "iw", t64([-1.0, -2.0]), None,
                           t64([-1.0, -math.inf])), "non-finite behavior_logps"),
    (lambda: log_partition(t64([0.5, 2.0]), torch.tensor([0, 0]), 1.0, "uniform"), "quantile"),
    (lambda: log_partition(t64([]), torch.tensor([], dtype=torch.long), 1.0), "empty"),
])
def test_log_partition_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_non_finite_rewards_error_names_count_and_first_index():
    rewards = torch.zeros(20, dtype=F64)
    rewards[[17, 18]] = math.nan
    rewards[19] = math.inf
    with pytest.raises(ValueError, match=r"^3 non-finite rewards, first at index 17$"):
        log_partition(rewards, torch.zeros(20, dtype=torch.long), 1.0)


def test_quantile_rewards_hand_worked():
    # prompt 0: [3, 1, 2] -> ranks 2, 0, 1 of n - 1 = 2
    # prompt 1: [5, 5, 1, 7] -> 1 below, one tie: (1 + 0.5)/3 = 0.5 each; 0; 1
    # prompt 2: [9] alone -> 0.5;   prompt 3: [2, 2] all tied -> 0.5 each
    ids = torch.tensor([0, 1, 0, 1, 2, 1, 0, 3, 1, 3])
    rewards = t64([3, 5, 1, 5, 9, 1, 2, 2, 7, 2])
    want = t64([1.0, 0.5, 0.0, 0.5, 0.5, 0.0, 0.5, 0.5, 1.0, 0.5])
    got = quantile_rewards(rewards, ids)
    assert got.dtype == F64
    assert torch.allclose(got, want, atol=1e-15)


def test_quantile_rewards_matches_naive_on_random_ties():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 4, (40,), generator=g)
    rewards = torch.randint(0, 5, (40,), generator=g).float()  # many ties
    got = quantile_rewards(rewards, ids)
    for i in range(40):
        group = [j for j in range(40) if ids[j] == ids[i]]
        below = sum(rewards[j] < rewards[i] for j in group)
        equal = sum(rewards[j] == rewards[i] for j in group)
        want = 0.5 if len(group) == 1 else (below + 0.5 * (equal - 1)) / (len(group) - 1)
        assert got[i].item() == pytest.approx(float(want), abs=1e-6)


# ---------------------------------------------------------------------------------------
# closed forms at initialisation (policy == reference)
# ---------------------------------------------------------------------------------------

def test_rpo_at_init_is_half_mean_squared_target():
    rewards, ids, _ = random_problem()
    tau = 0.8
    logps = -torch.rand(len(IDS), dtype=F64) * 20
    log_z = log_partition(rewards, ids, tau, "mean")
    loss, metrics = rpo_loss(logps, logps.clone(), rewards, log_z, tau)
    naive_z = naive_log_partition(rewards.tolist(), IDS, tau, "mean")
    targets = [r / tau - z for r, z in zip(rewards.tolist(), naive_z)]
    want = 0.5 * sum(x * x for x in targets) / len(targets)
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert metrics["loss"] == pytest.approx(want, rel=1e-12)
    assert metrics["log_ratio"] == 0.0
    assert metrics["target"] == pytest.approx(sum(targets) / len(targets), abs=1e-12)
    assert metrics["residual"] == pytest.approx(-metrics["target"], abs=1e-12)
    assert all(isinstance(v, float) for v in metrics.values())


def test_kto_at_init_with_zero_reference_point():
    logps = t64([-3.0, -7.0, -1.0, -4.0, -2.0])
    desirable = torch.tensor([True, False, True, True, False])  # n_D = 3, n_U = 2
    loss, metrics = kto_loss(logps, logps.clone(), desirable, logps, logps.clone(),
                             beta=0.1, desirable_weight=2.0, undesirable_weight=0.5)
    assert loss.item() == pytest.approx(0.5 * (2.0 * 3 + 0.5 * 2) / 5, rel=1e-12)  # = 0.7
    assert metrics["z0"] == 0.0
    assert metrics["frac_desirable"] == pytest.approx(0.6)


def test_dro_with_zero_values_is_half_mean_squared_scaled_reward():
    rewards = t64([1.0, -2.0, 0.5])
    logps = t64([-4.0, -5.0, -6.0])
    loss, metrics = dro_loss(logps, logps.clone(), rewards, torch.zeros(3, dtype=F64), 2.0)
    assert loss.item() == pytest.approx(0.5 * (0.25 + 1.0 + 0.0625) / 3, rel=1e-12)
    assert metrics["value"] == 0.0


# ---------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------

def grad_inputs(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    make = lambda scale=1.0: (torch.randn(n, generator=g, dtype=F64) * scale)
    return make(3.0), make(3.0), make(), make()  # policy, ref, rewards, log_z / values


def test_rpo_gradcheck_and_gradient_is_residual_over_batch():
    policy, ref, rewards, log_z = grad_inputs()
    tau = 0.7
    policy.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: rpo_loss(p, ref, rewards, log_z, tau)[0], (policy,))
    loss, _ = rpo_loss(policy, ref, rewards, log_z, tau)
    (grad,) = torch.autograd.grad(loss, policy)
    residual = (policy - ref - (rewards / tau - log_z)).detach()
    assert torch.allclose(grad, residual / len(policy), rtol=1e-12, atol=1e-15)


def test_dro_gradcheck_and_gradient_reaches_values():
    policy, ref, rewards, values = grad_inputs(1)
    tau = 1.5
    policy.requires_grad_(True)
    values.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, v: dro_loss(p, ref, rewards, v, tau)[0], (policy, values))
    loss, _ = dro_loss(policy, ref, rewards, values, tau)
    g_policy, g_values = torch.autograd.grad(loss, (policy, values))
    # residual = rho - (r - V)/tau, so dL/dV = residual / (tau B) and dL/drho = residual / B.
    residual = (policy - ref - (rewards - values) / tau).detach()
    assert (g_values != 0).all()
    assert torch.allclose(g_values, residual / (tau * len(policy)), rtol=1e-12, atol=1e-15)
    assert torch.allclose(g_policy, residual / len(policy), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("clamp_z0", [True, False])
def test_kto_gradcheck(clamp_z0):
    policy, ref, kl_policy, kl_ref = grad_inputs(2)
    desirable = torch.tensor([True, False, True, True, False, False])
    policy.requires_grad_(True)
    fn = lambda p: kto_loss(p, ref, desirable, kl_policy, kl_ref, beta=0.5,
                            desirable_weight=1.3, undesirable_weight=0.7, clamp_z0=clamp_z0)[0]
    assert torch.autograd.gradcheck(fn, (policy,))


# ---------------------------------------------------------------------------------------
# the optimum on a finite bandit
# ---------------------------------------------------------------------------------------

def test_rpo_with_exact_partition_recovers_optimal_policy():
    g = torch.Generator().manual_seed(0)
    prompts, responses, tau = 3, 5, 0.5
    log_ref = torch.log_softmax(torch.randn(prompts, responses, generator=g, dtype=F64), -1)
    rewards = torch.randn(prompts, responses, generator=g, dtype=F64)
    # Independent closed form: pi* proportional to pi_ref exp(r / tau), normalised by hand.
    pi_star = []
    for x in range(prompts):
        w = [math.exp(log_ref[x, y].item() + rewards[x, y].item() / tau) for y in range(responses)]
        pi_star.append([v / sum(w) for v in w])
    pi_star = t64(pi_star)

    ids = torch.arange(prompts).repeat_interleave(responses)
    # Every response is enumerated, so the "ref" estimator is the exact log Z(x).
    log_z = log_partition(rewards.flatten(), ids, tau, "ref", ref_logps=log_ref.flatten())
    exact = [naive_logsumexp((log_ref[x] + rewards[x] / tau).tolist()) for x in range(prompts)]
    assert torch.allclose(log_z, t64(exact).repeat_interleave(responses), atol=1e-12)

    theta = torch.zeros(prompts, responses, dtype=F64, requires_grad=True)  # starts at uniform
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=200, tolerance_grad=1e-14,
                            tolerance_change=1e-16, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        log_pi = torch.log_softmax(theta, -1).flatten()
        loss, _ = rpo_loss(log_pi, log_ref.flatten(), rewards.flatten(), log_z, tau)
        loss.backward()
        return loss

    opt.step(closure)
    pi = torch.softmax(theta.detach(), -1)
    assert (pi - pi_star).abs().max().item() < 1e-4
    assert (torch.softmax(log_ref, -1) - pi_star).abs().max().item() > 1e-2  # the test bites


# ---------------------------------------------------------------------------------------
# KTO reference point and mismatched pairs
# ---------------------------------------------------------------------------------------

def test_kto_reference_point_is_detached_and_clamped():
    policy = t64([-2.0, -3.0, -1.0]).requires_grad_(True)
    ref = t64([-2.5, -2.0, -1.0])
    desirable = torch.tensor([True, False, True])
    kl_policy = t64([-5.0, -4.0, -6.0]).requires_grad_(True)
    kl_ref = t64([-4.0, -4.0, -4.0])  # mismatched log-ratios -1, 0, -2: mean -1
    beta = 0.5
    rho = [0.5, -1.0, 0.0]
    sig = lambda v: 1 / (1 + math.exp(-v))

    def by_hand(z0):
        return (1 - sig(beta * (rho[0] - z0)) + 1 - sig(beta * (z0 - rho[1]))
                + 1 - sig(beta * (rho[2] - z0))) / 3

    loss, metrics = kto_loss(policy, ref, desirable, kl_policy, kl_ref, beta=beta)
    assert metrics["z0"] == 0.0
    assert loss.item() == pytest.approx(by_hand(0.0), rel=1e-12)
    assert torch.autograd.grad(loss, kl_policy, allow_unused=True, retain_graph=True) == (None,)
    assert torch.autograd.grad(loss, policy)[0].abs().sum() > 0  # while rho does carry gradient
    assert metrics["rho_desirable"] == pytest.approx(0.25)
    assert metrics["rho_undesirable"] == pytest.approx(-1.0)

    loss, metrics = kto_loss(policy, ref, desirable, kl_policy, kl_ref, beta=beta, clamp_z0=False)
    assert metrics["z0"] == pytest.approx(-1.0)
    assert loss.item() == pytest.approx(by_hand(-1.0), rel=1e-12)
    assert torch.autograd.grad(loss, kl_policy, allow_unused=True, retain_graph=True) == (None,)
    assert torch.autograd.grad(loss, policy)[0].abs().sum() > 0  # while rho does carry gradient


@pytest.mark.parametrize("all_desirable", [True, False])
def test_kto_one_sided_batch_is_finite(all_desirable):
    logps = t64([-1.0, -2.0])
    desirable = torch.full((2,), all_desirable)
    loss, metrics = kto_loss(logps + 0.1, logps, desirable, logps, logps)
    assert torch.isfinite(loss)
    assert metrics["frac_desirable"] == float(all_desirable)
    empty_side = "rho_undesirable" if all_desirable else "rho_desirable"
    assert math.isnan(metrics[empty_side])


@pytest.mark.parametrize("size", range(2, 10))
def test_kto_mismatched_is_a_derangement(size):
    idx = kto_mismatched(size)
    assert idx.dtype == torch.long
    assert sorted(idx.tolist()) == list(range(size))
    assert all(idx[i].item() != i for i in range(size))
    assert idx.tolist() == [(i + 1) % size for i in range(size)]


@pytest.mark.parametrize("size", [0, 1])
def test_kto_mismatched_rejects_tiny_batches(size):
    with pytest.raises(ValueError, match="at least 2"):
        kto_mismatched(size)


# ---------------------------------------------------------------------------------------
# binarize_rewards, sft_select, sft_loss
# ---------------------------------------------------------------------------------------

def test_binarize_rewards_global_and_prompt():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert binarize_rewards(rewards).tolist() == [False, False, True, True]  # mean 2.5
    assert binarize_rewards(rewards, global_mean=2.0).tolist() == [False, True, True, True]
    # Prompt means: 1.5 for prompt 0, and 0.1 for prompt 1 (three equal rewards tie with their
    # mean even though 0.1 + 0.1 + 0.1 != 0.3 in floating point).
    rewards = torch.tensor([1.0, 0.1, 2.0, 0.1, 0.1], dtype=F64)
    ids = torch.tensor([0, 1, 0, 1, 1])
    got = binarize_rewards(rewards, ids, threshold="prompt")
    assert got.dtype == torch.bool
    assert got.tolist() == [False, True, True, True, True]


def test_binarize_rewards_errors():
    with pytest.raises(ValueError, match="needs prompt_ids"):
        binarize_rewards(torch.ones(3), threshold="prompt")
    with pytest.raises(ValueError, match="unknown threshold 'median'; valid: global, prompt"):
        binarize_rewards(torch.ones(3), threshold="median")


def test_sft_select_modes():
    # prompt 0: [1, 3, 3, 2] (tie for best at indices 2 and 4); prompt 1: [5]; prompt 2: [0, -1]
    ids = torch.tensor([0, 2, 0, 1, 0, 2, 0])
    rewards = torch.tensor([1.0, 0.0, 3.0, 5.0, 3.0, -1.0, 2.0])
    best = sft_select(rewards, ids)
    assert best.tolist() == [False, True, True, True, False, False, False]
    assert sft_select(rewards, ids, "all").tolist() == [True] * 7
    # means: 2.25, 5 (a lone sample is never strictly above its own mean), -0.5
    above = sft_select(rewards, ids, "above_mean")
    assert above.tolist() == [False, True, True, False, True, False, False]
    with pytest.raises(ValueError, match="unknown mode 'top'; valid: best, all, above_mean"):
        sft_select(rewards, ids, "top")


def test_sft_loss_per_sequence_and_per_token():
    logps = torch.tensor([-4.0, -2.0])
    loss, metrics = sft_loss(logps)
    assert loss.item() == pytest.approx(3.0)  # (4 + 2) / 2 sequences
    loss, _ = sft_loss(logps, num_tokens=torch.tensor([4, 1]))
    assert loss.item() == pytest.approx(1.2)  # (4 + 2) / 5 tokens
    assert metrics["logp"] == pytest.approx(-3.0)


# --- weights: a loss's exact expectation over an enumerated response space --------------------

def _repeat(t, counts):
    return torch.repeat_interleave(t, counts)


def test_weighted_losses_equal_the_plain_losses_on_samples_repeated_by_their_weights():
    """Integer weights w_i: the weighted loss must equal the unweighted loss on a batch where
    sample i appears w_i times (so weights π_ref(y|x) give E_{y~π_ref} of the loss)."""
    g = torch.Generator().manual_seed(3)
    n = 7
    counts = torch.tensor([1, 3, 0, 2, 5, 1, 4])
    w = counts.double()
    pol, ref = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    r, log_z = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    values = torch.randn(n, generator=g, dtype=torch.float64)
    desirable = torch.tensor([True, False, True, True, False, False, True])
    rep = lambda t: _repeat(t, counts)  # noqa: E731
    got, _ = rpo_loss(pol, ref, r, log_z, 0.4, weights=w)
    want, _ = rpo_loss(rep(pol), rep(ref), rep(r), rep(log_z), 0.4)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    got, _ = dro_loss(pol, ref, r, values, 0.7, weights=w)
    want, _ = dro_loss(rep(pol), rep(ref), rep(r), rep(values), 0.7)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    kl_counts = torch.tensor([2, 0, 1, 1, 3, 2, 1])
    kl_pol, kl_ref = torch.randn(n, generator=g, dtype=torch.float64) + 1, torch.randn(n, generator=g, dtype=torch.float64)
    got, gm = kto_loss(pol, ref, desirable, kl_pol, kl_ref, beta=0.5, weights=w, kl_weights=kl_counts.double())
    want, wm = kto_loss(rep(pol), rep(ref), rep(desirable), _repeat(kl_pol, kl_counts),
                               _repeat(kl_ref, kl_counts), beta=0.5)
    assert got.item() == pytest.approx(want.item(), rel=1e-12) and gm["z0"] == pytest.approx(wm["z0"], rel=1e-12)
    # no weights is the plain mean, and bad weights are refused
    plain, _ = rpo_loss(pol, ref, r, log_z, 0.4)
    assert plain.item() == pytest.approx(rpo_loss(pol, ref, r, log_z, 0.4, weights=torch.ones(n))[0].item())
    with pytest.raises(ValueError, match="weights"):
        rpo_loss(pol, ref, r, log_z, 0.4, weights=-w)


def test_leave_one_out_with_a_tied_maximum_matches_a_naive_loop():
    """Two samples share their group's maximum: neither is the unique maximum, and each one's
    leave-one-out sum still has the other's term."""
    tau = 0.4
    r, ids = t64([2.0, 2.0, 0.5, 1.0, 3.0, 3.0, 3.0]), torch.tensor([0, 0, 0, 1, 1, 2, 2])
    got = log_partition(r, ids, tau, "loo").tolist()
    for i, (ri, p) in enumerate(zip(r.tolist(), ids.tolist())):
        others = [x for j, (x, q) in enumerate(zip(r.tolist(), ids.tolist())) if q == p and j != i]
        assert got[i] == pytest.approx(math.log(sum(math.exp(x / tau) for x in others) / len(others)), rel=1e-12)


def test_leave_one_out_of_a_dominant_maximum_is_the_others_sum_not_a_cancellation():
    """The group's maximum outweighs the rest by e^{1e4}: its leave-one-out sum must come from the
    others directly (L + log(1 − e^{v−L}) would cancel to −inf)."""
    tau = 1.0
    r, ids = t64([1e4, 1.0, 2.0]), torch.tensor([0, 0, 0])
    got = log_partition(r, ids, tau, "loo")
    assert got[0].item() == pytest.approx(math.log((math.exp(1.0) + math.exp(2.0)) / 2), rel=1e-12)
    assert got[1].item() == pytest.approx(1e4 - math.log(2), rel=1e-12)


def test_a_group_of_equal_rewards_ties_with_its_own_rounded_mean():
    """Float32 copies of 7.7 sum and divide to a mean an ulp off 7.7 (above it for seven copies,
    below for three): every copy is still "at the mean" — desirable for KTO, not above it for
    SFT — at a magnitude well above 1."""
    for n, above in ((7, True), (3, False)):
        r, ids = torch.full((n,), 7.7, dtype=torch.float32), torch.zeros(n, dtype=torch.long)
        mean = (torch.zeros(1).index_add(0, ids, r) / n)[0]
        assert (mean > r[0]) == above and mean != r[0]  # the rounding this test is about
        assert binarize_rewards(r, ids, "prompt").all()
        assert not sft_select(r, ids, "above_mean").any()
