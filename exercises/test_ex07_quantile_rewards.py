"""Tests for exercise 07: quantiles worked by hand and by a Python loop; log Z by a finite sum."""

import math

import pytest
import torch

F64 = torch.float64


def quantiles_by_loop(rewards, ids):
    out = []
    for i in range(len(rewards)):
        group = [rewards[j] for j in range(len(rewards)) if ids[j] == ids[i]]
        n = len(group)
        below = sum(r < rewards[i] for r in group)
        ties = sum(r == rewards[i] for r in group)   # i itself included
        out.append(0.5 if n == 1 else (below + 0.5 * (ties - 1)) / (n - 1))
    return out


def log_mean_exp(xs):
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs) / len(xs))


def test_quantiles_hand_worked(ex):
    # Prompt 4: rewards 3, 1, 2, 2 (n = 4). 3 has 3 below -> 3/3 = 1; 1 has none -> 0;
    # each 2 has 1 below and one tie -> (1 + ½)/3 = ½. Prompt 9 alone -> ½.
    got = ex.quantile_rewards(torch.tensor([3.0, 1.0, 5.0, 2.0, 2.0]), torch.tensor([4, 4, 9, 4, 4]))
    want = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.5])
    if not abs(float(got[2]) - 0.5) <= 1e-12:
        hint = "a lone sample has nobody to rank against: q = ½ (and n − 1 = 0 must not divide)"
    elif not torch.allclose(got[[3, 4]].double(), want[[3, 4]].double()):
        hint = "tied rewards share the middle of their ranks: ½ · (#ties − 1), #ties counting the sample itself"
    else:
        hint = "count the strictly smaller rewards of the same prompt, and divide by n − 1"
    assert torch.allclose(got.double(), want.double(), atol=1e-12), f"got {got.tolist()}, want {want.tolist()}: {hint}"


def test_quantiles_match_a_loop(ex):
    g = torch.Generator().manual_seed(0)
    ids = [3, 8, 3, 3, 5, 8, 3, 5, 5, 8, 1, 3]                       # unsorted; prompt 1 alone
    rewards = torch.randint(0, 4, (12,), generator=g).to(F64)       # small integers: many ties
    got = ex.quantile_rewards(rewards, torch.tensor(ids))
    want = torch.tensor(quantiles_by_loop(rewards.tolist(), ids), dtype=F64)
    assert torch.allclose(got.double(), want, atol=1e-12), (
        f"got {got.tolist()}, a loop over the groups gives {want.tolist()}: are the counts taken within "
        "the sample's own prompt group, ties as ½ · (#ties − 1), a lone sample ½?")


def test_tie_free_group_gives_evenly_spaced_quantiles(ex):
    rewards = torch.randn(8, generator=torch.Generator().manual_seed(1), dtype=F64) * 100
    got = ex.quantile_rewards(rewards, torch.zeros(8, dtype=torch.long)).double()
    assert torch.allclose(got.sort().values, torch.arange(8, dtype=F64) / 7, atol=1e-12), (
        f"8 distinct rewards must give exactly 0, 1/7, ..., 1 (in some order), got {sorted(got.tolist())}")


def test_uniform_log_partition_is_the_finite_sum(ex):
    for k in (2, 3, 8, 20):
        for tau in (0.1, 0.3, 1.0):
            want = log_mean_exp([i / ((k - 1) * tau) for i in range(k)])
            got = float(ex.uniform_log_partition(k, tau))
            assert got == pytest.approx(want, rel=1e-12), (
                f"K = {k}, τ = {tau}: got {got}, want log mean_i e^(i/((K−1)τ)) = {want}")


def test_uniform_log_partition_is_not_the_continuous_limit(ex):
    got = float(ex.uniform_log_partition(8, 0.3))
    continuous = math.log(0.3 * (math.exp(1 / 0.3) - 1))   # log ∫_0^1 e^{q/τ} dq
    assert got - continuous == pytest.approx(0.109, abs=1e-3), (
        f"got {got}; the continuous closed form log τ(e^(1/τ) − 1) = {continuous:.4f} is 0.11 nats too low "
        "at K = 8: K quantiles are a finite sum, mean_i e^(i/((K−1)τ))")


def test_uniform_log_partition_small_tau_and_lone_sample(ex):
    try:
        got = float(ex.uniform_log_partition(8, 1e-4))
    except OverflowError:
        pytest.fail("e^(1/τ) overflows at τ = 1e-4: take the maximum out first (log-sum-exp)")
    # The top quantile dominates: log Z = 1/τ − log 8 + log(1 + e^{-1/(7τ)} + ...) = 1e4 − log 8.
    assert math.isfinite(got), "e^(1/τ) overflows at τ = 1e-4: take the maximum out first (log-sum-exp)"
    assert got == pytest.approx(1e4 - math.log(8), rel=1e-12), f"τ = 1e-4: got {got}, want 1e4 − log 8"
    lone = "K = 1: the lone quantile is ½, so log Z = ½/τ (= 2 at τ = 0.25), a case of its own"
    try:
        got = float(ex.uniform_log_partition(1, 0.25))
    except ZeroDivisionError:
        pytest.fail(lone)
    assert got == pytest.approx(2.0), lone
