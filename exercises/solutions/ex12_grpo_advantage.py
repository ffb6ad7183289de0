"""Solution to exercise 12 · GRPO's and Dr. GRPO's group advantages."""

import torch


def _groups(prompt_ids):
    _, group, counts = torch.unique(prompt_ids, return_inverse=True, return_counts=True)
    if (counts == 1).any():
        raise ValueError(f"a group baseline needs two samples per prompt; {int((counts == 1).sum())} prompt(s) have one")
    return group, counts


def _centred(rewards, group, counts):
    sums = torch.zeros(len(counts), dtype=rewards.dtype).index_add(0, group, rewards)
    return rewards - (sums / counts.to(rewards.dtype))[group]


def dr_grpo_advantages(rewards, prompt_ids):
    """r_i minus its group's mean: (N,), (N,) -> (N,)."""
    group, counts = _groups(prompt_ids)
    return _centred(rewards, group, counts)


def grpo_advantages(rewards, prompt_ids, eps=1e-6):
    """The centred reward over (Bessel std + eps): a zero-variance group gives 0 / eps = 0."""
    group, counts = _groups(prompt_ids)
    centred = _centred(rewards, group, counts)
    squares = torch.zeros(len(counts), dtype=rewards.dtype).index_add(0, group, centred ** 2)
    std = torch.sqrt(squares / (counts - 1).to(rewards.dtype))
    return centred / (std[group] + eps)
