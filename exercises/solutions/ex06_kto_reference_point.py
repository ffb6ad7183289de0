"""Solution to exercise 06 · KTO's reference point z0, from mismatched pairs."""

import torch


def mismatched_permutation(batch_size):
    """i -> (i + 1) mod B: no fixed point for any B >= 2."""
    if batch_size < 2:
        raise ValueError(f"a mismatched pair needs at least 2 samples, got {batch_size}")
    return (torch.arange(batch_size) + 1) % batch_size


def reference_point(policy_table, ref_table, perm):
    """max(0, mean_i of the log-ratio of (x_i, y_perm[i])), without gradient."""
    rows = torch.arange(len(perm))
    return (policy_table[rows, perm] - ref_table[rows, perm]).detach().mean().clamp(min=0)
