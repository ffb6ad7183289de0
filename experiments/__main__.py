"""python -m experiments NAME|all|writeup — the command line (see `experiments/__init__.py`)."""

import argparse
import sys
import time

from . import EXPERIMENTS
from .runner import Ctx, run_experiment
from .tables import writeup


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments",
                                description="Test the RPO paper's claims on the toy worlds (FINDINGS.md).")
    p.add_argument("name", choices=(*EXPERIMENTS, "all", "writeup"))
    p.add_argument("--quick", action="store_true",
                   help="tiny config, 2 seeds, tiny grids, --fixed-data: a smoke test of the code, not a result")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2,3,4; quick: 0,1)")
    p.add_argument("--device", default="auto", help="auto (cuda → mps → cpu), cpu, cuda, ...")
    p.add_argument("--out", default="findings", help="where NAME.json and NAME.png go")
    p.add_argument("--cache", default=None, help="the stages' cache folder (default out/experiments[-quick])")
    p.add_argument("--workers", type=int, default=1, help="parallel processes for independent jobs")
    p.add_argument("--fixed-data", action="store_true",
                   help="one world/base/dataset (the first seed's); seeds vary alignment and evaluation only")
    p.add_argument("--findings", default="FINDINGS.md", help="writeup: fill the tables between its markers")
    p.add_argument("--plan", action="store_true",
                   help="print each experiment's job count (jobs already cached by an earlier experiment "
                        "of the same run are counted again) and run nothing")
    args = p.parse_args(argv)
    if args.name == "writeup":
        print(writeup(EXPERIMENTS, args.out, args.findings))
        return 0
    seeds = [int(s) for s in (args.seeds or ("0,1" if args.quick else "0,1,2,3,4")).split(",") if s.strip()]
    ctx = Ctx(quick=args.quick, seeds=seeds, device=args.device, out=args.out, workers=max(1, args.workers),
              cache=args.cache or ("out/experiments-quick" if args.quick else "out/experiments"),
              fixed_data=args.fixed_data or args.quick, plan=[] if args.plan else None,
              command="python -m experiments " + " ".join(argv if argv is not None else sys.argv[1:]))
    t0 = time.perf_counter()
    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    try:
        total = sum(run_experiment(ctx, EXPERIMENTS[n])["jobs"] for n in names)
    finally:
        ctx.close()
    print(f"{'planned' if args.plan else 'done'}: {', '.join(names)}: {total} jobs"
          f"{'' if args.plan else f' in {time.perf_counter() - t0:.1f}s'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
