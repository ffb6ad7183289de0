"""Solution to exercise 01 · log π(y|x) of each response, from the model's logits."""

import torch


def sequence_logprobs(logits, tokens, response_mask):
    """Σ_{t>=1} mask[t] · log softmax(logits[t-1])[tokens[t]]: (B, T, V), (B, T), (B, T) -> (B,)."""
    mask = response_mask[:, 1:].bool()                           # which targets are response tokens
    labels = tokens[:, 1:].long().masked_fill(~mask, 0)          # padding ids may be anything
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)     # position t-1 predicts token t
    picked = logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)   # (B, T-1)
    return torch.where(mask, picked, torch.zeros_like(picked)).sum(-1)
