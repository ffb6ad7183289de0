"""Batched sampling speed: new tokens per second with the KV cache and with full recompute.

    python bench/sampling.py                 # 64 prompts, 16 / 64 / 256 new tokens
    python bench/sampling.py --lengths 64 --repeats 3

`GPT.generate(..., use_cache=True)` runs the prompt once, then one token per step against
cached keys and values; `use_cache=False` recomputes the whole sequence at every step, so
its cost grows with the square of the length. The model has the default pipeline's size
(4 layers, 4 heads, 128 wide, 768 tokens), randomly initialised: its samples are noise, which
is fine for timing. generate() stops once every row has produced end-of-text; a random model
almost never does, and every call is checked to have produced the full length, so both paths
do the same amount of work.

Target: the cache at least 5x faster than recompute at 64 new tokens on the CPU,
and the gap growing with length.
"""

import argparse

from common import add_args, csv, machine, measure, report, setup, table
import torch

from rpo_mini import runtime
from rpo_mini.model import GPT, GPTConfig


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_args(p)
    p.add_argument("--dtype", default="auto", help="auto (bf16 autocast on capable GPUs), float32, bfloat16")
    p.add_argument("--batch", type=int, default=64, help="prompts sampled together")
    p.add_argument("--prompt-len", type=int, default=8, help="tokens per prompt (the default world's are ~6-10)")
    p.add_argument("--lengths", default="16,64,256", help="new tokens per call, comma-separated")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed calls per path: at every length on a GPU, at the first on a CPU")
    p.add_argument("--max-seconds", type=float, default=20.0,
                   help="stop repeating a measurement once its calls add up to this (at least one runs)")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--vocab", type=int, default=768)
    args = p.parse_args(argv)

    device = setup(args)
    dtype = runtime.pick_dtype(device, args.dtype)
    lengths = [int(n) for n in csv(args.lengths)]
    cfg = GPTConfig(vocab_size=args.vocab, block_size=args.prompt_len + max(lengths),
                    n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    torch.manual_seed(0)
    model = GPT(cfg).to(device).eval()
    eot = cfg.vocab_size - 1  # never in a prompt; a random model samples it with p ~ 1/768 per token
    prompts = torch.randint(eot, (args.batch, args.prompt_len)).tolist()
    gen = torch.Generator(device=device)

    rows = []
    for n in lengths:
        row = {"new_tokens": n, "batch": args.batch, "prompt_len": args.prompt_len}
        for use_cache, key in ((True, "cache"), (False, "recompute")):
            short = []

            def call():
                gen.manual_seed(0)
                with runtime.autocast(device, dtype):
                    out = model.generate(prompts, n, eot, generator=gen, use_cache=use_cache)
                short.append(out.shape[1] < n)

            # Warm up at every length on a GPU: a new shape there can cost seconds the first time
            # (cuDNN attention builds a plan per shape: 7 s at 64 tokens, 18 s at 256 on an H200).
            # On the CPU once per path is enough, and slow calls are repeated only until
            # --max-seconds is spent (recompute at 256 tokens takes ~100 s per call on 2 cores).
            warm = args.warmup if (n == lengths[0] or device.type == "cuda") else 0
            t = measure(call, device, warmup=warm, repeats=args.repeats, max_seconds=args.max_seconds)
            if any(short):
                raise RuntimeError(f"generate() stopped before {n} tokens: the timing would not be fair")
            row[f"{key}_s"] = t["median"]
            row[f"{key}_tok_s"] = args.batch * n / t["median"]
            row[f"{key}_all_s"] = t["all"]  # every timed call: how many ran, and their spread
            print(f"  {n} new tokens, {key}: {row[f'{key}_tok_s']:,.0f} tok/s", flush=True)
        row["speedup"] = row["recompute_s"] / row["cache_s"]
        rows.append(row)

    info = machine(device) | {"dtype": str(dtype).replace("torch.", ""), "model": vars(cfg)}
    cols = [("new_tokens", "new tokens", ""), ("batch", "batch", ""),
            ("cache_tok_s", "KV cache tok/s", ",.0f"), ("recompute_tok_s", "recompute tok/s", ",.0f"),
            ("cache_s", "cache s/call", ".3f"), ("recompute_s", "recompute s/call", ".3f"),
            ("speedup", "speed-up", ".1f")]
    text = table(rows, cols) + (f"\n\nModel {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, "
                                f"vocabulary {cfg.vocab_size}, random weights; prompts of {args.prompt_len} "
                                f"tokens; {info['dtype']}; median of up to {args.repeats} calls "
                                f"(fewer once a measurement passes {args.max_seconds:g} s; each row's JSON lists them).")
    report("Sampling: KV cache vs full recompute", info, text, args.json, args.md, {"rows": rows})
    return {"machine": info, "rows": rows}


if __name__ == "__main__":
    main()
