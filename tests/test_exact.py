"""The exact world: the enumerated tables, exact log Z, π*, KL, regret and the frontier, each
checked against an independent computation (a float64 loop over one sequence at a time, a
hand-made table summed by hand, samples), and the partition estimators against log Z."""

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from rpo_mini import exact, losses
from rpo_mini.align import Alignment
from rpo_mini.config import QUICK, Config, apply
from rpo_mini.sampling import response_logprobs, sample_responses
from rpo_mini.worlds import MAX_DIGITS

F64 = torch.float64


@pytest.fixture(scope="module")
def arith(tmp_path_factory):
    """A tiny arithmetic run: world, tokenizer, a briefly pretrained base model and a dataset."""
    from rpo_mini import stages

    cfg = apply(Config(), QUICK)
    cfg.world.name = "arithmetic"
    apply(cfg, {"world": {"corpus_size": 2000, "arithmetic_prompts": 200},
                "model": {"n_layer": 1, "n_embd": 32, "n_head": 2},
                "pretrain": {"pretrain_steps": 150}, "collect": {"n_prompts": 12, "max_new_tokens": 4},
                "align": {"steps": 4, "eval_every": 1000}})
    cfg.run.out, cfg.run.device = str(tmp_path_factory.mktemp("arith")), "cpu"
    return stages.materials(cfg)


def fresh(m):
    torch.manual_seed(1)
    from rpo_mini.model import GPT
    return GPT(m.base.value.config).eval()


def naive_restricted_logp(model, prompt, response):
    """Σ_j log π(y_j | x, y_<j) with π renormalised over the grammar's tokens at position j: one
    unpadded sequence, float64, a Python loop over positions."""
    rows = model.config.response_grammar
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response]))[0].double()
    total = 0.0
    for j, tok in enumerate(response):
        allowed = list(rows[min(j, len(rows) - 1)])
        if tok not in allowed:
            return -math.inf
        scores = logits[len(prompt) - 1 + j, allowed]
        total += (scores[allowed.index(tok)] - torch.logsumexp(scores, 0)).item()
    return total


def oracle_of(m, prompts):
    return exact.oracle(m.base.value, m.tok.value, m.world, prompts, m.world.default_reward)


# --- the response space and the tables -------------------------------------------------------

def test_the_response_space_is_every_digit_string_and_each_digit_is_one_token(arith):
    ys = arith.world.responses()
    assert len(ys) == len(set(ys)) == sum(10 ** d for d in range(1, MAX_DIGITS + 1)) == 1110
    assert {"0", "9", "07", "42", "999", "100"} <= set(ys) and "1000" not in ys and "" not in ys
    enc = arith.tok.value
    for y in ("42", "100", "999"):
        assert [enc.decode([t]) for t in enc.encode_ordinary(y)] == list(y)
    assert [enc.decode([t]) for t in enc.encode_ordinary("17+25=")] == list("17+25=")


@pytest.mark.parametrize("which", ["fresh", "trained"])
def test_every_row_of_the_table_is_a_distribution_over_the_enumerated_responses(arith, which):
    model = fresh(arith) if which == "fresh" else arith.base.value
    o = exact.oracle(model, arith.tok.value, arith.world, arith.world.test_prompts[:6], "partial")
    assert o.ref.shape == (6, 1110) and o.ref.dtype == F64
    assert torch.allclose(o.ref.logsumexp(-1), torch.zeros(6, dtype=F64), atol=1e-5)


def test_table_entries_equal_a_float64_loop_over_single_sequences(arith):
    model, enc = arith.base.value, arith.tok.value
    prompts = arith.world.test_prompts[:3]
    o = oracle_of(arith, prompts)
    for i, p in enumerate(prompts):
        for col in (0, 7, 10, 55, 110, 600, 1109):  # one, two and three digits
            want = naive_restricted_logp(model, enc.encode_ordinary(p), o.response_tokens[col])
            assert o.ref[i, col].item() == pytest.approx(want, abs=1e-5), (p, arith.world.responses()[col])


@pytest.mark.parametrize("which", ["fresh", "trained"])
def test_restricted_sampling_yields_enumerated_responses_with_the_tables_log_probs(arith, which):
    model, enc = (fresh(arith) if which == "fresh" else arith.base.value), arith.tok.value
    prompts = arith.world.test_prompts[:5]
    o = exact.oracle(model, enc, arith.world, prompts, "partial")
    column = {tuple(y): c for c, y in enumerate(o.response_tokens)}
    toks = [enc.encode_ordinary(p) for p in prompts] * 80
    responses, logps = sample_responses(model, toks, enc.eot_token, 4, torch.Generator().manual_seed(0))
    assert all(tuple(r) in column for r in responses), "a sample outside the response grammar"
    rows = [i % len(prompts) for i in range(len(toks))]
    want = torch.tensor([o.ref[r, column[tuple(y)]].item() for r, y in zip(rows, responses)], dtype=F64)
    assert torch.allclose(torch.tensor(logps, dtype=F64), want, atol=1e-4)
    forced = response_logprobs(model, toks, responses, enc.eot_token)
    assert torch.allclose(forced.double(), want, atol=1e-4)
    if which == "fresh":  # an untrained model spreads over many lengths: the grammar is what holds
        lengths = {len(r) for r in responses}
        assert lengths == {2, 3, 4}, lengths


def test_alignment_trains_on_the_restricted_log_probs(arith):
    """RPO's minibatch loss, from the Alignment, against the tables of a perturbed policy."""
    data, enc = arith.data.value, arith.tok.value
    cfg = dataclasses.replace(Config().align, rewards_zscore=False, estimator="mean")
    a = Alignment("rpo", arith.base.value, data, cfg, lr=1e-3, tau=0.5, seed=0, eot=enc.eot_token)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in a.policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    idx = torch.arange(len(data))
    loss, _ = a.loss(idx)
    pol = [naive_restricted_logp(a.policy, data.prompt_tokens[i], data.response_tokens[i]) for i in idx]
    ref = [naive_restricted_logp(a.ref, data.prompt_tokens[i], data.response_tokens[i]) for i in idx]
    r = [rec["reward"] for rec in data.records]
    by_prompt = {}
    for i, rec in enumerate(data.records):
        by_prompt.setdefault(rec["prompt_id"], []).append(r[i] / 0.5)
    log_z = [math.log(sum(math.exp(v) for v in by_prompt[rec["prompt_id"]]) / len(by_prompt[rec["prompt_id"]]))
             for rec in data.records]
    want = 0.5 * sum((pp - rr - (ri / 0.5 - lz)) ** 2 for pp, rr, ri, lz in zip(pol, ref, r, log_z)) / len(r)
    assert loss.item() == pytest.approx(want, rel=1e-4)


# --- exact quantities on a hand-made table ----------------------------------------------------

REF = [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]     # π_ref(y|x) for 2 prompts × 3 responses
R = [[1.0, 0.0, 0.5], [0.0, 2.0, 1.0]]
PI = [[0.2, 0.2, 0.6], [0.3, 0.3, 0.4]]      # some other policy


def t(rows):
    return torch.tensor(rows, dtype=F64)


@pytest.mark.parametrize("tau", [0.05, 0.3, 2.0])
def test_exact_quantities_by_hand(tau):
    ref, pi, r = t(REF).log(), t(PI).log(), t(R)
    for x in range(2):
        z = sum(REF[x][y] * math.exp(R[x][y] / tau) for y in range(3))
        assert exact.log_partition(ref, r, tau)[x].item() == pytest.approx(math.log(z), rel=1e-12)
        star = [REF[x][y] * math.exp(R[x][y] / tau) / z for y in range(3)]
        assert exact.optimal_table(ref, r, tau)[x].exp().tolist() == pytest.approx(star, rel=1e-10)
        e_r = sum(PI[x][y] * R[x][y] for y in range(3))
        kl_ref = sum(PI[x][y] * math.log(PI[x][y] / REF[x][y]) for y in range(3))
        kl_star = sum(PI[x][y] * math.log(PI[x][y] / star[y]) for y in range(3))
        assert exact.expected(pi, r)[x].item() == pytest.approx(e_r, rel=1e-12)
        assert exact.kl(pi, ref)[x].item() == pytest.approx(kl_ref, rel=1e-10)
        assert exact.kl(pi, exact.optimal_table(ref, r, tau))[x].item() == pytest.approx(kl_star, rel=1e-9)
        j = e_r - tau * kl_ref
        assert exact.objective(pi, ref, r, tau)[x].item() == pytest.approx(j, rel=1e-10)
        # J* = τ log Z, the regret J* − J, and the identity regret = τ KL(π‖π*)
        assert exact.regret(pi, ref, r, tau)[x].item() == pytest.approx(tau * math.log(z) - j, rel=1e-9, abs=1e-12)
        assert tau * kl_star == pytest.approx(tau * math.log(z) - j, rel=1e-9, abs=1e-12)


def test_regret_is_nonnegative_and_zero_only_at_the_optimum():
    g = torch.Generator().manual_seed(0)
    ref = torch.log_softmax(torch.randn(5, 40, generator=g, dtype=F64), -1)
    r = torch.rand(5, 40, generator=g, dtype=F64)
    tau = 0.2
    for _ in range(20):
        pi = torch.log_softmax(3 * torch.randn(5, 40, generator=g, dtype=F64), -1)
        assert (exact.regret(pi, ref, r, tau) > 0).all()
    assert (exact.regret(ref, ref, r, tau) > 0).all()          # π_ref is not optimal when r varies
    assert exact.regret(exact.optimal_table(ref, r, tau), ref, r, tau).abs().max() < 1e-12
    assert exact.kl(ref, ref).abs().max() == 0
    # a deterministic policy has π = 0 on most responses: those terms are 0, not NaN
    onehot = torch.full((5, 40), -math.inf, dtype=F64)
    onehot[:, 3] = 0.0
    assert torch.isfinite(exact.kl(onehot, ref)).all()
    assert exact.kl(onehot, ref).tolist() == pytest.approx((-ref[:, 3]).tolist())


def test_the_frontier_is_the_best_reward_at_its_kl():
    """Every random policy lies on or below the frontier's upper envelope at its KL."""
    g = torch.Generator().manual_seed(1)
    ref = torch.log_softmax(torch.randn(1, 12, generator=g, dtype=F64), -1)
    r = torch.rand(1, 12, generator=g, dtype=F64)
    front = exact.frontier(ref, r, [10 ** (k / 20) for k in range(-60, 40)])
    kls = [p["kl"] for p in front]
    assert kls == sorted(kls, reverse=True)       # smaller τ, more KL
    rewards = [p["reward"] for p in front]
    assert all(a >= b - 1e-12 for a, b in zip(rewards, rewards[1:]))
    for _ in range(200):
        pi = torch.log_softmax(2 * torch.randn(1, 12, generator=g, dtype=F64), -1)
        k, e = exact.kl(pi, ref).item(), exact.expected(pi, r).item()
        if k < kls[0]:  # the frontier point at the nearest KL above k has at least e's reward
            above = min((p for p in front if p["kl"] >= k), key=lambda p: p["kl"])
            assert above["reward"] >= e - 1e-9


# --- one policy against the exact optimum: matched τ and `compare` -------------------------------

def hand_oracle(seed=0, n=3, y=4):
    """A hand-made oracle: π_ref rows that logsumexp to 0, random rewards and gold (float64)."""
    g = torch.Generator().manual_seed(seed)
    ref = torch.log_softmax(torch.randn(n, y, generator=g, dtype=F64), -1)
    rewards = torch.rand(n, y, generator=g, dtype=F64) * 2
    gold = torch.rand(n, y, generator=g, dtype=F64)
    return exact.Oracle(prompts=[f"p{i}" for i in range(n)], prompt_tokens=[[i] for i in range(n)],
                        response_tokens=[[j, 0] for j in range(y)], eot=0, ref=ref, rewards=rewards, gold=gold)


def naive_log_optimum(o, tau):
    """log π*_τ(y|x) = log π_ref(y|x) + r(x,y)/τ − log Σ_y' (...), by hand: a list of rows."""
    rows = []
    for x in range(len(o.prompts)):
        s = [o.ref[x, y].item() + o.rewards[x, y].item() / tau for y in range(o.ref.size(1))]
        m = max(s)  # shifted by the max: τ may be tiny
        log_z = m + math.log(sum(math.exp(v - m) for v in s))
        rows.append([v - log_z for v in s])
    return rows


def naive_optimum(o, tau):
    """π*_τ(y|x) ∝ π_ref(y|x) e^{r(x,y)/τ}: a list of rows of probabilities."""
    return [[math.exp(v) for v in row] for row in naive_log_optimum(o, tau)]


def naive_kl(p_rows, q_log):
    """mean over prompts of Σ_y p (log p − log q), p as probabilities, q as log-probabilities."""
    return sum(sum(p * (math.log(p) - q_log[x][y]) for y, p in enumerate(row) if p > 0)
               for x, row in enumerate(p_rows)) / len(p_rows)


def naive_mean(p_rows, values):
    return sum(sum(p * values[x][y] for y, p in enumerate(row)) for x, row in enumerate(p_rows)) / len(p_rows)


@pytest.mark.parametrize("tau0", [0.05, 0.4, 3.0])
def test_matched_tau_recovers_the_tau_whose_optimum_spends_the_target_kl(tau0):
    o = hand_oracle()
    target = naive_kl(naive_optimum(o, tau0), o.ref.tolist())
    assert target > 1e-4
    assert exact.matched_tau(o.ref, o.rewards, target) == pytest.approx(tau0, rel=1e-6)


def test_compare_on_the_optimum_itself_finds_no_gap_no_kl_and_no_regret():
    o, tau0 = hand_oracle(), 0.4
    star = torch.tensor(naive_optimum(o, tau0), dtype=F64).log()
    c = exact.compare(o, star, tau=tau0)
    assert c["matched_tau"] == pytest.approx(tau0, rel=1e-6)
    assert c["frontier_gap"] == pytest.approx(0.0, abs=1e-9)
    assert c["kl_to_matched_optimum"] == pytest.approx(0.0, abs=1e-9)
    assert c["regret"] == pytest.approx(0.0, abs=1e-9) and c["kl_to_own_optimum"] == pytest.approx(0.0, abs=1e-9)
    # at another τ the same policy is not optimal: positive regret
    assert exact.compare(o, star, tau=2.0)["regret"] > 1e-3
    assert c["tau_from"] == "trained" and c["own_tau"] == tau0
    # no τ of its own (KTO, SFT): compared at the matched τ, where the optimum is this very policy
    m = exact.compare(o, star)
    assert m["tau_from"] == "matched" and m["own_tau"] == m["matched_tau"]
    assert m["regret"] == pytest.approx(0.0, abs=1e-9) and m["kl_to_own_optimum"] == m["kl_to_matched_optimum"]


def test_compare_on_random_policies_against_naive_loops_and_the_frontier():
    """For random policies: the exact reward, gold and KL by naive loops; no policy beats the
    optimum at its own KL (frontier_gap ≥ 0), the gap recomputed from π* at the matched τ by hand;
    and regret = own_tau · KL(π‖π*_own_tau)."""
    o = hand_oracle(seed=1)
    g = torch.Generator().manual_seed(2)
    ref_rows, r_rows, gold_rows = o.ref.tolist(), o.rewards.tolist(), o.gold.tolist()
    clamped = 0
    for trial in range(25):
        table = torch.log_softmax(2 * torch.randn(3, 4, generator=g, dtype=F64), -1)
        pi = table.exp().tolist()
        own = [0.1, 0.5, 2.0][trial % 3]
        c = exact.compare(o, table, tau=own)
        assert c["exact_reward"] == pytest.approx(naive_mean(pi, r_rows), rel=1e-12)
        assert c["exact_gold"] == pytest.approx(naive_mean(pi, gold_rows), rel=1e-12)
        assert c["exact_kl"] == pytest.approx(naive_kl(pi, ref_rows), rel=1e-9, abs=1e-12)
        star = naive_optimum(o, c["matched_tau"])
        if c["matched_tau"] > 1.001e-4:
            assert naive_kl(star, ref_rows) == pytest.approx(c["exact_kl"], rel=1e-6, abs=1e-9)  # equal KL
        else:  # more KL than any optimum spends (clamped at τ = 1e-4): π* is the reward's maximiser
            clamped += 1
            assert naive_kl(star, ref_rows) < c["exact_kl"]
            assert naive_mean(star, r_rows) == pytest.approx(sum(map(max, r_rows)) / len(r_rows), rel=1e-9)
            m = exact.compare(o, table)  # no τ of its own: its regret is the gap to the maximiser, its KL to it ∞
            assert m["own_tau"] is None and m["kl_to_own_optimum"] is None and m["regret"] == c["frontier_gap"]
            assert m["ref_regret"] == pytest.approx(naive_mean(star, r_rows) - naive_mean(o.ref.exp().tolist(), r_rows))
        assert c["frontier_gap"] == pytest.approx(naive_mean(star, r_rows) - naive_mean(pi, r_rows), abs=1e-9)
        assert c["frontier_gap"] >= -1e-9
        log_star = naive_log_optimum(o, c["matched_tau"])
        assert c["kl_to_matched_optimum"] == pytest.approx(naive_kl(pi, log_star), rel=1e-6, abs=1e-9)
        own_star = naive_log_optimum(o, own)
        assert c["kl_to_own_optimum"] == pytest.approx(naive_kl(pi, own_star), rel=1e-9, abs=1e-12)
        assert c["regret"] == pytest.approx(own * c["kl_to_own_optimum"], rel=1e-9, abs=1e-12)
        assert c["ref_regret"] == pytest.approx(own * naive_kl(o.ref.exp().tolist(), own_star), rel=1e-9)
    assert clamped < 25 // 5  # the interesting case, equal KL, is most of them


def test_a_policy_beyond_the_frontier_s_end_has_the_gap_to_the_maximiser_as_its_regret():
    """All mass on a response π_ref rarely writes spends more KL than the reward's maximiser: no
    optimum has its KL, its regret without a τ of its own is E[max r] − E_π[r], by hand."""
    o = hand_oracle(seed=3)
    ref = o.ref.exp().tolist()
    rows = []
    for x in range(3):
        best = max(range(4), key=lambda y: o.rewards[x, y].item())
        rare = min((y for y in range(4) if y != best), key=lambda y: ref[x][y])
        rows.append([math.log(0.999) if y == rare else math.log(0.001 / 3) for y in range(4)])
    table = torch.tensor(rows, dtype=F64)
    m = exact.compare(o, table)
    assert exact.beyond_frontier(m["matched_tau"])
    max_r = sum(max(r) for r in o.rewards.tolist()) / 3
    e_pi = naive_mean(table.exp().tolist(), o.rewards.tolist())
    assert m["regret"] == pytest.approx(max_r - e_pi, abs=1e-6) and m["own_tau"] is None
    assert m["ref_regret"] == pytest.approx(max_r - naive_mean(ref, o.rewards.tolist()), abs=1e-6)


# --- partition estimators against the exact log Z ----------------------------------------------

def test_the_mean_estimator_approaches_the_exact_log_partition(arith):
    """log Ẑ from K samples of π_ref → log Z, within a tolerance set by the sample size."""
    m, enc = arith, arith.tok.value
    prompts = m.world.test_prompts[:4]
    tau = 0.3
    o = oracle_of(m, prompts)
    exact_log_z = o.log_z(tau)
    k = 4000
    toks = [enc.encode_ordinary(p) for p in prompts for _ in range(k)]
    responses, _ = sample_responses(m.base.value, toks, enc.eot_token, 4, torch.Generator().manual_seed(3))
    texts = [enc.decode(r[:-1]) for r in responses]
    owners = [p for p in prompts for _ in range(k)]
    r = torch.tensor([m.world.rewards()["partial"](p, y) for p, y in zip(owners, texts)], dtype=F64)
    ids = torch.tensor([i for i in range(len(prompts)) for _ in range(k)])
    est = losses.log_partition(r, ids, tau, "mean")[::k]
    # delta method: sd(log mean w) ≈ sd(w) / (sqrt(k) mean(w)), with w = e^{r/τ}
    w = torch.exp(r / tau).view(len(prompts), k)
    tol = 4 * w.std(1) / (math.sqrt(k) * w.mean(1))
    assert ((est - exact_log_z).abs() < tol).all(), (est, exact_log_z, tol)


def naive_loo(rewards, ids, tau):
    out = []
    for i, (ri, gi) in enumerate(zip(rewards, ids)):
        others = [rj / tau for j, (rj, gj) in enumerate(zip(rewards, ids)) if gj == gi and j != i]
        peak = max(others)
        out.append(peak + math.log(sum(math.exp(v - peak) for v in others)) - math.log(len(others)))
    return out


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_leave_one_out_matches_a_naive_loop_for_groups_of_unequal_sizes(tau):
    g = torch.Generator().manual_seed(0)
    ids = [3, 3, 7, 7, 7, 7, 7, 1, 1, 3, 9, 9, 9]          # sizes 3, 5, 2, 3; unsorted
    rewards = torch.randn(len(ids), generator=g, dtype=F64).tolist()
    rewards[4] = rewards[5] = max(rewards) + 1               # a tied maximum
    got = losses.log_partition(torch.tensor(rewards, dtype=F64), torch.tensor(ids), tau, "loo")
    assert got.tolist() == pytest.approx(naive_loo(rewards, ids, tau), rel=1e-10)


def test_leave_one_out_with_a_dominant_reward_does_not_overflow_or_cancel():
    # r/τ = 1e4 for the unique maximum: the other samples' estimate must not be lost to it
    r = torch.tensor([1e3, 0.0, 1.0, 2.0], dtype=F64)
    got = losses.log_partition(r, torch.zeros(4, dtype=torch.long), 0.1, "loo")
    assert torch.isfinite(got).all()
    want = naive_loo(r.tolist(), [0] * 4, 0.1)
    assert got.tolist() == pytest.approx(want, rel=1e-12)
    assert got[0].item() == pytest.approx(20 + math.log(1 + math.exp(-10) + math.exp(-20)) - math.log(3))


def test_leave_one_out_refuses_a_lone_response():
    with pytest.raises(ValueError, match="at least two samples per prompt"):
        losses.log_partition(torch.tensor([0.5, 1.0, 0.2]), torch.tensor([0, 0, 1]), 1.0, "loo")


def test_mean_caps_every_target_at_log_k_while_leave_one_out_does_not():
    r = torch.tensor([5.0, 0.0, 0.0, 0.0])
    ids = torch.zeros(4, dtype=torch.long)
    tau = 0.1
    mean_target = losses.rpo_targets(r, losses.log_partition(r, ids, tau, "mean"), tau)
    loo_target = losses.rpo_targets(r, losses.log_partition(r, ids, tau, "loo"), tau)
    assert mean_target.max().item() <= math.log(4) + 1e-6
    assert loo_target[0].item() == pytest.approx(50 - 0.0)          # r/τ − log mean(e^0, e^0, e^0)


@pytest.mark.parametrize("k,tau,offset", [(8, 0.3, 0.11), (8, 0.1, 0.50)])
def test_uniform_is_the_exact_log_mean_exp_of_the_k_mid_rank_quantiles(k, tau, offset):
    """The K quantiles of K tie-free samples are 0, 1/(K−1), ..., 1; the continuous closed form
    log τ(e^{1/τ} − 1) falls short of their log-mean-exp by the stated amount."""
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(k, generator=g, dtype=F64)
    ids = torch.zeros(k, dtype=torch.long)
    q = losses.quantile_rewards(rewards, ids)
    assert sorted(q.tolist()) == pytest.approx([i / (k - 1) for i in range(k)])
    got = losses.log_partition(q, ids, tau, "uniform")
    want = math.log(sum(math.exp(i / ((k - 1) * tau)) for i in range(k)) / k)
    assert got.tolist() == pytest.approx([want] * k, rel=1e-12)
    continuous = math.log(tau * (math.exp(1 / tau) - 1))
    assert want - continuous == pytest.approx(offset, abs=0.005)


def test_exact_estimator_passes_the_enumerated_partition_through_and_refuses_without_one():
    log_z = torch.tensor([0.1, 0.1, 0.7], dtype=F64)
    got = losses.log_partition(torch.tensor([1.0, 0.0, 2.0], dtype=F64), torch.tensor([0, 0, 1]), 0.3, "exact",
                               exact_log_z=log_z)
    assert torch.equal(got, log_z)
    with pytest.raises(ValueError, match="exact world"):
        losses.log_partition(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), 0.3, "exact")


# --- RPO with the exact partition converges to π* -------------------------------------------------

def test_rpo_on_the_whole_response_space_with_the_exact_partition_reaches_the_optimum(arith):
    """Minimise Σ_y π_ref(y|x) · ½ (log π/π_ref − (r/τ − log Z))² over every response: KL(π‖π*)
    must fall from π_ref's value to a tenth of it."""
    m = arith
    prompts = m.world.test_prompts[:3]
    tau = 0.2
    o = oracle_of(m, prompts)
    target = o.rewards / tau - o.log_z(tau)[:, None]                     # (N, Y)
    policy = copy.deepcopy(m.base.value).requires_grad_(True).train()
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    start = exact.kl(o.ref, o.optimal(tau)).mean().item()
    for _ in range(300):
        table = exact.logprob_table(policy, o.prompt_tokens, o.response_tokens, o.eot, requires_grad=True)
        loss = 0.5 * (o.ref.exp() * (table - o.ref - target) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = exact.kl(o.table(policy.eval()), o.optimal(tau)).mean().item()
    assert start > 0.5 and end < 0.1 * start, (start, end)


# --- the pipeline in the exact world ------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def arithmetic_run(out, *extra):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--world", "arithmetic", "--quick",
                        "--device", "cpu", "--out", str(out), *extra], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text()), r


RUN_TAUS = {"rpo": 1.0, "dro": 0.3}  # RPO's τ ≠ DRO's: a comparison at one shared τ is caught


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory):
    return arithmetic_run(tmp_path_factory.mktemp("exact"), "--objectives", "sft,dro,rpo", "--estimator", "exact",
                          "--rpo_tau", str(RUN_TAUS["rpo"]), "--dro_tau", str(RUN_TAUS["dro"]))


def dataset_std(metrics):
    import statistics
    with open(metrics["artifacts"]["dataset"]) as f:
        return statistics.stdev(json.loads(line)["reward"] for line in f)


def test_the_arithmetic_run_reports_exact_metrics_for_every_policy(exact_run):
    metrics, r = exact_run
    ex = metrics["exact"]
    assert ex["taus"] == RUN_TAUS and ex["reward"] == "partial"
    # the objectives train on z-scored rewards at τ: in reward units that is τ times their std
    sigma = dataset_std(metrics)
    assert ex["reward_scale"] == pytest.approx(sigma, rel=1e-9)
    for name, row in metrics["policies"].items():
        for key in ("exact_reward", "exact_kl", "exact_gold"):
            assert math.isfinite(row[key]), (name, key)
        assert row["exact_kl"] >= -1e-9
        # below the frontier: E_π[r] − t·KL(π‖π_ref) ≤ J*_t = E_π*[r] − t·KL(π*‖π_ref) at every t
        for p in ex["frontier"]:
            assert row["exact_reward"] - p["tau"] * row["exact_kl"] <= p["reward"] - p["tau"] * p["kl"] + 1e-9
        if name == "reference":
            continue
        assert row["regret"] >= 0 and row["kl_to_own_optimum"] >= 0
        # regret = τ·KL(π‖π*) with τ the policy's own, in reward units; SFT has none: its matched τ,
        # where the regret is the frontier gap (also beyond the frontier's end, where no τ has its KL)
        if name not in RUN_TAUS:
            assert row["regret"] == pytest.approx(row["frontier_gap"], rel=1e-6, abs=1e-9)
            if exact.beyond_frontier(row["matched_tau"]):
                assert "own_tau" not in row and "kl_to_own_optimum" not in row  # None: no mean to report
                continue
        want_tau = RUN_TAUS[name] * sigma if name in RUN_TAUS else row["matched_tau"]
        assert row["own_tau"] == pytest.approx(want_tau, rel=1e-9)
        assert row["regret"] == pytest.approx(row["own_tau"] * row["kl_to_own_optimum"], rel=1e-6, abs=1e-9)
    assert metrics["policies"]["reference"]["exact_kl"] == pytest.approx(0, abs=1e-9)
    assert [o["tau"] for o in ex["optimal"]] == sorted(set(RUN_TAUS.values()))
    out = os.path.dirname(os.path.dirname(metrics["artifacts"]["base"]))
    assert open(os.path.join(out, metrics["plots"]["exact_frontier"]), "rb").read()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "KL to π*" in r.stdout and "regret" in r.stdout
    assert "at each policy's own τ (dro τ = 0.3, rpo τ = 1 on z-scored rewards" in \
        open(os.path.join(out, "report.md")).read()


def test_dro_is_measured_at_its_own_tau_not_rpos(exact_run):
    """DRO trained at τ = 0.3, RPO at τ = 1: DRO's reported regret is τ_dro·σ·KL(π_dro‖π*_{τ_dro·σ}),
    recomputed here from its checkpoint by a float64 loop over every enumerated response, and
    differs from the same policy's regret at RPO's τ."""
    from rpo_mini.model import GPT, GPTConfig
    from rpo_mini.tokenizer import load_encoding
    from rpo_mini.worlds import WorldConfig, make_world

    metrics, _ = exact_run
    cfg = metrics["config"]
    world = make_world(WorldConfig(**cfg["world"]))
    enc = load_encoding(metrics["artifacts"]["tokenizer"])

    def load(path):
        ckpt = torch.load(path, weights_only=True)
        model = GPT(GPTConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
        return model.eval()
    base = load(metrics["artifacts"]["base"])
    dro = load(metrics["policies"]["dro"]["checkpoints"][0])
    prompts = world.test_prompts[:cfg["eval"]["eval_prompts"] or None]
    reward = world.rewards()["partial"]
    responses = [enc.encode_ordinary(y) + [enc.eot_token] for y in world.responses()]
    toks = [enc.encode_ordinary(p) for p in prompts]
    ref = exact.logprob_table(base, toks, responses, enc.eot_token).tolist()
    pol = exact.logprob_table(dro, toks, responses, enc.eot_token).tolist()
    sigma = dataset_std(metrics)

    def regret_at(tau):  # τ·KL(π‖π*_τ), π*_τ ∝ π_ref e^{r/τ}, by hand
        total = 0.0
        for x, p in enumerate(prompts):
            s = [lr + reward(p, y) / tau for lr, y in zip(ref[x], world.responses())]
            m = max(s)
            log_z = m + math.log(sum(math.exp(v - m) for v in s))
            total += sum(math.exp(lp) * (lp - (v - log_z)) for lp, v in zip(pol[x], s))
        return tau * total / len(prompts)
    row = metrics["policies"]["dro"]
    assert row["regret"] == pytest.approx(regret_at(RUN_TAUS["dro"] * sigma), rel=1e-5, abs=1e-8)
    assert abs(row["regret"] - regret_at(RUN_TAUS["rpo"] * sigma)) > 1e-3


def test_the_same_seed_gives_the_same_exact_numbers(exact_run, tmp_path):
    again, _ = arithmetic_run(tmp_path, "--objectives", "rpo", "--estimator", "exact", "--rpo_tau",
                              str(RUN_TAUS["rpo"]))
    first = exact_run[0]
    for name in ("reference", "rpo"):
        for key in ("exact_reward", "exact_kl", "kl_to_own_optimum", "regret", "reward", "gold"):
            if key in first["policies"][name]:
                assert again["policies"][name][key] == first["policies"][name][key], (name, key)


def test_the_exact_estimator_is_refused_outside_an_exact_world(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--quick", "--device", "cpu",
                        "--out", str(tmp_path), "--estimator", "exact"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "needs an exact world" in r.stderr
    assert not os.listdir(tmp_path / "checkpoints")


def test_a_dataset_response_outside_the_grammar_is_refused_before_pretraining(tmp_path):
    line = {"prompt_id": 0, "prompt": "1+2=", "response": "3+", "prompt_tokens": [49, 43, 50, 61],
            "response_tokens": [51, 43, 256], "reward": 0.0, "rewards": {}, "ref_logp": 0.0, "fluent": False}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(line) + "\n")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--world", "arithmetic", "--quick",
                        "--device", "cpu", "--out", str(tmp_path / "out"), "--dataset", str(path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "bad.jsonl:1: response token 1 (id 43)" in r.stderr and "grammar" in r.stderr
    assert not any(f.startswith("base-") for f in os.listdir(tmp_path / "out" / "checkpoints"))


def test_the_exact_estimator_trains_on_log_z_of_the_z_scored_rewards(arith):
    """RPO's "exact" log Ẑ(x) of each sample: the enumerated sum Σ_y π_ref(y|x) e^{z(x,y)/τ} with
    z = (r − μ)/σ z-scored by the dataset's own mean and std, here by hand per prompt."""
    import statistics

    from rpo_mini.align import prepare

    data, enc, world = arith.data.value, arith.tok.value, arith.world
    prompts = sorted({rec["prompt"] for rec in data.records})
    o = exact.oracle(arith.base.value, enc, world, prompts, "partial")
    raw = [rec["reward"] for rec in data.records]
    mu, sigma = statistics.fmean(raw), statistics.stdev(raw)
    tau = 0.7
    cfg = dataclasses.replace(Config().align, estimator="exact")
    ref_logps = torch.tensor([rec["ref_logp"] for rec in data.records])
    fixed = prepare("rpo", data, ref_logps, cfg, tau, o)
    partial = world.rewards()["partial"]
    for i in (0, 5, len(raw) - 1):
        p = data.records[i]["prompt"]
        row = o.ref[prompts.index(p)].tolist()
        z = sum(math.exp(lp + (partial(p, y) - mu) / sigma / tau) for lp, y in zip(row, world.responses()))
        assert fixed["log_z"][i].item() == pytest.approx(math.log(z), rel=1e-5)


def test_kto_scores_its_mismatched_pairs_under_the_grammar_too(arith, monkeypatch):
    data, enc = arith.data.value, arith.tok.value
    a = Alignment("kto", arith.base.value, data, Config().align, lr=1e-3, tau=None, seed=0, eot=enc.eot_token)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in a.policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    seen, real = {}, losses.kto_loss

    def spy(*args, **kw):
        seen["pol"], seen["ref"] = args[3].tolist(), args[4].tolist()
        return real(*args, **kw)

    monkeypatch.setattr(losses, "kto_loss", spy)
    idx = [0, 3, 4, 9, 11]
    a.loss(torch.tensor(idx))
    pairs = list(zip(idx, idx[1:] + idx[:1]))   # prompt i with the next sample's response
    for model, key in ((a.policy, "pol"), (a.ref, "ref")):
        want = [naive_restricted_logp(model, data.prompt_tokens[i], data.response_tokens[j]) for i, j in pairs]
        assert seen[key] == pytest.approx(want, abs=1e-4), key


def _run(tmp_path, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--quick", "--device", "cpu",
                           "--out", str(tmp_path / "out"), *args], capture_output=True, text=True, timeout=600)


def test_too_few_new_tokens_for_the_grammar_is_refused(tmp_path):
    r = _run(tmp_path, "--world", "arithmetic", "--max_new_tokens", "2")
    assert r.returncode == 2 and "--max_new_tokens 2 is too short for the arithmetic world" in r.stderr


def test_leave_one_out_on_a_dataset_with_a_lone_response_is_refused_before_pretraining(tmp_path):
    rec = {"prompt": "1+2=", "prompt_tokens": [49, 43, 50, 61], "rewards": {}, "ref_logp": 0.0, "fluent": True}
    lines = [dict(rec, prompt_id=0, response="3", response_tokens=[51, 256], reward=1.0),
             dict(rec, prompt_id=0, response="4", response_tokens=[52, 256], reward=0.0),
             dict(rec, prompt_id=1, prompt="2+2=", prompt_tokens=[50, 43, 50, 61], response="4",
                  response_tokens=[52, 256], reward=1.0)]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    r = _run(tmp_path, "--world", "arithmetic", "--dataset", str(path), "--estimator", "loo")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "--estimator loo needs two or more responses per prompt, and 1 prompt(s)" in r.stderr
    assert not any(f.startswith("base-") for f in os.listdir(tmp_path / "out" / "checkpoints"))
