"""Look at any checkpoint: `python -m rpo_mini.sample --ckpt out/checkpoints/rpo-s0-....pt -n 5`.

Prints n continuations of each prompt (default: a few test prompts of the checkpoint's world)
with their rewards and whether they are fluent.
"""

import argparse
import os
import sys

import torch

from . import checkpoint, files
from .config import CHECKS, at_least, check
from .runtime import UserError
from .model import GPT, GPTConfig
from .tokenizer import load_encoding
from .worlds import WorldConfig, make_world


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rpo_mini.sample", description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="a base or policy checkpoint written by train.py")
    p.add_argument("--prompt", action="append", help="prompt text (repeatable; default: 3 test prompts)")
    p.add_argument("-n", type=int, default=3, help="continuations per prompt")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--max_new_tokens", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", help="the .tiktoken file (default: the one the checkpoint names)")
    args = p.parse_args(argv)
    try:
        for name, value, rule in (("-n", args.n, at_least(1)), ("--temperature", args.temperature,
                                  CHECKS["collect", "temperature"]), ("--top_k", args.top_k, CHECKS["collect", "top_k"]),
                                  ("--max_new_tokens", args.max_new_tokens, CHECKS["collect", "max_new_tokens"]),
                                  ("--seed", args.seed, CHECKS["run", "seed"])):
            check(name, value, rule)
        if args.prompt is not None and not all(q.strip() for q in args.prompt):
            raise UserError("--prompt is empty: give the text to continue, like --prompt 'the cake was'")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        ckpt = checkpoint.load(args.ckpt)
        if not isinstance(ckpt, dict) or not {"model_config", "model", "tokenizer", "world"} <= set(ckpt):
            raise UserError("it is not a base or policy checkpoint (a value network or training state?)")
        model = GPT(GPTConfig(**ckpt["model_config"]))
        checkpoint.load_state_dict(model, ckpt["model"], args.ckpt)
        tokenizer = args.tokenizer or ckpt["tokenizer"]
        if not os.path.exists(tokenizer):
            raise UserError(f"its tokenizer {tokenizer} does not exist (pass the .tiktoken file with --tokenizer)")
        enc = load_encoding(tokenizer)
        if enc.n_vocab != model.config.vocab_size or ckpt.get("tokenizer_sha256", files.digest(tokenizer)) != \
                files.digest(tokenizer):
            raise UserError(f"the tokenizer {tokenizer} is not the one this model was trained with: pass that one "
                            f"with --tokenizer, or leave --tokenizer out")
        world = make_world(WorldConfig(**ckpt["world"]))
        prompts = args.prompt or world.test_prompts[:3]
        room = model.config.block_size - max(len(enc.encode_ordinary(q)) for q in prompts)
        if room < 1:
            raise UserError(f"--prompt is longer than the model's context ({model.config.block_size} tokens)")
    except UserError as e:
        print(f"error: cannot use {args.ckpt}: {e}", file=sys.stderr)
        return 2
    model.eval()
    max_new = min(args.max_new_tokens, room)
    g = torch.Generator().manual_seed(args.seed)
    for prompt in prompts:
        ids = enc.encode_ordinary(prompt)
        new = model.generate([ids] * args.n, max_new, enc.eot_token, args.temperature, args.top_k or None, g)
        print(f"\n{prompt}")
        for row in new.tolist():
            text = enc.decode([t for t in row if t != enc.eot_token])
            scores = world.score(prompt, text)
            shown = ", ".join(f"{k} {v:+.2f}" for k, v in scores.items())
            print(f"  …{text}\n      [{shown}; {'fluent' if world.is_fluent(prompt, text) else 'NOT fluent'}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
