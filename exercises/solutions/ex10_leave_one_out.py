"""Solution to exercise 10 · the leave-one-out partition, and the lone-response target."""

import math

import torch


def log_partition_loo(rewards, prompt_ids, tau):
    """logsumexp_{j ≠ i, same prompt}(r_j/τ) − log(K − 1), through an (N, N) mask."""
    others = (prompt_ids[:, None] == prompt_ids[None, :]) & ~torch.eye(len(rewards), dtype=torch.bool)
    count = others.sum(1)
    if (count == 0).any():
        raise ValueError(f"leave-one-out needs two samples per prompt; {int((count == 0).sum())} have one")
    scaled = (rewards / tau).expand(len(rewards), -1).masked_fill(~others, -math.inf)
    return torch.logsumexp(scaled, dim=1) - torch.log(count.to(scaled.dtype))


def mean_target_of_a_lone_sample(r, tau):
    """r/τ − log Ẑ with Ẑ = mean of e^{r/τ} over the group {r}: log Ẑ = r/τ, so the target is 0.

    Answer: 0 for every r. The lone sample is its own partition, so its reward cancels out of
    its target; the policy is told to keep π = π_ref on it, good response or bad.
    """
    log_z = float(torch.logsumexp(torch.tensor([r / tau], dtype=torch.float64), 0)) - math.log(1)
    return r / tau - log_z
