"""Wall time of `python train.py`, default and --quick, stage by stage.

    python bench/pipeline.py                 # --quick, then the default run (a few minutes on a CPU)
    python bench/pipeline.py --runs quick    # --quick only
    python bench/pipeline.py --device cuda --extra "--compile"

Each run is a fresh process writing to a fresh temporary --out folder, so no stage is cached:
this is what a new user waits for. `wall` is the process from start to exit (Python and
torch start-up included); the stages come from the run's metrics.json ("timings", and each
policy's alignment "seconds"); `other` is the rest of the in-process total (building the
world, loading data, the report and its plots). One run each: the default run takes minutes.

Targets: default <= 5 minutes and --quick <= 60 seconds on a 2-core CPU; the
default run <= 60 seconds on an H100-class GPU.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

from common import ROOT, add_args, csv, machine, report, setup, table, write_json

RUNS = {"quick": ["--quick"], "default": []}
STAGES = ("tokenizer", "pretrain", "collect", "align", "evaluate", "other")


def run_train(name: str, device: str, extra: list, timeout: float, keep_metrics=None, threads=None) -> dict:
    out = tempfile.mkdtemp(prefix=f"rpo_bench_{name}_")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), *RUNS[name], "--out", out, "--device", device, *extra]
    row = {"run": name, "command": " ".join(["python", "train.py", *RUNS[name], *extra, "--device", device])}
    t0 = time.perf_counter()
    try:
        env = os.environ | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        shutil.rmtree(out, ignore_errors=True)
        return row | {"error": f"timed out after {timeout:.0f}s"}
    row["wall_s"] = time.perf_counter() - t0
    path = os.path.join(out, "metrics.json")
    if r.returncode != 0 or not os.path.exists(path):
        shutil.rmtree(out, ignore_errors=True)
        return row | {"error": f"exit code {r.returncode}", "stderr_tail": r.stderr[-2000:]}
    with open(path) as f:
        metrics = json.load(f)
    if keep_metrics:
        shutil.copy(path, keep_metrics)
    shutil.rmtree(out, ignore_errors=True)
    t = metrics["timings"]
    align = {p: v["seconds"] for p, v in metrics["policies"].items() if p != "reference"}
    row |= {k: t.get(k, 0.0) for k in ("tokenizer", "pretrain", "collect", "evaluate")}
    row |= {"align": sum(align.values()), "align_per_policy": align, "total_s": t["total"],
            "metrics_device": metrics.get("device"), "model": metrics["config"]["model"]}
    row["other"] = row["total_s"] - sum(row[k] for k in STAGES[:-1])
    row["startup_s"] = row["wall_s"] - row["total_s"]
    return row


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_args(p)
    p.add_argument("--runs", default="quick,default", help="comma-separated: quick, default")
    p.add_argument("--extra", default="", help='more train.py flags, e.g. "--compile"')
    p.add_argument("--timeout", type=float, default=1800, help="seconds before a run is abandoned")
    p.add_argument("--keep-metrics", default=None, help="copy the first run's metrics.json here")
    args = p.parse_args(argv)

    device = setup(args)
    names = csv(args.runs)
    rows = []
    for i, name in enumerate(names):
        if name not in RUNS:
            raise SystemExit(f"unknown run {name!r}; choose from {', '.join(RUNS)}")
        keep = args.keep_metrics if i == 0 else None
        row = run_train(name, args.device, shlex.split(args.extra), args.timeout, keep, args.threads)
        rows.append(row)
        print(f"  {name}: " + (f"{row['wall_s']:.1f}s wall" if "error" not in row else row["error"]), flush=True)
        if args.json:  # so that a run cut short still leaves what it measured
            write_json(args.json, {"machine": machine(device), "rows": rows, "partial": True})

    info = machine(device)
    cols = [("run", "run", ""), ("wall_s", "wall s", ".1f")] + \
           [(s, s, ".1f") for s in STAGES] + [("startup_s", "start-up", ".1f")]
    text = table(rows, cols)
    text += ("\n\nSeconds, one run each, fresh --out (nothing cached). align: the four objectives together"
             " (" + "; ".join(f"{r['run']}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["align_per_policy"].items())
                               for r in rows if "align_per_policy" in r) + ").")
    errors = [f"{r['run']}: {r['error']}" for r in rows if "error" in r]
    if errors:
        text += "\n\nFailed: " + "; ".join(errors)
    report("Pipeline wall time", info, text, args.json, args.md, {"rows": rows})
    return {"machine": info, "rows": rows}


if __name__ == "__main__":
    main()
