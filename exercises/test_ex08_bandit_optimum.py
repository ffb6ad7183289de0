"""Tests for exercise 08: two- and three-armed bandits worked by hand, and regret = τ KL(π ‖ π*)."""

import math

import pytest
import torch

F64 = torch.float64
LN2, LN3 = math.log(2), math.log(3)


def t64(values):
    return torch.tensor(values, dtype=F64)


# Two arms, τ = 1: π_ref = [½, ½], r = [0, ln 3], so π_ref e^{r/τ} = [½, 3/2], Z = 2 and π* = [¼, ¾].
#   J* = τ log Z = ln 2.  π_ref itself: E[r] = ½ ln 3, KL(π_ref ‖ π_ref) = 0, so J = ½ ln 3 and
#   regret = ln 2 − ½ ln 3 = ½ ln(4/3) ≈ 0.1438 = τ KL(π_ref ‖ π*) = ½ ln(½/¼) + ½ ln(½/¾). ✓
TWO = dict(ref_probs=t64([0.5, 0.5]), rewards=t64([0.0, LN3]), tau=1.0)
# Three arms, τ = ½: π_ref = [½, ¼, ¼], r = [0, ½ ln 2, ½ ln 4], so r/τ = [0, ln 2, ln 4], e^{r/τ} = [1, 2, 4],
#   π_ref e^{r/τ} = [½, ½, 1], Z = 2, π* = [¼, ¼, ½], J* = ½ ln 2.
#   Greedy π = [0, 0, 1]: E[r] = ln 2, KL(π ‖ π_ref) = 1·ln(1/¼) = ln 4, J = ln 2 − ½ ln 4 = 0,
#   regret = ½ ln 2 = τ KL(π ‖ π*) = ½ ln(1/½). ✓ (the two zero arms contribute 0 log 0 = 0)
THREE = dict(ref_probs=t64([0.5, 0.25, 0.25]), rewards=t64([0.0, 0.5 * LN2, 0.5 * math.log(4)]), tau=0.5)


def hint_for(got, case):
    """Name the likely mistake from the shape of a wrong π*."""
    ref, r, tau = case["ref_probs"], case["rewards"], case["tau"]
    wrong = {"you dropped π_ref: π* ∝ π_ref(y) e^{r/τ}": torch.softmax(r / tau, -1),
             "divide the reward by τ: π* ∝ π_ref(y) e^{r/τ}": torch.softmax(torch.log(ref) + r, -1)}
    if abs(float(got.sum()) - 1) > 1e-9:
        return "π* must sum to 1: divide by Z"
    return next((why for why, w in wrong.items() if torch.allclose(got, w)), "π* ∝ π_ref(y) e^{r(y)/τ}")


@pytest.mark.parametrize("case, want", [(TWO, [0.25, 0.75]), (THREE, [0.25, 0.25, 0.5])], ids=["two", "three"])
def test_optimal_policy_by_hand(ex, case, want):
    got = ex.optimal_policy(**case)
    assert torch.allclose(got, t64(want), atol=1e-12), f"got {got.tolist()}, want {want}: {hint_for(got, case)}"


def test_optimal_policy_does_not_overflow(ex):
    got = ex.optimal_policy(t64([0.9, 0.1]), t64([0.0, 1000.0]), 0.01)   # r/τ = 1e5
    assert torch.isfinite(got).all(), "e^(r/τ) overflows at r/τ = 1e5: work in log space, softmax(log π_ref + r/τ)"
    assert torch.allclose(got, t64([0.0, 1.0]), atol=1e-12), (
        f"got {got.tolist()}: at r/τ = 1e5 the second arm takes all the mass, π* = [0, 1]")


def test_regret_by_hand(ex):
    got = float(ex.regret(TWO["ref_probs"], **TWO))
    assert got == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12), (
        f"regret of π_ref in the two-armed bandit: got {got}, want ln 2 − ½ ln 3 ≈ 0.1438"
        + (" (regret is J* − J(π), not J(π) − J*)" if got < 0 else ""))
    got = float(ex.regret(t64([0.0, 0.0, 1.0]), **THREE))
    assert math.isfinite(got), "a policy with zero arms gave a non-finite regret: 0 · log 0 = 0 (torch.xlogy)"
    assert got == pytest.approx(0.5 * LN2, rel=1e-12), (
        f"greedy policy [0, 0, 1], three arms: got {got}, want ½ ln 2: J(π) = E_π[r] − τ KL(π ‖ π_ref) = ln 2 − ½ ln 4")


def test_regret_is_zero_at_the_optimum(ex):
    got = float(ex.regret(t64([0.25, 0.25, 0.5]), **THREE))
    assert abs(got) < 1e-12, (
        f"regret of π* is J* − J(π*) = 0, got {got}: J* = τ log Z with Z = Σ π_ref e^(r/τ), "
        "and J(π) = E_π[r] − τ KL(π ‖ π_ref), the KL times τ")


def test_regret_is_tau_kl_to_the_optimum(ex):
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        ref = torch.softmax(torch.randn(4, generator=g, dtype=F64), 0)
        policy = torch.softmax(2 * torch.randn(4, generator=g, dtype=F64), 0)
        rewards, tau = torch.randn(4, generator=g, dtype=F64), 0.2 + float(torch.rand(1, generator=g))
        z = sum(float(q) * math.exp(float(r) / tau) for q, r in zip(ref, rewards))
        star = [float(q) * math.exp(float(r) / tau) / z for q, r in zip(ref, rewards)]
        want = tau * sum(float(p) * math.log(float(p) / s) for p, s in zip(policy, star))
        got = float(ex.regret(policy, ref, rewards, tau))
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (
            f"regret must equal τ KL(π ‖ π*) = {want:.6f}, got {got:.6f}: check J(π) = E_π[r] − τ KL(π ‖ π_ref) "
            "and J* = τ log Z")
