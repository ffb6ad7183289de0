"""Online against offline alignment: milliseconds per step when the batch is sampled afresh from
the policy being trained (RLOO, A*-PO, online RPO) against a batch drawn from π_ref's dataset
(RPO), at the same batch size; and generations (responses sampled and scored) per second.

    python bench/online.py                          # the reviews world at the default sizes
    python bench/online.py --world arithmetic --threads 1

An online step is a rollout (KV-cached sampling of batch_size responses, decoding, scoring),
π_ref's log-probs of them, then the same forward, backward and update an offline step runs. The
base model and dataset are built (or read from --out's cache) first, as `python train.py` would.

Target: an online step at most 2.5× an offline one.
"""

import argparse
import dataclasses

from common import add_args, csv, machine, measure, report, setup, table

from rpo_mini import stages
from rpo_mini.align import Alignment
from rpo_mini.config import parse_config


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_args(p)
    p.add_argument("--world", default="reviews", choices=("reviews", "arithmetic"))
    p.add_argument("--quick", action="store_true", help="train.py's --quick sizes (a smoke run)")
    p.add_argument("--objectives", default="rpo,rpo-online,rloo,apo", help="rpo-online: RPO with --online")
    p.add_argument("--steps", type=int, default=10, help="timed steps per objective (after 2 warm-up steps)")
    p.add_argument("--out", default="out", help="where the base model and dataset are cached")
    args = p.parse_args(argv)

    device = setup(args)
    cfg = parse_config(["--world", args.world, "--out", args.out, "--device", str(device)]
                       + (["--quick"] if args.quick else []))
    m = stages.materials(cfg)
    fresh = stages.fresh_sampling(m.world, m.tok, cfg.collect)
    rows = []
    for name in csv(args.objectives):
        objective, online = name.removesuffix("-online"), name.endswith("-online")
        acfg = dataclasses.replace(cfg.align, steps=args.steps + 2, warmup=0, online=online)
        a = Alignment(objective, m.base.value, m.data.value, acfg, acfg.lr_for(objective), acfg.tau_for(objective),
                      0, m.tok.value.eot_token, m.ctx.autocast, fresh=fresh)
        t = measure(lambda: a.train(until=a.loop.step + 1, log=lambda *_: None), device, warmup=2,
                    repeats=args.steps)
        per_step = a.history["train"][-1].get("generations", 0)
        rows.append({"objective": name, "fresh": bool(a.fresh), "ms_per_step": 1e3 * t["median"],
                     "generations_per_step": per_step, "generations_per_s": per_step / t["median"]})
        print(f"  {name}: {rows[-1]['ms_per_step']:.1f} ms/step", flush=True)
    offline = next((r["ms_per_step"] for r in rows if not r["fresh"]), None)
    for r in rows:
        r["vs_offline"] = r["ms_per_step"] / offline if offline else None
    info = machine(device)
    cols = [("objective", "objective", "s"), ("ms_per_step", "ms/step (median)", ".1f"),
            ("vs_offline", "× offline step", ".2f"), ("generations_per_step", "generations/step", "d"),
            ("generations_per_s", "generations/s", ",.0f")]
    text = table(rows, cols) + (f"\n\nWorld `{args.world}`{' (--quick)' if args.quick else ''}, batch size "
                                f"{cfg.align.batch_size}, group size {cfg.align.group_size} (A*-PO: 1 per prompt), "
                                f"responses up to {cfg.collect.max_new_tokens} tokens; median of {args.steps} steps "
                                f"after 2 warm-up steps, each objective at its own learning rate and τ.")
    return report("Online vs offline alignment step", info, text, args.json, args.md, {"rows": rows})


if __name__ == "__main__":
    main()
