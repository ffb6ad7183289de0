"""Solution to exercise 08 · the KL-regularised optimum of a bandit, and regret."""

import torch


def optimal_policy(ref_probs, rewards, tau):
    """softmax(log π_ref + r/τ): (Y,) -> (Y,)."""
    return torch.softmax(torch.log(ref_probs) + rewards / tau, dim=-1)


def regret(policy, ref_probs, rewards, tau):
    """τ log Z − (E_π[r] − τ KL(π ‖ π_ref)), with 0 log 0 = 0."""
    kl = (torch.xlogy(policy, policy) - torch.xlogy(policy, ref_probs)).sum()
    log_z = torch.logsumexp(torch.log(ref_probs) + rewards / tau, dim=-1)
    return float(tau * log_z - ((policy * rewards).sum() - tau * kl))
