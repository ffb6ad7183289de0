"""Tests for exercise 12: GRPO and Dr. GRPO worked by hand and by a loop; ε, silent groups, the reweighting."""

import math

import pytest
import torch

F64 = torch.float64
IDS = torch.tensor([6, 1, 6, 6, 1, 6])                        # prompt 6: samples 0, 2, 3, 5; prompt 1: 1, 4
REWARDS = torch.tensor([1.0, 2.0, 0.0, 0.0, 4.0, 0.0], dtype=F64)


def by_loop(rewards, ids, scaled, eps=1e-6):
    out = []
    for i in range(len(rewards)):
        group = [rewards[j] for j in range(len(rewards)) if ids[j] == ids[i]]
        mean = sum(group) / len(group)
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (len(group) - 1))
        out.append((rewards[i] - mean) / (std + eps) if scaled else rewards[i] - mean)
    return torch.tensor(out, dtype=F64)


def close(a, b, tol=1e-9):
    return torch.allclose(a, torch.tensor(b, dtype=F64), rtol=tol, atol=tol)


def test_dr_grpo_hand_worked(ex):
    # Prompt 6: rewards 1, 0, 0, 0, mean 1/4: A = 3/4, −1/4, −1/4, −1/4. Prompt 1: 2 and 4, mean 3: A = −1, +1.
    got = ex.dr_grpo_advantages(REWARDS, IDS)
    want = [0.75, -1.0, -0.25, -0.25, 1.0, -0.25]
    if close(got, [1.0, -2.0, -1 / 3, -1 / 3, 2.0, -1 / 3]):
        hint = "that is RLOO's leave-one-out baseline (exercise 11): Dr. GRPO's mean includes the sample itself"
    elif close(got, [-v for v in want]):
        hint = "the advantage is r − mean, not mean − r"
    else:
        hint = "each sample's baseline is the mean of its own prompt's group"
    assert close(got, want), f"got {got.tolist()}, want [3/4, −1, −1/4, −1/4, 1, −1/4]: {hint}"


def test_grpo_hand_worked(ex):
    # Prompt 6: centred 3/4, −1/4 ×3; Bessel s² = (9/16 + 3/16)/3 = 1/4, s = 1/2: A = 3/2, −1/2 ×3.
    # Prompt 1: centred −1, +1; s² = 2/1, s = √2: A = ∓1/√2.
    got = ex.grpo_advantages(REWARDS, IDS)
    want = [1.5, -1 / math.sqrt(2), -0.5, -0.5, 1 / math.sqrt(2), -0.5]
    likely = {(math.sqrt(3), -1.0, -1 / math.sqrt(3), -1 / math.sqrt(3), 1.0, -1 / math.sqrt(3)):
              "you took the population std (÷ K): GRPO's is Bessel-corrected, ÷ (K − 1)",
              (3.0, -0.5, -1.0, -1.0, 0.5, -1.0): "you divided by the variance s², not the std s",
              (0.75, -1.0, -0.25, -0.25, 1.0, -0.25): "you returned the centred rewards: divide by the group's std"}
    hint = next((why for value, why in likely.items() if close(got, list(value), 1e-4)),
                "centre on the group's mean, then divide by the group's Bessel std (+ ε)")
    assert close(got, want, 1e-5), f"got {got.tolist()}, want [3/2, −1/√2, −1/2, −1/2, 1/√2, −1/2]: {hint}"


def test_match_a_loop_on_unequal_interleaved_groups(ex):
    ids = [7, 2, 7, 5, 2, 7, 5, 7, 2, 7]   # groups of 5, 3 and 2, interleaved, ids not 0..P-1
    rewards = torch.randn(10, generator=torch.Generator().manual_seed(0), dtype=F64)
    for name, scaled in (("dr_grpo_advantages", False), ("grpo_advantages", True)):
        got = getattr(ex, name)(rewards, torch.tensor(ids))
        assert got.dtype == F64, f"{name}: float64 rewards must give float64 advantages, got {got.dtype}"
        assert torch.allclose(got, by_loop(rewards.tolist(), ids, scaled), rtol=1e-10, atol=1e-12), (
            f"{name} differs from a loop over samples: every group has its own K, mean and std (5, 3 and 2 "
            "samples here); are the ids mapped to groups and each sample given its own group's values?")


def test_a_zero_variance_group_gives_zero(ex):
    ids = torch.tensor([0, 1, 0, 1, 0])   # prompt 0: three samples scored alike
    rewards = torch.tensor([0.1, 1.0, 0.1, 0.0, 0.1], dtype=F64)
    for name in ("dr_grpo_advantages", "grpo_advantages"):
        got = getattr(ex, name)(rewards, ids)
        assert torch.isfinite(got).all(), (
            f"{name}: got {got.tolist()}: 0/0 on the group whose rewards are all equal; add ε to the std")
        assert got[[0, 2, 4]].abs().max() < 1e-9, (
            f"{name}: got {got[[0, 2, 4]].tolist()} on a group whose rewards are all equal, want 0: no sample of "
            "that prompt is better than another, so there is nothing to learn from it")


def test_eps_is_added_to_the_std(ex):
    # K = 2, rewards 0 and 1e-6: centred ∓5e-7, s = 1e-6/√2 ≈ 7.07e-7, A = ∓5e-7/(7.07e-7 + 1e-6) = ∓0.2929.
    got = ex.grpo_advantages(torch.tensor([0.0, 1e-6], dtype=F64), torch.tensor([3, 3]))
    want = 5e-7 / (1e-6 / math.sqrt(2) + 1e-6)
    if abs(abs(float(got[1])) - 1 / math.sqrt(2)) < 1e-3:
        hint = "ε is missing: add it to the std (s + ε) so that a nearly silent group is damped, not blown up"
    elif abs(float(got[1])) < 1e-2:
        hint = "ε went inside the square root (√(s² + ε)): GRPO adds it to the std itself, s + ε"
    elif abs(abs(float(got[1])) - 1 / 3) < 1e-3:
        hint = "that is the population std (÷ K, here 5e-7): GRPO's is Bessel-corrected, ÷ (K − 1)"
    else:
        hint = "A = (r − m)/(s + ε) with ε = 1e-6"
    assert abs(float(got[1]) - want) < 1e-6 and abs(float(got[0]) + want) < 1e-6, (
        f"got {got.tolist()}, want ∓{want:.4f}: {hint}")


def test_a_group_of_one_is_refused(ex):
    for name in ("dr_grpo_advantages", "grpo_advantages"):
        try:
            getattr(ex, name)(torch.tensor([0.5, 1.0, 2.0], dtype=F64), torch.tensor([0, 0, 1]))
        except ValueError:
            continue
        pytest.fail(f"{name}: prompt 1 has a single sample: its baseline would be itself (and its std 0/0): "
                    "raise ValueError")


def test_the_std_reweights_prompts(ex):
    # The same pattern of rewards on two prompts, one scaled by 0.01, the other by 10 and shifted by 5.
    pattern = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.5], dtype=F64)
    rewards = torch.cat([0.01 * pattern, 10 * pattern + 5])
    ids = torch.tensor([0] * 5 + [1] * 5)
    grpo, dr = ex.grpo_advantages(rewards, ids), ex.dr_grpo_advantages(rewards, ids)
    assert torch.allclose(grpo[:5], grpo[5:], rtol=1e-3, atol=1e-6), (
        f"GRPO: got {grpo[:5].tolist()} and {grpo[5:].tolist()}: after dividing by the group's std, a prompt's "
        "advantages do not depend on the scale or the shift of its rewards")
    assert torch.allclose(dr[5:], 1000 * dr[:5], rtol=1e-9), (
        "Dr. GRPO: a prompt whose rewards are 1000 times more spread must get 1000 times larger advantages")
