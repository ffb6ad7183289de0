"""The model in the loop: rollouts (K scored responses per prompt from a given policy), batched
sampling, and teacher-forced response log-probs.

Collection (π_ref's rollout, saved), online alignment (the current policy's, every step) and
evaluation (each policy's, on held-out prompts) all sample and score through `rollout`; it lives
here so that none of those stages imports another.
"""

import contextlib
from dataclasses import dataclass

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


@dataclass
class Rollout:
    """Scored samples: `k` consecutive ones per prompt, in the order of the prompts given."""
    prompt_ids: list       # (N,) which of the prompts each sample answers (0..P-1)
    prompts: list          # N prompt strings (the prompt of each sample)
    prompt_tokens: list    # N token lists
    response_tokens: list  # N token lists, end-of-text last unless cut at max_new_tokens
    texts: list            # N decoded responses
    scores: list           # N dicts: every reward of the world
    fluent: list           # N booleans: non-empty and in the world's language
    logps: list            # N summed log-probs under the sampling distribution
    k: int


def score(enc, world, prompts: list, responses: list) -> tuple[list, list, list]:
    """Decode each response (end-of-text dropped) and score it: (texts, scores, fluent)."""
    texts = [enc.decode([t for t in r if t != enc.eot_token]) for r in responses]
    scores = [world.score(p, t) for p, t in zip(prompts, texts)]
    fluent = [bool(t) and world.is_fluent(p, t) for p, t in zip(prompts, texts)]
    return texts, scores, fluent


def rollout(model, enc, world, prompts: list, k: int, max_new_tokens: int, generator, temperature=1.0,
            top_k=0, autocast=contextlib.nullcontext) -> Rollout:
    """k responses per prompt from `model` (KV-cached, batched across prompts, within the world's
    response grammar when the model has one), decoded and scored."""
    prompt_ids = [i for i in range(len(prompts)) for _ in range(k)]
    owners = [prompts[i] for i in prompt_ids]
    prompt_toks = [enc.encode_ordinary(p) for p in owners]
    responses, logps = sample_responses(model, prompt_toks, enc.eot_token, max_new_tokens, generator,
                                        temperature, top_k, autocast=autocast)
    texts, scores, fluent = score(enc, world, owners, responses)
    return Rollout(prompt_ids, owners, prompt_toks, responses, texts, scores, fluent, logps, k)
