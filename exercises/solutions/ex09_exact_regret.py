"""Solution to exercise 09: KL(π‖π*) and the regret from enumerated tables."""

import torch


def _kl(table, other):
    p = table.exp()
    return torch.where(p > 0, p * (table - other), torch.zeros_like(p)).sum(-1)


def kl_to_optimal(policy_table, ref_table, rewards, tau):
    scores = ref_table + rewards / tau
    optimal = scores - torch.logsumexp(scores, dim=-1, keepdim=True)
    return _kl(policy_table, optimal)


def regret(policy_table, ref_table, rewards, tau):
    j_star = tau * torch.logsumexp(ref_table + rewards / tau, dim=-1)
    j = (policy_table.exp() * rewards).sum(-1) - tau * _kl(policy_table, ref_table)
    return j_star - j
