"""Tests for exercise 06: the permutation checked entry by entry, z0 worked by hand."""

import pytest
import torch

F64 = torch.float64

# log π_ref(y_j | x_i), and the policy's table = ref + these log-ratios (rows: prompts i, columns: responses j):
#   ratio = [[0.0, 1.0,  0.5],
#            [2.0, 1.0,  0.0],
#            [1.5, 0.25, 0.0]]
REF = torch.tensor([[-2.0, -3.0, -4.0], [-3.0, -2.0, -5.0], [-4.0, -4.0, -1.0]], dtype=F64)
POLICY = torch.tensor([[-2.0, -2.0, -3.5], [-1.0, -1.0, -5.0], [-2.5, -3.75, -1.0]], dtype=F64)


def test_permutation_never_pairs_a_sample_with_itself(ex):
    for batch_size in range(2, 12):   # even and odd
        perm = ex.mismatched_permutation(batch_size)
        assert torch.is_tensor(perm) and perm.dtype == torch.long and perm.shape == (batch_size,), (
            f"B = {batch_size}: expected a (B,) long tensor, got {perm!r}")
        assert sorted(perm.tolist()) == list(range(batch_size)), (
            f"B = {batch_size}: {perm.tolist()} is not a permutation: some response is used twice, another never")
        own = [i for i in range(batch_size) if int(perm[i]) == i]
        assert not own, (f"B = {batch_size}: sample {own[0]} was paired with its own response"
                         + (" (reversing pairs the middle of an odd batch with itself)"
                            if perm.tolist() == list(range(batch_size))[::-1] else ""))


def test_a_batch_of_one_is_refused(ex):
    try:
        ex.mismatched_permutation(1)
    except ValueError:
        return
    pytest.fail("a batch of one sample has no mismatched pair: raise ValueError")


def test_reference_point_hand_worked(ex):
    # perm = [1, 2, 0]: the pairs (x0, y1), (x1, y2), (x2, y0), log-ratios 1.0, 0.0, 1.5 -> z0 = 2.5/3.
    got = float(ex.reference_point(POLICY, REF, torch.tensor([1, 2, 0])))
    likely = {1 / 3: "you took the diagonal, the matched pairs (x_i, y_i)",
              2.75 / 3: "you indexed [perm[i], i]: rows are prompts, columns responses",
              6.25 / 9: "you averaged the whole table: only the pairs (i, perm[i]) count"}
    hint = next((why for value, why in likely.items() if got == pytest.approx(value)), "see the worked pairs")
    assert got == pytest.approx(2.5 / 3, rel=1e-12), f"got {got}, want 2.5/3 = {2.5 / 3:.6f}: {hint}"


def test_reference_point_carries_no_gradient(ex):
    policy = POLICY.clone().requires_grad_()
    z0 = ex.reference_point(policy, REF, torch.tensor([2, 0, 1]))
    assert torch.is_tensor(z0) and z0.dim() == 0, f"z0 is a 0-dim tensor, got {z0!r}"
    assert not z0.requires_grad, "the reference point carries gradient: z0 is a baseline, .detach() it"


def test_reference_point_is_clamped_at_zero(ex):
    # Swap the roles: every mismatched log-ratio is now ≤ 0, mean (−1 − 0 − 1.5)/3 < 0.
    got = ex.reference_point(REF, POLICY, torch.tensor([1, 2, 0]))
    assert float(got) == 0.0, (
        f"got {float(got)}: z0 estimates a KL divergence, which is never negative; clamp it at 0")
