"""Tests for exercise 01: expected values worked by hand, or by the definition as a Python loop."""

import math

import pytest
import torch

LOG_QUARTER = math.log(0.25)


def by_definition(logits, tokens, mask):
    """Σ_t mask[t] · log softmax(logits[t-1])[tokens[t]], one token at a time, in Python floats."""
    out = []
    for b in range(tokens.shape[0]):
        total = 0.0
        for t in range(1, tokens.shape[1]):
            if mask[b, t]:
                row = [float(v) for v in logits[b, t - 1]]
                top = max(row)
                total += row[int(tokens[b, t])] - top - math.log(sum(math.exp(v - top) for v in row))
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


@pytest.fixture
def batch():
    """3 rows of length 8 over a vocabulary of 6; id 5 is end-of-text (and padding)."""
    logits = torch.randn(3, 8, 6, generator=torch.Generator().manual_seed(0))
    tokens = torch.tensor([[1, 2, 3, 4, 5, 5, 5, 5],    # prompt 2, response 2 + eot, padding 3
                           [2, 2, 1, 0, 3, 2, 4, 5],    # prompt 3, response 4 + eot, no padding
                           [4, 1, 0, 3, 5, 5, 5, 5]])   # prompt 4, eot alone, padding 3
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 0],
                         [0, 0, 0, 1, 1, 1, 1, 1],
                         [0, 0, 0, 0, 1, 0, 0, 0]])
    return logits, tokens, mask


def test_uniform_logits_score_the_response_and_end_of_text(ex):
    # Uniform logits over V = 4: each scored token adds log(1/4). By hand: 2 response tokens
    # + end-of-text = 3 tokens, so 3 log(1/4); the 2 prompt tokens and 2 pads add nothing.
    tokens = torch.tensor([[0, 1, 2, 2, 3, 3, 3]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0]])
    got = float(ex.sequence_logprobs(torch.zeros(1, 7, 4), tokens, mask)[0])
    n = got / LOG_QUARTER
    assert got == pytest.approx(3 * LOG_QUARTER, rel=1e-6), (
        f"expected 3·log(1/4) (2 response tokens + end-of-text), got {n:.2f} tokens' worth: "
        + ("you score prompt or padding tokens" if n > 3 else "the end-of-text token is in the mask and counts"))


def test_logits_at_t_minus_1_predict_token_t(ex, batch):
    # Make the logit at t-1 for tokens[t] huge: every response token becomes near-certain and
    # log π(y|x) ≈ 0. Without the shift, logits[t] scores tokens[t] and the sum stays far below 0.
    logits, tokens, mask = batch
    logits = logits.clone()
    for b in range(3):
        for t in range(1, 8):
            logits[b, t - 1, tokens[b, t]] = 30.0
    got = ex.sequence_logprobs(logits, tokens, mask)
    assert got.shape == (3,), f"expected one value per row, shape (3,), got {tuple(got.shape)}"
    assert got.abs().max() < 1e-6, (
        f"got {got.tolist()}, expected ≈ 0: did you forget the shift by one? logits[:, t-1] predict tokens[:, t]")


def test_prompt_logits_and_padding_ids_are_ignored(ex, batch):
    logits, tokens, mask = batch
    before = ex.sequence_logprobs(logits, tokens, mask)
    # Scramble every logit that does not predict a response token, and make the pads -1.
    predicts_response = torch.zeros(3, 8, dtype=torch.bool)
    predicts_response[:, :-1] = mask[:, 1:].bool()
    noisy = logits.clone()
    noisy[~predicts_response] = 100 * torch.randn(int((~predicts_response).sum()), 6)
    padded = tokens.clone()
    padded[0, 5:] = padded[2, 5:] = -1
    try:
        after = ex.sequence_logprobs(noisy, padded, mask)
    except (RuntimeError, IndexError) as e:
        pytest.fail(f"a padding id of -1 crashed your code ({type(e).__name__}): replace masked labels "
                    "(e.g. by 0) before gathering")
    assert torch.allclose(before, after, atol=1e-6), (
        "changing logits that predict prompt or padding tokens changed the result: your log-probs "
        "include the prompt tokens or the padding")


def test_matches_the_definition(ex, batch):
    logits, tokens, mask = batch
    got = ex.sequence_logprobs(logits, tokens, mask)
    want = by_definition(logits, tokens, mask)
    assert got.shape == (3,), f"expected one value per row, shape (3,), got {tuple(got.shape)}"
    assert torch.allclose(got.double(), want, atol=1e-5), (
        f"got {got.tolist()}, the token-by-token definition gives {want.tolist()}: are the labels and the "
        "mask both shifted (tokens[:, 1:], response_mask[:, 1:]), the log_softmax over the vocabulary?")
