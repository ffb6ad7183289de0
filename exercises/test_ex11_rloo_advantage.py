"""Tests for exercise 11: RLOO worked by hand and by a Python loop; its baseline ignores its own sample."""

import pytest
import torch

F64 = torch.float64


def rloo_by_loop(rewards, ids):
    out = []
    for i in range(len(rewards)):
        others = [rewards[j] for j in range(len(rewards)) if ids[j] == ids[i] and j != i]
        out.append(rewards[i] - sum(others) / len(others))
    return torch.tensor(out, dtype=F64)


def test_hand_worked(ex):
    # Prompt 3 (samples 0, 2, 3): rewards 1, 0, 0.5. Sample 0's others: (0 + 0.5)/2 = 0.25, A = 0.75;
    # sample 2's: (1 + 0.5)/2 = 0.75, A = −0.75; sample 3's: (1 + 0)/2 = 0.5, A = 0.
    # Prompt 8 (samples 1, 4): rewards 2, 4; each sees the other: A = −2 and +2.
    rewards = torch.tensor([1.0, 2.0, 0.0, 0.5, 4.0], dtype=F64)
    got = ex.rloo_advantages(rewards, torch.tensor([3, 8, 3, 3, 8]))
    want = torch.tensor([0.75, -2.0, -0.75, 0.0, 2.0], dtype=F64)
    likely = {(0.5, -1.0, -0.5, 0.0, 1.0): "you included the sample in its own baseline (that is the group mean, "
                                            "Dr. GRPO's): leave r_i out and divide the others' sum by K − 1",
              (5 / 6, 0.0, -0.5, 1 / 6, 3.0): "the others are K − 1 samples: divide their sum by K − 1, not K",
              (-0.75, 2.0, 0.75, 0.0, -2.0): "the advantage is r_i − baseline, not baseline − r_i"}
    hint = next((why for value, why in likely.items() if torch.allclose(got, torch.tensor(value, dtype=F64))),
                "each sample's baseline is the mean of the other samples of its own prompt")
    assert torch.allclose(got, want, atol=1e-12), f"got {got.tolist()}, want [0.75, −2, −0.75, 0, 2]: {hint}"


def test_matches_a_loop_on_unequal_interleaved_groups(ex):
    ids = [7, 2, 7, 5, 2, 7, 5, 7, 2, 7]   # groups of 5, 3 and 2, interleaved, ids not 0..P-1
    rewards = torch.randn(10, generator=torch.Generator().manual_seed(0), dtype=F64)
    got = ex.rloo_advantages(rewards, torch.tensor(ids))
    assert got.dtype == F64, f"float64 rewards must give float64 advantages, got {got.dtype}"
    assert torch.allclose(got, rloo_by_loop(rewards.tolist(), ids), rtol=1e-12, atol=1e-12), (
        "differs from a loop over samples: every group has its own K (5, 3 and 2 here); are the ids "
        "mapped to groups (torch.unique) and each sample given its own group's sum (index by the inverse)?")


def test_group_of_one_is_refused(ex):
    try:
        ex.rloo_advantages(torch.tensor([0.5, 1.0, 2.0], dtype=F64), torch.tensor([0, 0, 1]))
    except ValueError:
        return
    pytest.fail("prompt 1 has a single sample, so there is no other sample to take a baseline from: raise ValueError")


def test_the_baseline_ignores_the_own_sample(ex):
    # The baseline b_i = r_i − A_i must not move when r_i changes (that is what keeps the update
    # unbiased); the other samples' baselines do move, by Δ/(K − 1).
    ids = torch.tensor([0, 1, 0, 0, 1, 0])
    rewards = torch.tensor([0.3, -1.0, 2.0, 0.7, 0.4, -0.2], dtype=F64)
    moved = rewards.clone()
    moved[2] += 3.0
    before = rewards - ex.rloo_advantages(rewards, ids)
    after = moved - ex.rloo_advantages(moved, ids)
    assert abs(float(after[2] - before[2])) < 1e-12, (
        f"sample 2's baseline moved by {float(after[2] - before[2]):+.4f} when its own reward rose by 3: "
        "it must not depend on its own sample (leave r_i out)")
    assert torch.allclose(after[[0, 3, 5]] - before[[0, 3, 5]], torch.full((3,), 1.0, dtype=F64)), (
        "the other samples of prompt 0 must see sample 2's reward rise by 3 / (K − 1) = 1 in their baselines")
    assert torch.allclose(after[[1, 4]], before[[1, 4]]), "prompt 1's baselines must not see prompt 0's rewards"


def test_it_is_the_centred_reward_times_k_over_k_minus_1(ex):
    # A_i = K/(K − 1) · (r_i − m(x)): the group-mean baseline, scaled; each group's advantages sum to 0.
    ids = [4, 4, 9, 4, 9, 9, 9]
    rewards = torch.randn(7, generator=torch.Generator().manual_seed(1), dtype=F64) * 3
    got = ex.rloo_advantages(rewards, torch.tensor(ids))
    for x in set(ids):
        mine = [i for i, p in enumerate(ids) if p == x]
        k, mean = len(mine), sum(float(rewards[i]) for i in mine) / len(mine)
        for i in mine:
            want = k / (k - 1) * (float(rewards[i]) - mean)
            assert abs(float(got[i]) - want) < 1e-12, (
                f"sample {i} (prompt {x}, K = {k}): got {float(got[i]):.6f}, want K/(K − 1)·(r − mean) = {want:.6f}")
        assert abs(sum(float(got[i]) for i in mine)) < 1e-12, f"prompt {x}'s advantages must sum to 0"
