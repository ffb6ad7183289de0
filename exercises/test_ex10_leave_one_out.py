"""Tests for exercise 10: leave-one-out worked by hand and by a Python loop; the lone target."""

import math

import pytest
import torch

F64 = torch.float64


def loo_by_loop(rewards, ids, tau):
    out = []
    for i in range(len(rewards)):
        others = [rewards[j] / tau for j in range(len(rewards)) if ids[j] == ids[i] and j != i]
        top = max(others)
        out.append(top + math.log(sum(math.exp(a - top) for a in others)) - math.log(len(others)))
    return torch.tensor(out, dtype=F64)


def test_hand_worked(ex):
    # τ = 1. Prompt 5: rewards 0, ln 3, ln 5, so e^{r} = 1, 3, 5. Without sample 0: (3 + 5)/2 = 4;
    # without 1: (1 + 5)/2 = 3; without 2: (1 + 3)/2 = 2. Prompt 2: rewards 1, 1, each sees the other: e^1.
    rewards = torch.tensor([0.0, 1.0, math.log(3), 1.0, math.log(5)], dtype=F64)
    got = ex.log_partition_loo(rewards, torch.tensor([5, 2, 5, 2, 5]), 1.0)
    want = torch.tensor([math.log(4), 1.0, math.log(3), 1.0, math.log(2)], dtype=F64)
    if torch.allclose(got[[0, 2, 4]], torch.full((3,), math.log(3), dtype=F64)):
        hint = "your estimate includes the sample itself (that is the \"mean\" estimator)"
    elif torch.allclose(got[[0, 2, 4]], want[[0, 2, 4]] + math.log(2 / 3)):
        hint = "the mean over the others divides by K − 1, not K"
    else:
        hint = "each sample's estimate is over the other samples of its own prompt"
    assert torch.allclose(got, want, atol=1e-12), f"got {got.tolist()}, want [ln 4, 1, ln 3, 1, ln 2]: {hint}"


def test_matches_a_loop(ex):
    ids = [4, 1, 4, 9, 1, 4, 9, 1]   # unsorted, not contiguous, every prompt at least twice
    rewards = torch.randn(8, generator=torch.Generator().manual_seed(0), dtype=F64) * 2
    got = ex.log_partition_loo(rewards, torch.tensor(ids), 0.3)
    assert torch.allclose(got.double(), loo_by_loop(rewards.tolist(), ids, 0.3), rtol=1e-12, atol=1e-12), (
        "differs from a loop over samples: logsumexp over the same prompt's other samples, minus log(K − 1)")


def test_group_of_one_is_refused(ex):
    try:
        ex.log_partition_loo(torch.tensor([0.5, 1.0, 2.0], dtype=F64), torch.tensor([0, 0, 1]), 1.0)
    except ValueError:
        return
    pytest.fail("prompt 1 has a single sample, so there is no other sample to estimate from: raise ValueError")


def test_a_dominant_sample_is_left_out_exactly(ex):
    # τ = 0.1: r/τ = 1e4, 0, 0. Without sample 0: log((1 + 1)/2) = 0 exactly;
    # without sample 1: log((e^{1e4} + 1)/2) = 1e4 − log 2 (to 1e-4000).
    got = ex.log_partition_loo(torch.tensor([1000.0, 0.0, 0.0], dtype=F64), torch.zeros(3, dtype=torch.long), 0.1)
    assert torch.isfinite(got[1:]).all(), f"got {got.tolist()}: e^(1e4) overflows; use the log-sum-exp trick"
    assert abs(float(got[0])) < 1e-9, (
        f"got {float(got[0])} for the dominant sample, want 0 (its two others have r/τ = 0): leave the sample "
        "out, and sum over the others directly; total − own cancels to nothing when one sample dominates")
    assert torch.allclose(got[1:], torch.full((2,), 1e4 - math.log(2), dtype=F64), rtol=1e-12), (
        f"got {got[1:].tolist()} for the two others, want 1e4 − log 2 each")


def test_a_lone_sample_under_mean_has_target_zero(ex):
    for r, tau in [(0.0, 1.0), (1.0, 0.3), (-2.5, 0.1), (1000.0, 0.1), (-1000.0, 0.1), (3.7, 5.0)]:
        try:
            got = ex.mean_target_of_a_lone_sample(r, tau)
        except OverflowError:
            pytest.fail(f"r/τ = {r / tau:g}: e^(r/τ) overflows; simplify log Ẑ = log e^(r/τ) on paper first")
        assert math.isfinite(float(got)) and abs(float(got)) < 1e-9, (
            f"r = {r}, τ = {tau}: got {float(got)}. With K = 1, log Ẑ = log e^(r/τ) = r/τ, so the target "
            "r/τ − log Ẑ is 0 whatever r: the reward cancels out")
