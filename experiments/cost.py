"""Cost: median time per training step (after warm-up) and peak memory of each objective.

Each objective runs in a process of its own, one at a time, using every core. A step is timed
from the start of one step's loss to the start of the next (forward, loss, backward, clip,
optimizer, bookkeeping); on CUDA the clock waits for the device, and the peak-memory counter
restarts at the first step. CPU: the process's peak RSS (coarse: allocator caching and Python
included), and its growth over the peak before alignment.
"""

import dataclasses
import statistics
import sys
import time

import torch

from rpo_mini import runtime
from rpo_mini.align import Alignment
from rpo_mini.evaluate import over_seeds
from rpo_mini.sampling import response_logprobs

from .runner import Experiment, Job, materials, run_jobs
from .tables import COLORS, ci_of, figure, mean_of, pm, provenance, save, table

try:
    import resource
except ImportError:  # Windows: no peak RSS
    resource = None

GRID = {"full": {"steps": 60, "skip": 10, "repeats": 3},
        "quick": {"steps": 8, "skip": 2, "repeats": 1}}
OBJECTIVES = ("sft", "kto", "dro", "rpo")


def run(ctx, g) -> dict:
    seeds = ctx.seeds[:g["repeats"]]
    jobs = [Job(f"{__name__}:measure", ctx.cfg(ctx.seeds[0]), ctx.seeds[0], o, params={**g, "seeds": seeds})
            for o in OBJECTIVES]
    results = run_jobs(ctx, jobs, fresh=True)
    rows = []
    for job, res in zip(jobs, results):
        mean, ci = over_seeds(res["runs"])
        rows.append({"variant": job.variant, "per_seed": res["runs"], "mean": mean, "ci": ci})
    return {"grid": {**g, "seeds": seeds}, "jobs": len(jobs), "rows": rows,
            "memory": "cuda max_memory_allocated during the steps" if runtime.pick_device(ctx.device).type == "cuda"
            else "CPU process peak RSS (ru_maxrss); growth = over the peak before alignment"}


def _peak_rss_mb() -> float:
    if resource is None:
        return float("nan")
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2 ** 20


def measure(job) -> dict:
    """Per-step time and peak memory of one objective (job.variant), once per seed."""
    m = materials(job.cfg)
    obj, device, p = job.variant, m.ctx.device, job.params
    base, data, eot = m.base.value, m.data.value, m.enc.eot_token
    cfg = dataclasses.replace(job.cfg.align, steps=p["steps"], eval_every=10 ** 9)
    # The alignment's first pass (reference log-probs of the whole dataset) is the same for
    # everyone: run it once so that the CPU's process-wide peak RSS afterwards measures the training.
    response_logprobs(base, data.prompt_tokens, data.response_tokens, eot, cfg.length_normalize,
                      autocast=m.ctx.autocast)
    rss_before = _peak_rss_mb()
    runs = []
    for seed in p["seeds"]:
        a = Alignment(obj, base, data, cfg, cfg.lr_for(obj), cfg.tau_for(obj), seed, eot, m.ctx.autocast)
        times, history = [], []

        def timed_loss_at(step):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                if not times:
                    torch.cuda.reset_peak_memory_stats(device)
            times.append(time.perf_counter())
            return a.loss(a.batch(step))

        def after_step(step, metrics, norms, lr):  # the bookkeeping of a training step
            history.append({"step": step, **metrics, "grad_norm": norms["policy"].item(), "lr": lr})

        a.loop.run(timed_loss_at, after_step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        steps = [t1 - t0 for t0, t1 in zip(times, times[1:])][p["skip"]:]
        q = statistics.quantiles(steps, n=4) if len(steps) > 1 else [steps[0]] * 3
        run = {"seed": seed, "ms_per_step": 1000 * statistics.median(steps), "ms_iqr": 1000 * (q[2] - q[0]),
               "params": sum(x.numel() for mod in a.modules.values() for x in mod.parameters())}
        if device.type == "cuda":
            run["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        else:
            run["peak_rss_mb"], run["rss_growth_mb"] = _peak_rss_mb(), _peak_rss_mb() - rss_before
        runs.append(run)
    return {"runs": runs}


def plot(d, path):
    fig, axes = figure(2, (9, 3.6))
    names = [r["variant"] for r in d["rows"]]
    mem_key = "peak_mb" if "peak_mb" in d["rows"][0]["mean"] else "peak_rss_mb"
    mem_label = "peak memory (MiB)" + (" — process RSS" if mem_key != "peak_mb" else "")
    for ax, key, label in ((axes[0], "ms_per_step", "ms per step (median)"), (axes[1], mem_key, mem_label)):
        ax.bar(names, [mean_of(r, key) for r in d["rows"]], yerr=[ci_of(r, key) for r in d["rows"]],
               color=[COLORS[n] for n in names], capsize=3)
        ax.set_ylabel(label)
        ax.set_xlabel("objective")
    fig.suptitle(f"cost on {d['device']}")
    save(fig, path)


def markdown(d) -> str:
    mem = "peak_mb" if "peak_mb" in d["rows"][0]["mean"] else "peak_rss_mb"
    lines = [[r["variant"], pm(mean_of(r, "ms_per_step"), r["ci"].get("ms_per_step"), ".2f"),
              f"{mean_of(r, 'ms_iqr'):.2f}", pm(mean_of(r, mem), r["ci"].get(mem), ".0f"),
              *([f"{mean_of(r, 'rss_growth_mb'):.0f}"] if mem != "peak_mb" else []),
              f"{int(mean_of(r, 'params')):,}"] for r in d["rows"]]
    header = ["objective", "ms/step (median)", "IQR ms", "peak MiB", *(["RSS growth MiB"] if mem != "peak_mb" else []),
              "trained params"]
    return "\n".join([provenance(d), "", table(header, lines), "",
                      f"{d['grid']['steps']} steps, first {d['grid']['skip']} skipped, repeats (seeds) "
                      f"{d['grid']['seeds']}; memory: {d['memory']}."])


COST = Experiment("cost", GRID, run, plot, markdown)
