"""python -m experiments NAME|all|writeup — the command line (see `experiments/__init__.py`)."""

import argparse
import json
import os
import sys
import time

from rpo_mini.config import parse_seeds
from rpo_mini.runtime import UserError, pick_device

from . import EXPERIMENTS
from .runner import Ctx, run_experiment
from .tables import writeup

FINDINGS = "findings"             # the committed results
SCRATCH = "out/findings-scratch"  # where any other run writes, unless --out says where


def destination(name: str, quick: bool, seeds: list, fixed_data: bool) -> tuple[str, str | None]:
    """Where NAME.json and NAME.png go without --out: findings/ for a full run of the design the
    committed findings/NAME.json records (its seeds and data design; any design for an experiment
    with none committed), else the scratch folder; and why not findings/ (None when it is)."""
    if quick:
        return SCRATCH, "--quick is a smoke test of the code"
    path = os.path.join(FINDINGS, f"{name}.json")
    if not os.path.exists(path):
        return FINDINGS, None
    try:
        with open(path) as f:
            committed = json.load(f)
        design = (committed["seeds"], bool(committed.get("fixed_data")))
    except (OSError, ValueError, KeyError, TypeError):
        return SCRATCH, f"{path} cannot be read"
    if (seeds, fixed_data) != design:
        return SCRATCH, f"{path} ran seeds {','.join(map(str, design[0]))}{' with --fixed-data' if design[1] else ''}"
    return FINDINGS, None


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m experiments",
                                description="Test the RPO paper's claims on the toy worlds (FINDINGS.md).")
    p.add_argument("name", choices=(*EXPERIMENTS, "all", "writeup"))
    p.add_argument("--quick", action="store_true",
                   help="tiny config, 2 seeds, tiny grids, --fixed-data: a smoke test of the code, not a result")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2,3,4; quick: 0,1)")
    p.add_argument("--device", default="auto", help="auto (cuda → mps → cpu), cpu, cuda, ...")
    p.add_argument("--out", default=None,
                   help=f"where NAME.json and NAME.png go (default: {FINDINGS}/ for a full run of the committed "
                        f"design, else {SCRATCH}/; writeup reads {FINDINGS}/)")
    p.add_argument("--cache", default=None, help="the stages' cache folder (default out/experiments[-quick])")
    p.add_argument("--workers", type=int, default=1, help="parallel processes for independent jobs (at least 1)")
    p.add_argument("--fixed-data", action="store_true",
                   help="one world/base/dataset (the first seed's); seeds vary alignment and evaluation only")
    p.add_argument("--findings", default="FINDINGS.md", help="writeup: fill the tables between its markers")
    p.add_argument("--plan", action="store_true",
                   help="print each experiment's job count (jobs already cached by an earlier experiment "
                        "of the same run are counted again) and run nothing")
    args = p.parse_args(argv)
    args.seeds = parse_seeds(args.seeds or ("0,1" if args.quick else "0,1,2,3,4"))
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    pick_device(args.device)  # an unknown or absent device is refused now, not in a worker
    return args


def main(argv=None) -> int:
    try:
        args = parse(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.name == "writeup":
        print(writeup(EXPERIMENTS, args.out or FINDINGS, args.findings))
        return 0
    fixed_data = args.fixed_data or args.quick
    ctx = Ctx(quick=args.quick, seeds=args.seeds, device=args.device, workers=args.workers,
              cache=args.cache or ("out/experiments-quick" if args.quick else "out/experiments"),
              fixed_data=fixed_data, plan=[] if args.plan else None,
              command="python -m experiments " + " ".join(argv if argv is not None else sys.argv[1:]))
    t0 = time.perf_counter()
    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    try:
        total = 0
        for name in names:
            out, why = (args.out, None) if args.out else destination(name, args.quick, args.seeds, fixed_data)
            if why and not args.plan:
                print(f"{name}: writing to {out}/, not {FINDINGS}/ ({why}); --out {FINDINGS} would replace the "
                      f"committed result", flush=True)
            total += run_experiment(ctx, EXPERIMENTS[name], out)["jobs"]
    finally:
        ctx.close()
    print(f"{'planned' if args.plan else 'done'}: {', '.join(names)}: {total} jobs"
          f"{'' if args.plan else f' in {time.perf_counter() - t0:.1f}s'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
