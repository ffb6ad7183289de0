"""Training throughput of the GPT: tokens per second and MFU.

    python bench/throughput.py                       # default + GPT-2-small, eager and compiled
    python bench/throughput.py --configs default --variants eager:float32   # the quick look

One step is pretraining's step (rpo_mini/pretrain.py): forward with targets under autocast,
the finiteness check of the loss, backward, gradient clipping at 1.0 and the project's AdamW,
on random tokens already on the device (data loading is not measured here).

    MFU = flops_per_token(T) x tokens/s / peak,  flops_per_token = 6N + 12·L·T·C  (PaLM, App. B)

The peak is the card's dense data-sheet figure for the precision used (common.GPU_PEAKS); on
the CPU MFU is n/a (no trustworthy peak for a VM) and the achieved TFLOP/s are given instead,
next to what a large matmul reaches on the same threads.

A variant is `mode:precision[:tweaks]`: mode eager or compile (torch.compile of the model),
precision float32, tf32 (float32 with TF32 matmuls, CUDA) or bfloat16 (autocast), tweaks a
`+`-joined subset of `nosync` (skip the per-step finiteness check, which waits for the
device) and `fused` (fused AdamW, CUDA): both measure a change we could make to the loop.
"""

import argparse
import gc
import time

from common import add_args, cpu_gemm_rate, csv, machine, measure, peak_flops, report, setup, table, write_json
import torch

from rpo_mini import runtime, training
from rpo_mini.model import GPT, GPTConfig

# The pipeline's default model (vocabulary and context as the default run's tokenizer and data
# give them, rounded up) and GPT-2 small. batch: documents per step on (cpu, cuda); GPT-2 small
# at 32 x 1024 needs ~21 GiB compiled in bf16 and ~46 GiB eager in fp32 (fits an 80 GB H100).
CONFIGS = {
    "default": {"model": GPTConfig(vocab_size=768, block_size=64, n_layer=4, n_head=4, n_embd=128),
                "batch": (64, 64), "steps": (10, 20), "repeats": (3, 5)},
    "gpt2": {"model": GPTConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768),
             "batch": (1, 32), "steps": (1, 5), "repeats": (2, 3)},
}
DEFAULT_VARIANTS = {"cpu": "eager:float32,compile:float32",
                    "cuda": "eager:float32,eager:bfloat16,compile:bfloat16,compile:bfloat16:nosync+fused"}


def parse_variant(text: str) -> dict:
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0] not in ("eager", "compile") or \
            parts[1] not in ("float32", "tf32", "bfloat16"):
        raise SystemExit(f"bad variant {text!r}: use mode:precision[:tweaks], e.g. compile:bfloat16:nosync")
    tweaks = set(parts[2].split("+")) if len(parts) == 3 else set()
    if tweaks - {"nosync", "fused"}:
        raise SystemExit(f"bad tweaks in {text!r}: choose from nosync, fused")
    return {"name": text, "compile": parts[0] == "compile", "precision": parts[1], "tweaks": tweaks}


def run_one(name: str, variant: dict, device, batch: int, steps: int, repeats: int, warmup: int) -> dict:
    """Time `repeats` windows of `steps` training steps; tokens/s from the median window."""
    mcfg = CONFIGS[name]["model"]
    precision = variant["precision"]
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    row = {"config": name, "variant": variant["name"], "batch": batch, "seq_len": mcfg.block_size}
    if device.type != "cuda" and (precision == "tf32" or "fused" in variant["tweaks"]):
        return row | {"error": "tf32 and fused AdamW are CUDA-only here"}
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.manual_seed(0)
    model = GPT(mcfg).to(device).train()
    opt = training.make_optimizer(model.parameters(), 3e-4, weight_decay=0.1)
    if "fused" in variant["tweaks"]:  # the same AdamW, one kernel per step instead of a few per tensor
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups]
        opt = torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95), fused=True)
    run = torch.compile(model) if variant["compile"] else model
    data = torch.randint(mcfg.vocab_size, (batch, mcfg.block_size + 1), device=device)
    tokens, targets = data[:, :-1], data[:, 1:]
    check = "nosync" not in variant["tweaks"]

    def step():
        with runtime.autocast(device, dtype):
            _, loss = run(tokens, targets)
        if check:
            training.check_finite(loss, 0, "benchmark")  # a host-device sync, as in the loop
        opt.zero_grad(set_to_none=True)
        loss.backward()
        training.grad_norm(model.parameters())  # as the loop: the norm (logged), then the clip
        training.clip_grads(model.parameters(), 1.0)
        opt.step()

    def window():
        for _ in range(steps):
            step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = measure(window, device, warmup=warmup, repeats=repeats)
    tok_s = batch * mcfg.block_size * steps / t["median"]
    flops = model.flops_per_token(mcfg.block_size) * tok_s
    peak, peak_src = peak_flops(device, precision)
    row |= {"params_m": model.num_params() / 1e6, "step_ms": 1e3 * t["median"] / steps,
            "tokens_per_s": tok_s, "tflops": flops / 1e12,
            "peak_tflops": peak / 1e12 if peak else None, "peak_source": peak_src,
            "mfu": flops / peak if peak else None,
            "first_window_s": t["first"], "steps": steps, "repeats": repeats,
            "window_s": t["all"]}
    if device.type == "cuda":
        row["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_args(p)
    p.add_argument("--configs", default="default,gpt2", help="comma-separated: default, gpt2")
    p.add_argument("--variants", default=None, help="comma-separated mode:precision[:tweaks] "
                   f"(default cpu: {DEFAULT_VARIANTS['cpu']}; cuda: {DEFAULT_VARIANTS['cuda']})")
    p.add_argument("--batch", type=int, default=None, help="documents per step (default: per config and device)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default: per config and device)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed windows first (compilation happens here)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds; variants that would start after this are skipped (and say so)")
    args = p.parse_args(argv)

    device = setup(args)
    on_gpu = int(device.type == "cuda")
    variants = [parse_variant(v) for v in csv(args.variants or DEFAULT_VARIANTS.get(device.type, "eager:float32"))]
    rows, start = [], time.perf_counter()
    for name in csv(args.configs):
        if name not in CONFIGS:
            raise SystemExit(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
        c = CONFIGS[name]
        for v in variants:
            t0 = time.perf_counter()
            if args.budget is not None and t0 - start > args.budget:
                rows.append({"config": name, "variant": v["name"], "error": "skipped: over --budget"})
                continue
            try:
                row = run_one(name, v, device, args.batch or c["batch"][on_gpu], args.steps or c["steps"][on_gpu],
                              args.repeats or c["repeats"][on_gpu], args.warmup)
            except Exception as e:  # one failing variant (OOM, a compiler error) must not hide the rest
                row = {"config": name, "variant": v["name"], "error": f"{type(e).__name__}: {str(e)[:300]}"}
            row["wall_s"] = time.perf_counter() - t0
            rows.append(row)
            print(f"  {name} {v['name']}: " + (f"{row['tokens_per_s']:,.0f} tok/s" if "tokens_per_s" in row
                                              else row["error"]) + f" ({row['wall_s']:.0f}s)", flush=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            torch._dynamo.reset()
            if args.json:  # so that a run cut short still leaves what it measured
                write_json(args.json, {"machine": machine(device), "rows": rows, "partial": True})
    torch.backends.cuda.matmul.allow_tf32 = False
    info = machine(device)
    cols = [("config", "config", ""), ("variant", "variant", ""), ("batch", "batch", ""), ("seq_len", "T", ""),
            ("params_m", "params (M)", ".1f"), ("step_ms", "ms/step", ".1f"), ("tokens_per_s", "tokens/s", ",.0f"),
            ("tflops", "TFLOP/s", ".3f"), ("peak_tflops", "peak TFLOP/s", ".3g"), ("mfu", "MFU", ".1%"),
            ("first_window_s", "warm-up s", ".1f")]
    text = table(rows, cols)
    peaks = sorted({r["peak_source"] for r in rows if "peak_source" in r})
    errors = [f"{r['config']} {r['variant']}: {r['error']}" for r in rows if "error" in r]
    text += "\n\nPeak used: " + "; ".join(peaks) + ". FLOPs per token 6N + 12·L·T·C (N without position embeddings)."
    if device.type == "cpu":
        info["gemm_tflops"] = cpu_gemm_rate() / 1e12
        text += (f"\nFor scale on the CPU: a 2048x2048 float32 matmul ran at {info['gemm_tflops']:.3f} TFLOP/s "
                 f"on the same {info['torch_threads']} thread(s), best of 5, after the runs.")
    text += "\nWarm-up s: the first untimed window (torch.compile happens there)."
    if errors:
        text += "\n\nNot run / failed: " + "; ".join(errors)
    report("Training throughput", info, text, args.json, args.md, {"rows": rows})
    return {"machine": info, "rows": rows}


if __name__ == "__main__":
    main()
