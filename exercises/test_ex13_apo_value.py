"""Tests for exercise 13: V̂* by hand, by a loop and at its limits; the loss by hand, its gradient, and
A*-PO = 2τ² × RPO at β₁ = β₂ = τ."""

import math

import pytest
import torch

F64 = torch.float64


def t64(values, grad=False):
    return torch.tensor(values, dtype=F64, requires_grad=grad)


def value_by_loop(rewards, ids, beta):
    out = []
    for i in range(len(rewards)):
        group = [rewards[j] / beta for j in range(len(rewards)) if ids[j] == ids[i]]
        top = max(group)
        out.append(beta * (top + math.log(sum(math.exp(a - top) for a in group) / len(group))))
    return torch.tensor(out, dtype=F64)


def test_value_hand_worked(ex):
    # β₁ = 0.5. Prompt 7: rewards 0 and 0.5·ln 3, so r/β₁ = 0, ln 3, the mean of e^{r/β₁} is (1 + 3)/2 = 2
    # and V̂* = 0.5·ln 2. Prompt 2: one reward, 1: V̂* = 0.5·log e^{2} = 1.
    got = ex.apo_values(t64([0.0, 1.0, 0.5 * math.log(3)]), torch.tensor([7, 2, 7]), 0.5)
    want = [0.5 * math.log(2), 1.0, 0.5 * math.log(2)]
    likely = {(math.log(2), 2.0, math.log(2)): "V̂* is in reward units: multiply the log-mean-exp by β₁",
              (0.5 * math.log(4), 1.0, 0.5 * math.log(4)): "you took the log of the sum: it is the mean, subtract log N",
              (0.25 * math.log(3), 1.0, 0.25 * math.log(3)): "that is the mean reward, V̂*'s limit as β₁ → ∞: "
                                                            "average e^{r/β₁}, not r"}
    hint = next((why for value, why in likely.items() if torch.allclose(got, t64(list(value)))),
                "each sample gets its own prompt's β₁·log mean e^{r/β₁}")
    assert torch.allclose(got, t64(want), atol=1e-12), f"got {got.tolist()}, want [0.5 ln 2, 1, 0.5 ln 2]: {hint}"


def test_value_matches_a_loop(ex):
    ids = [4, 1, 4, 9, 1, 4, 7, 1]   # unsorted, not contiguous; prompts 9 and 7 have one sample
    rewards = torch.randn(8, generator=torch.Generator().manual_seed(0), dtype=F64) * 2
    got = ex.apo_values(rewards, torch.tensor(ids), 0.3)
    assert got.dtype == F64, f"float64 rewards must give float64 values, got {got.dtype}"
    assert torch.allclose(got, value_by_loop(rewards.tolist(), ids, 0.3), rtol=1e-12, atol=1e-12), (
        "differs from a loop over prompts: are the ids mapped to groups (torch.unique), and each sample "
        "given its own group's value?")


def test_value_no_overflow_at_r_over_beta_1e4(ex):
    # β₁ = 0.1. Prompt 0: r/β₁ = 1e4 and 1e4 − 1: V̂* = 0.1·(1e4 + log(1 + e^{-1}) − log 2).
    # Prompt 1: r/β₁ = −1e4 twice: V̂* = −1000 (e^{-1e4} underflows to 0 if taken as is).
    got = ex.apo_values(t64([1000.0, 999.9, -1000.0, -1000.0]), torch.tensor([0, 0, 1, 1]), 0.1)
    top = 0.1 * (1e4 + math.log(1 + math.exp(-1)) - math.log(2))
    assert torch.isfinite(got).all(), (
        f"got {got.tolist()}: exp(1e4) overflows and exp(-1e4) underflows; subtract each group's maximum "
        "before exp (the log-sum-exp trick)")
    assert torch.allclose(got, t64([top, top, -1000.0, -1000.0]), rtol=1e-12), (
        f"got {got.tolist()}, want [{top:.6f}] x 2 and [−1000] x 2: add the maximum back after the log")


def test_value_lies_between_the_mean_and_the_best_reward(ex):
    g = torch.Generator().manual_seed(2)
    ids = torch.arange(6).repeat_interleave(5)
    rewards = torch.randn(30, generator=g, dtype=F64)
    groups = rewards.view(6, 5)
    mean, best = groups.mean(1).repeat_interleave(5), groups.max(1).values.repeat_interleave(5)
    got = ex.apo_values(rewards, ids, 0.7)
    assert ((got >= mean - 1e-12) & (got <= best + 1e-12)).all(), (
        "V̂* must lie between the group's mean reward and its best (Jensen: log mean e^a >= mean a, and a mean "
        "of e^{r/β₁} is at most the largest term)")
    assert torch.allclose(ex.apo_values(rewards, ids, 1e4), mean, atol=1e-4), "as β₁ → ∞, V̂* → the mean reward"
    assert torch.allclose(ex.apo_values(rewards, ids, 1e-4), best, atol=1e-3), (
        "as β₁ → 0, V̂* → the best reward of the group (and must stay finite: take the maximum out before exp)")


def test_loss_hand_worked(ex):
    # β₂ = 0.5.  ρ = policy − ref = [0.5, −1, 0], β₂ρ = [0.25, −0.5, 0];  r − V̂ = [0.75, −0.25, 0]
    # residual = [−0.5, −0.25, 0];  squares [0.25, 0.0625, 0], mean 5/48.
    got = float(ex.apo_loss(t64([-1.0, -2.0, -3.0]), t64([-1.5, -1.0, -3.0]), t64([1.0, 0.0, 0.5]),
                            t64([0.25, 0.25, 0.5]), 0.5))
    likely = {5 / 96: "A*-PO's loss has no ½ in front", 5 / 16: "you summed over the batch instead of averaging",
              5 / 24: "β₂ multiplies the log-ratio: β₂ρ − (r − V̂*)",
              5 / 12: "that is RPO's form, ρ − (r − V̂*)/β₂: A*-PO scales ρ by β₂ instead",
              25 / 48: "the log-ratio is policy − ref, not ref − policy"}
    hint = next((why for value, why in likely.items() if got == pytest.approx(value)), "see the worked numbers")
    assert got == pytest.approx(5 / 48, rel=1e-12), f"got {got}, want 5/48 = {5 / 48:.6f}: {hint}"


def test_loss_gradient(ex):
    g = torch.Generator().manual_seed(3)
    policy, ref, rewards, values = (torch.randn(5, generator=g, dtype=F64) for _ in range(4))
    policy.requires_grad_()
    loss = ex.apo_loss(policy, ref, rewards, values, 0.4)
    assert loss.dim() == 0, f"the loss is a scalar (0-dim tensor), got shape {tuple(loss.shape)}"
    assert loss.requires_grad, "the loss carries no gradient to policy_logps: is the log-ratio detached?"
    (grad,) = torch.autograd.grad(loss, policy)
    residual = (0.4 * (policy - ref) - (rewards - values)).detach()   # by hand: ∂/∂log π of mean(residual²)
    assert torch.allclose(grad, 2 * 0.4 * residual / 5, rtol=1e-12, atol=1e-14), (
        "∂L/∂log π_i must be 2·β₂·residual_i / B: the square's 2, β₂ from β₂ρ, and 1/B from the mean")


def test_with_equal_betas_it_is_two_tau_squared_times_rpo(ex):
    # V̂* from π_ref's samples ("the dataset", 4 per prompt), the loss on other samples ("fresh", 1 per prompt).
    tau = 0.3
    g = torch.Generator().manual_seed(4)
    data_ids = torch.tensor([0, 1, 2] * 4)
    data_rewards = torch.randn(12, generator=g, dtype=F64)
    per_prompt = {int(i): float(v) for i, v in zip(data_ids, ex.apo_values(data_rewards, data_ids, tau))}
    fresh_ids = [2, 0, 1]
    policy, ref, rewards = (torch.randn(3, generator=g, dtype=F64) for _ in range(3))
    values = t64([per_prompt[i] for i in fresh_ids])
    got = float(ex.apo_loss(policy, ref, rewards, values, tau))
    # RPO's loss on the same three samples, written out: ½·mean((ρ − (r/τ − log Ẑ))²), log Ẑ by a loop.
    rpo = 0.0
    for p, q, r, x in zip(policy.tolist(), ref.tolist(), rewards.tolist(), fresh_ids):
        group = [float(a) / tau for a, i in zip(data_rewards, data_ids) if int(i) == x]
        log_z = math.log(sum(math.exp(a) for a in group) / len(group))
        rpo += 0.5 * ((p - q) - (r / tau - log_z)) ** 2 / 3
    assert got == pytest.approx(2 * tau ** 2 * rpo, rel=1e-10), (
        f"got {got}, want 2τ² × RPO's loss = {2 * tau ** 2 * rpo}: with β₁ = β₂ = τ, V̂* = τ log Ẑ and "
        "β₂ρ − (r − V̂*) = τ(ρ − (r/τ − log Ẑ)); check V̂* (β₁ times the log-mean-exp) and the loss (no ½)")
