"""Exercise 02 · one attention step with a key/value cache equals the full recompute.

Causal self-attention at position t, for one head of width D, reads

    out_t = Σ_{s<=t} softmax_s(q_t · k_s / √D) · v_s.

When the model samples a response it needs out_t for one new position at a time. Recomputing
the whole sequence each step redoes the keys and values of every earlier token, which never
change: k_s and v_s depend on tokens <= s only (the causal mask in every layer below sees to
that). So keep them in a cache, and at step t compute only the new token's q_t, k_t, v_t,
append k_t, v_t, and attend with q_t over the cache. One query at the newest position has
every key in its past: no mask is needed. A step costs O(T·D) instead of O(T²·D).

Notebook 01, section 4 (sampling from the base model π_ref). The library's cache is
`rpo_mini.model.KVCache` (all layers and heads at once, preallocated); `GPT.generate` uses it,
and `use_cache=False` recomputes the whole sequence instead.
"""

import torch


def attend_step(q, k_new, v_new, cache_k, cache_v):
    """One single-head causal attention step that appends to a cache and attends over it.

    q, k_new, v_new (B, D): the newest token's query, key and value
    cache_k, cache_v (B, T, D): the keys and values of the T earlier tokens (T may be 0)
    Returns (out, cache_k, cache_v) with out (B, D) and the caches (B, T + 1, D):
        K = [cache_k; k_new],  V = [cache_v; v_new]      (the new position last, along T)
        out = softmax(q Kᵀ / √D) V                        (softmax over the T + 1 keys)

    Why: this is how sampling avoids redoing the whole prefix at every new token.
    Hint: `torch.cat(..., dim=1)` with k_new[:, None]; `torch.einsum("bd,btd->bt", q, K)` gives
    the (B, T + 1) scores.
    """
    raise NotImplementedError("exercise 02: attend_step")
