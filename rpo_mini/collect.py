"""Collection: sample K responses per training prompt from π_ref and score them.

The records it returns are the single-trajectory dataset (one JSONL line each, see data.py):
a prompt, one response, its reward and reward components, log π_ref of the response, and for
off-policy data from a generator whose probabilities the world knows, log μ of the response.
"""

import contextlib
import random

import torch

from .sampling import response_logprobs, rollout, score


def collect(model, enc, world, cfg, seed: int, autocast=contextlib.nullcontext) -> list[dict]:
    """The single-trajectory dataset as a list of JSONL-ready records (K per training prompt)."""
    eot = enc.eot_token
    prompts = world.train_prompts[:cfg.n_prompts or None]
    if cfg.off_policy:
        rng = random.Random(seed)
        owners = [p for p in prompts for _ in range(cfg.k)]
        prompt_toks = [enc.encode_ordinary(p) for p in owners]
        texts = [world.sample_response(p, rng, off_policy=True) for p in owners]
        # cut like sampling cuts: the off-policy generator writes longer reviews than the corpus
        responses = [(enc.encode_ordinary(t) + [eot])[:cfg.max_new_tokens] for t in texts]
        ref_logps = response_logprobs(model, prompt_toks, responses, eot, autocast=autocast).tolist()
        prompt_ids = [i for i in range(len(prompts)) for _ in range(cfg.k)]
        texts, scores, fluent = score(enc, world, owners, responses)
    else:
        g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        r = rollout(model, enc, world, prompts, cfg.k, cfg.max_new_tokens, g, cfg.temperature, cfg.top_k,
                    autocast=autocast)
        prompt_ids, owners, prompt_toks, responses = r.prompt_ids, r.prompts, r.prompt_tokens, r.response_tokens
        texts, scores, fluent, ref_logps = r.texts, r.scores, r.fluent, r.logps
        if cfg.temperature != 1.0 or cfg.top_k:  # the sampling distribution was not π_ref itself
            ref_logps = response_logprobs(model, prompt_toks, responses, eot, autocast=autocast).tolist()
    reward_name = cfg.reward or world.default_reward
    if reward_name not in scores[0]:
        raise ValueError(f"--reward {reward_name!r} is not a reward of the {world.name} world; "
                         f"choose from {', '.join(scores[0])}")
    return [{"prompt_id": i, "prompt": p, "response": text, "prompt_tokens": p_tok, "response_tokens": r_tok,
             "reward": sc[reward_name], "rewards": sc, "ref_logp": lp, "fluent": ok}
            | ({"behavior_logp": world.off_policy_logprob(p, text)}
               if cfg.off_policy and world.off_policy_logprob is not None else {})
            for i, p, p_tok, r_tok, text, sc, ok, lp in zip(prompt_ids, owners, prompt_toks, responses, texts,
                                                             scores, fluent, ref_logps)]
