"""Tests for exercise 02: against causal attention recomputed on the whole sequence, in float64."""

import math

import torch

B, T, D = 2, 6, 4


def full_causal_attention(Q, K, V, scale=True):
    """Every position at once: (B, T, D) each -> (B, T, D), keys after the query masked out."""
    scores = Q @ K.transpose(1, 2) / (math.sqrt(Q.shape[-1]) if scale else 1.0)
    future = torch.ones(Q.shape[1], Q.shape[1], dtype=torch.bool).triu(1)
    return torch.softmax(scores.masked_fill(future, -math.inf), dim=-1) @ V


def sequence(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, D, generator=g, dtype=torch.float64) for _ in range(3)]


def empty():
    return torch.zeros(B, 0, D, dtype=torch.float64)


def test_first_step_returns_its_own_value(ex):
    q, k, v = (x[:, 0] for x in sequence())
    out, ck, cv = ex.attend_step(q, k, v, empty(), empty())
    assert ck.shape == cv.shape == (B, 1, D), (
        f"after one step the cache holds one position, (B, 1, D); got {tuple(ck.shape)}, {tuple(cv.shape)}")
    attended_nothing = not torch.isfinite(out).all() or torch.allclose(out, torch.zeros_like(out))
    assert torch.allclose(out, v, atol=1e-12), (
        "with an empty cache the only key is the token's own, so the output is v_new exactly: "
        + ("append the new key and value before attending" if attended_nothing
           else "one key gets softmax weight 1 only if the softmax runs over the keys, not the batch"))


def test_cache_appends_at_the_end(ex):
    Q, K, V = sequence(1)
    q, k, v = Q[:, 3], K[:, 3], V[:, 3]
    out, ck, cv = ex.attend_step(q, k, v, K[:, :3].clone(), V[:, :3].clone())
    assert ck.shape == cv.shape == (B, 4, D), f"the cache must grow by one position: got {tuple(ck.shape)}"
    assert torch.equal(ck[:, :3], K[:, :3]) and torch.equal(cv[:, :3], V[:, :3]), (
        "the earlier keys/values must come back unchanged, in order")
    assert torch.equal(ck[:, 3], k) and torch.equal(cv[:, 3], v), (
        "the new key and value go at the end of the cache (position T), keys with keys, values with values")


def test_steps_equal_the_full_recompute(ex):
    Q, K, V = sequence(2)
    want = full_causal_attention(Q, K, V)
    unscaled = full_causal_attention(Q, K, V, scale=False)
    ck, cv = empty(), empty()
    for t in range(T):
        out, ck, cv = ex.attend_step(Q[:, t], K[:, t], V[:, t], ck, cv)
        assert out.shape == (B, D), f"step {t}: expected out of shape (B, D) = {(B, D)}, got {tuple(out.shape)}"
        hint = ("you forgot the 1/√D scale of the scores" if torch.allclose(out, unscaled[:, t], atol=1e-9)
                else "check the 1/√D scale and that the softmax runs over the keys (the T + 1 cached positions)")
        assert torch.allclose(out, want[:, t], atol=1e-12), f"step {t} differs from full causal attention: {hint}"


def test_batch_rows_do_not_mix(ex):
    Q, K, V = sequence(3)
    out, _, _ = ex.attend_step(Q[:, 2], K[:, 2], V[:, 2], K[:, :2].clone(), V[:, :2].clone())
    K2, V2 = K.clone(), V.clone()
    K2[1], V2[1] = -K2[1], 10 * V2[1]   # change row 1 only
    out2, _, _ = ex.attend_step(Q[:, 2], K2[:, 2], V2[:, 2], K2[:, :2].clone(), V2[:, :2].clone())
    assert torch.allclose(out[0], out2[0], atol=1e-12), (
        "changing batch row 1 changed row 0: the softmax must run over the keys of each row, not over the batch")
