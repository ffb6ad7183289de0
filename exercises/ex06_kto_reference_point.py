"""Exercise 06 · KTO's reference point z0, from mismatched pairs.

KTO judges each response's log-ratio ρ = log π_θ(y|x) − log π_ref(y|x) relative to a reference
point z0, an estimate of KL(π_θ ‖ π_ref): a desirable response is pushed to ρ > z0, an
undesirable one to ρ < z0. The estimate is the batch mean of the log-ratio of *mismatched*
pairs, prompt x_i with the response of another sample, y_{m(i)}:

    z0 = max(0, mean_i [ log π_θ(y_{m(i)}|x_i) − log π_ref(y_{m(i)}|x_i) ])      (no gradient)

- mismatched, so that z0 does not move with the very log-ratios the loss pushes: m must be a
  permutation of the batch with no fixed point, m(i) ≠ i for every i. Rolling by one,
  m(i) = (i + 1) mod B, is one for every B ≥ 2; reversing is not (for odd B the middle
  sample is paired with itself).
- no gradient: z0 is a baseline to compare against, not a quantity to optimise.
- clamped at 0: a KL is never negative, but its batch estimate can be.

Here a (B, B) table stands in for the two extra forward passes the library makes:
table[i, j] = log π(y_j | x_i), so the batch itself is the diagonal.

Notebook 04 (the four objectives side by side). The library's versions are
`rpo_mini.losses.kto_mismatched` and the z0 line of `rpo_mini.losses.kto_loss`.
"""

import torch


def mismatched_permutation(batch_size):
    """m: a permutation of 0..B-1 with m[i] != i for every i.

    Returns (B,) long. A batch of fewer than 2 samples has no mismatched pair: ValueError.
    Why: pairing a sample with its own response would make z0 the batch's own mean log-ratio.
    Hint: `torch.arange` and `%`.
    """
    raise NotImplementedError("exercise 06: mismatched_permutation")


def reference_point(policy_table, ref_table, perm):
    """z0 = max(0, mean_i (policy_table[i, perm[i]] − ref_table[i, perm[i]])), detached.

    policy_table, ref_table (B, B): entry [i, j] = log π(y_j | x_i) under π_θ and π_ref;
    perm (B,) long, from mismatched_permutation. Returns a 0-dim tensor without gradient.
    Why: z0 estimates KL(π_θ ‖ π_ref) on responses the prompt did not produce.
    Hint: `table[torch.arange(B), perm]` picks one entry per row; then `.detach()`, `.clamp(min=0)`.
    """
    raise NotImplementedError("exercise 06: reference_point")
