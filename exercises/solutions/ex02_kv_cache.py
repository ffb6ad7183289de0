"""Solution to exercise 02 · one attention step with a key/value cache."""

import math

import torch


def attend_step(q, k_new, v_new, cache_k, cache_v):
    """Append k_new, v_new to the cache, then out = softmax(q Kᵀ/√D) V: (B, D) and (B, T+1, D) x 2."""
    cache_k = torch.cat([cache_k, k_new[:, None]], dim=1)
    cache_v = torch.cat([cache_v, v_new[:, None]], dim=1)
    weights = torch.softmax(torch.einsum("bd,btd->bt", q, cache_k) / math.sqrt(q.shape[-1]), dim=-1)
    return torch.einsum("bt,btd->bd", weights, cache_v), cache_k, cache_v
