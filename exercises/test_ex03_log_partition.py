"""Tests for exercise 03: a hand-worked value, a Python loop over prompts, and a source check."""

import ast
import inspect
import math

import torch

F64 = torch.float64


def by_loop(rewards, ids, tau):
    """The definition, prompt by prompt, in Python floats."""
    out = []
    for i in range(len(rewards)):
        group = [rewards[j] / tau for j in range(len(rewards)) if ids[j] == ids[i]]
        top = max(group)
        out.append(top + math.log(sum(math.exp(a - top) for a in group)) - math.log(len(group)))
    return torch.tensor(out, dtype=F64)


def test_hand_worked(ex):
    # τ = 0.5. Prompt 7: rewards 0 and 0.5·ln 3, so r/τ = 0, ln 3 and Ẑ = (1 + 3)/2 = 2.
    # Prompt 2: one reward, 1, so Ẑ = e^{1/0.5} and log Ẑ = 2.
    rewards = torch.tensor([0.0, 1.0, 0.5 * math.log(3)], dtype=F64)
    got = ex.log_partition_mean(rewards, torch.tensor([7, 2, 7]), 0.5)
    want = torch.tensor([math.log(2), 2.0, math.log(2)], dtype=F64)
    summed = torch.tensor([math.log(4), 2.0, math.log(4)], dtype=F64)
    hint = ("you took the log of the sum: the estimate is the mean, subtract log K" if torch.allclose(got, summed)
            else "each sample gets the value of its own prompt's group")
    assert torch.allclose(got, want, atol=1e-12), f"got {got.tolist()}, want [ln 2, 2, ln 2]: {hint}"


def test_matches_a_loop_over_prompts(ex):
    ids = [4, 1, 4, 9, 1, 4, 7, 1]   # unsorted, not contiguous; prompts 9 and 7 have one sample
    rewards = torch.randn(8, generator=torch.Generator().manual_seed(0), dtype=F64) * 2
    got = ex.log_partition_mean(rewards, torch.tensor(ids), 0.3)
    assert got.dtype == F64, f"float64 rewards must give float64 log Ẑ, got {got.dtype}"
    assert torch.allclose(got, by_loop(rewards.tolist(), ids, 0.3), rtol=1e-12, atol=1e-12), (
        "differs from a loop over prompts: are the ids mapped to groups (torch.unique), and each "
        "sample given its own group's value (index by the inverse)?")


def test_no_overflow_at_r_over_tau_1e4(ex):
    # τ = 0.1. Prompt 0: r/τ = 1e4 and 1e4 − 1, so log Ẑ = 1e4 + log(1 + e^{-1}) − log 2.
    # Prompt 1: r/τ = −1e4 twice, so log Ẑ = −1e4 (e^{-1e4} underflows to 0 if taken as is).
    rewards = torch.tensor([1000.0, 999.9, -1000.0, -1000.0], dtype=F64)
    got = ex.log_partition_mean(rewards, torch.tensor([0, 0, 1, 1]), 0.1)
    top = 1e4 + math.log(1 + math.exp(-1)) - math.log(2)
    assert torch.isfinite(got).all(), (
        f"got {got.tolist()}: exp(1e4) overflows and exp(-1e4) underflows; subtract each group's maximum "
        "before exp (the log-sum-exp trick)")
    assert torch.allclose(got, torch.tensor([top, top, -1e4, -1e4], dtype=F64), rtol=1e-12), (
        f"got {got.tolist()}, want [1e4 + log(1 + e^-1) − log 2] x 2 and [−1e4] x 2: add the maximum back after the log")


def test_vectorised_over_prompts(ex):
    tree = ast.parse(inspect.getsource(ex))
    loops = [n for n in ast.walk(tree) if isinstance(n, (ast.For, ast.While, ast.comprehension))]
    assert not loops, (f"{ex.__name__} has a Python loop at line {getattr(loops[0], 'lineno', '?')}: "
                       "this exercise asks for the vectorised form (torch.unique, scatter_reduce, index_add)")
    # 1e5 samples over 1e4 prompts; check three prompts against their own group, taken by mask.
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 10_000, (100_000,), generator=g) * 7 + 3
    rewards = torch.randn(100_000, generator=g, dtype=F64)
    got = ex.log_partition_mean(rewards, ids, 0.2)
    assert got.shape == (100_000,), f"expected one value per sample, got shape {tuple(got.shape)}"
    for i in (0, 12_345, 99_999):
        group = rewards[ids == ids[i]] / 0.2
        want = float(torch.logsumexp(group, 0)) - math.log(len(group))
        assert abs(float(got[i]) - want) < 1e-10, f"sample {i}: got {float(got[i])}, want {want}"
