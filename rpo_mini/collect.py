"""Collection: sample K responses per training prompt from π_ref, score them, write the dataset.

Also home of the two model-in-the-loop helpers every later stage uses: batched sampling of
responses for a list of prompts, and teacher-forced log-probs of given responses.
"""

import contextlib
import random

import torch

from .config import CollectConfig
from .data import collate
from .losses import sequence_logprobs


@torch.no_grad()
def sample_responses(model, prompt_tokens: list, eot: int, max_new_tokens: int, generator,
                     temperature=1.0, top_k=0, batch_size=256, autocast=contextlib.nullcontext):
    """Sample one response per entry of `prompt_tokens`.

    Returns (responses, logps): token lists that end with `eot` (unless cut off at
    max_new_tokens) and the summed log-prob of each under the sampling distribution."""
    device = next(model.parameters()).device
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
        out.append(sequence_logprobs(logits, tokens, mask, length_normalize).float().cpu())
    return torch.cat(out)


def collect(model, enc, world, cfg: CollectConfig, seed: int, autocast=contextlib.nullcontext) -> list[dict]:
    """The single-trajectory dataset as a list of JSONL-ready records (K per training prompt)."""
    eot = enc.eot_token
    prompts = world.train_prompts[:cfg.n_prompts or None]
    prompt_ids = [i for i in range(len(prompts)) for _ in range(cfg.k)]
    prompt_toks = [enc.encode_ordinary(prompts[i]) for i in prompt_ids]
    if cfg.off_policy:
        rng = random.Random(seed)
        texts = [world.sample_response(prompts[i], rng, off_policy=True) for i in prompt_ids]
        # cut like sampling cuts: the off-policy generator writes longer reviews than the corpus
        responses = [(enc.encode_ordinary(t) + [eot])[:cfg.max_new_tokens] for t in texts]
        ref_logps = response_logprobs(model, prompt_toks, responses, eot, autocast=autocast).tolist()
    else:
        g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        responses, ref_logps = sample_responses(model, prompt_toks, eot, cfg.max_new_tokens, g,
                                                cfg.temperature, cfg.top_k, autocast=autocast)
        if cfg.temperature != 1.0 or cfg.top_k:  # the sampling distribution was not π_ref itself
            ref_logps = response_logprobs(model, prompt_toks, responses, eot, autocast=autocast).tolist()
    reward_name = cfg.reward or world.default_reward
    records = []
    for i, p_tok, r_tok, lp in zip(prompt_ids, prompt_toks, responses, ref_logps):
        text = enc.decode([t for t in r_tok if t != eot])
        scores = world.score(prompts[i], text)
        if reward_name not in scores:
            raise ValueError(f"--reward {reward_name!r} is not a reward of the {world.name} world; "
                             f"choose from {', '.join(scores)}")
        records.append({"prompt_id": i, "prompt": prompts[i], "response": text,
                        "prompt_tokens": p_tok, "response_tokens": r_tok,
                        "reward": scores[reward_name], "rewards": scores, "ref_logp": lp,
                        "fluent": bool(text) and world.is_fluent(prompts[i], text)})
    return records
