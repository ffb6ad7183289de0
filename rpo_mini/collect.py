"""Collection: sample K responses per training prompt from π_ref and score them.

The records it returns are the single-trajectory dataset (one JSONL line each, see data.py):
a prompt, one response, its reward and reward components, log π_ref of the response, and for
off-policy data from a generator whose probabilities the world knows, log μ of the response.
"""

import contextlib
import random

import torch

from .sampling import response_logprobs, sample_responses


def collect(model, enc, world, cfg, seed: int, autocast=contextlib.nullcontext) -> list[dict]:
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
                        "fluent": bool(text) and world.is_fluent(prompts[i], text)}
                       | ({"behavior_logp": world.off_policy_logprob(prompts[i], text)}
                          if cfg.off_policy and world.off_policy_logprob is not None else {}))
    return records
