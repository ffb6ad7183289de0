"""Tests for exercise 04: a hand-worked loss, and the gradient against its hand formula."""

import pytest
import torch

F64 = torch.float64


def t64(values, grad=False):
    return torch.tensor(values, dtype=F64, requires_grad=grad)


def test_hand_worked(ex):
    # τ = 0.5.  ρ = policy − ref = [0.5, −1, 0];  r/τ = [2, 0, 1];  target = r/τ − log Ẑ = [1.5, −0.5, 0]
    # residual = [−1, −0.5, 0];  squares [1, 0.25, 0], mean 5/12;  L = ½ · 5/12 = 5/24.
    got = float(ex.rpo_loss(t64([-1.0, -2.0, -3.0]), t64([-1.5, -1.0, -3.0]), t64([1.0, 0.0, 0.5]),
                            t64([0.5, 0.5, 1.0]), 0.5))
    likely = {5 / 12: "you forgot the ½", 5 / 8: "you summed over the batch instead of averaging",
              5 / 4: "you summed instead of averaging, and forgot the ½",
              25 / 24: "the log-ratio is policy − ref, not ref − policy",
              17 / 96: "the target divides the reward by τ: r/τ, not r·τ"}
    hint = next((why for value, why in likely.items() if got == pytest.approx(value)), "see the worked numbers")
    assert got == pytest.approx(5 / 24, rel=1e-12), f"got {got}, want 5/24 = {5 / 24:.6f}: {hint}"


def test_zero_at_the_target(ex):
    ref, rewards, log_z = t64([-3.0, -1.0, -7.5]), t64([0.2, -1.0, 3.0]), t64([0.4, 0.4, 2.0])
    policy = (ref + rewards / 0.3 - log_z).detach().requires_grad_()
    loss = ex.rpo_loss(policy, ref, rewards, log_z, 0.3)
    assert loss.dim() == 0, f"the loss is a scalar (0-dim tensor), got shape {tuple(loss.shape)}"
    assert abs(float(loss.detach())) < 1e-12, "a policy whose log-ratio equals r/τ − log Ẑ exactly must have zero loss"


def test_gradient_is_the_residual_over_batch_size(ex):
    g = torch.Generator().manual_seed(0)
    policy, ref, rewards, log_z = (torch.randn(5, generator=g, dtype=F64) for _ in range(4))
    policy.requires_grad_()
    loss = ex.rpo_loss(policy, ref, rewards, log_z, 0.7)
    assert loss.requires_grad, "the loss carries no gradient to policy_logps: is the log-ratio detached?"
    (grad,) = torch.autograd.grad(loss, policy)
    residual = (policy - ref) - (rewards / 0.7 - log_z)   # by hand: ∂/∂ρ_i of ½ mean(·²)
    assert torch.allclose(grad, residual.detach() / 5, rtol=1e-12, atol=1e-14), (
        f"∂L/∂log π must be (ρ − target)/B; got {grad.tolist()}, want {(residual / 5).tolist()}: "
        "the mean gives 1/B, and the ½ cancels the 2 of the square")
