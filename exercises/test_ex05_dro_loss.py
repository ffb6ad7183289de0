"""Tests for exercise 05: a hand-worked loss, and both gradients against their hand formulas."""

import pytest
import torch

F64 = torch.float64


def t64(values, grad=False):
    return torch.tensor(values, dtype=F64, requires_grad=grad)


def test_hand_worked(ex):
    # τ = 0.5.  ρ = [0.5, −1, 0];  (r − V)/τ = ([1, 0, 0.5] − [0.25, 0.25, 0.5]) / 0.5 = [1.5, −0.5, 0]
    # residual = [−1, −0.5, 0];  L = ½ · (1 + 0.25 + 0)/3 = 5/24.
    got = float(ex.dro_loss(t64([-1.0, -2.0, -3.0]), t64([-1.5, -1.0, -3.0]), t64([1.0, 0.0, 0.5]),
                            t64([0.25, 0.25, 0.5]), 0.5))
    likely = {19 / 48: "V must be divided by τ too: the target is (r − V)/τ, not r/τ − V",
              5 / 12: "you forgot the ½", 5 / 8: "you summed over the batch instead of averaging"}
    hint = next((why for value, why in likely.items() if got == pytest.approx(value)), "see the worked numbers")
    assert got == pytest.approx(5 / 24, rel=1e-12), f"got {got}, want 5/24 = {5 / 24:.6f}: {hint}"


def test_gradients_reach_the_policy_and_the_value(ex):
    g = torch.Generator().manual_seed(0)
    policy, ref, rewards, values = (torch.randn(6, generator=g, dtype=F64) for _ in range(4))
    policy.requires_grad_(), values.requires_grad_()
    loss = ex.dro_loss(policy, ref, rewards, values, 0.4)
    assert loss.requires_grad, "the loss carries no gradient at all: is everything detached?"
    g_policy, g_values = torch.autograd.grad(loss, (policy, values), allow_unused=True)
    e = ((policy - ref) - (rewards - values) / 0.4).detach()   # the residual, by hand
    assert g_values is not None and (g_values != 0).all(), (
        "no gradient reached the values: did you detach V? DRO learns V_φ through this very loss")
    assert g_policy is not None and (g_policy != 0).all(), "no gradient reached the policy log-probs"
    assert torch.allclose(g_policy, e / 6, rtol=1e-12, atol=1e-14), "∂L/∂log π must be residual / B"
    assert torch.allclose(g_values, e / (0.4 * 6), rtol=1e-12, atol=1e-14), (
        "∂L/∂V must be residual / (τ B): V enters the target as −V/τ")


def test_value_tau_log_z_gives_the_rpo_loss(ex):
    # With V = τ log Ẑ the target (r − V)/τ is r/τ − log Ẑ: DRO's loss is RPO's, written out here.
    g = torch.Generator().manual_seed(1)
    policy, ref, rewards, log_z = (torch.randn(5, generator=g, dtype=F64) for _ in range(4))
    got = float(ex.dro_loss(policy, ref, rewards, 0.3 * log_z, 0.3))
    want = sum(0.5 * float((p - q) - (r / 0.3 - z)) ** 2 for p, q, r, z in zip(policy, ref, rewards, log_z)) / 5
    assert got == pytest.approx(want, rel=1e-12), "with V = τ log Ẑ, the DRO loss must equal the RPO loss"
