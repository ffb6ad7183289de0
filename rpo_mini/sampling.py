"""The model in the loop: batched sampling of responses, and teacher-forced response log-probs.

Collection, alignment and evaluation all need these two; they live here so that none of those
stages imports another.
"""

import contextlib

import torch

from .data import collate
from .losses import sequence_logprobs


@torch.no_grad()
def sample_responses(model, prompt_tokens: list, eot: int, max_new_tokens: int, generator,
                     temperature=1.0, top_k=0, batch_size=256, autocast=contextlib.nullcontext):
    """Sample one response per entry of `prompt_tokens`.

    Returns (responses, logps): token lists that end with `eot` (unless cut off at
    max_new_tokens) and the summed log-prob of each under the sampling distribution."""
    responses, logps = [], []
    for start in range(0, len(prompt_tokens), batch_size):
        chunk = prompt_tokens[start:start + batch_size]
        with autocast():
            new, lp = model.generate(chunk, max_new_tokens, eot, temperature=temperature,
                                     top_k=top_k or None, generator=generator, return_logprobs=True)
        new, lp = new.cpu(), lp.float().sum(1).cpu()
        for row, total in zip(new.tolist(), lp.tolist()):
            n = row.index(eot) + 1 if eot in row else len(row)
            responses.append(row[:n])
            logps.append(total)
    return responses, logps


@torch.no_grad()
def response_logprobs(model, prompts: list, responses: list, eot: int, length_normalize=False,
                      batch_size=256, autocast=contextlib.nullcontext) -> torch.Tensor:
    """log π(response | prompt) for each pair, teacher-forced: (N,) float32 on the CPU."""
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(prompts), batch_size):
        tokens, mask, _ = collate(prompts[s:s + batch_size], responses[s:s + batch_size], eot)
        tokens, mask = tokens.to(device), mask.to(device)
        with autocast():
            logits = model(tokens)
        out.append(sequence_logprobs(logits, tokens, mask, length_normalize, model.grammar).float().cpu())
    return torch.cat(out)
