"""Paper: the authors' settings (`--preset paper`: per-token-mean log-probs, the "ref" estimator
with τ = 5, matched-batch KTO with β = 1, lr 1e-4) against our defaults, on the same data.
"""

from rpo_mini.config import PAPER

from .runner import Experiment, run_jobs, train_job
from .stats import make_rows, paired_difference
from .tables import COLORS, ci_of, figure, mean_of, metric_table, pm, provenance, save, table

GRID = {"full": {"objectives": ["sft", "kto", "dro", "rpo"]},
        "quick": {"objectives": ["kto", "rpo"]}}


def run(ctx, g) -> dict:
    objs = g["objectives"]
    jobs = [train_job(ctx, v, s, row={"objective": o, "preset": p}) for o in objs
            for p, v in (("default", o), ("paper", f"{o}-paper")) for s in ctx.seeds]
    return {"grid": {"objectives": objs, "paper": PAPER["align"]}, "jobs": len(jobs),
            "rows": make_rows(jobs, run_jobs(ctx, jobs))}


def paired(d) -> dict:
    """paper − default per objective, paired by seed."""
    diffs = {}
    for o in d["grid"]["objectives"]:
        by = {r["preset"]: r for r in d["rows"] if r["objective"] == o}
        diffs[o] = {k: paired_difference(by["paper"]["per_seed"], by["default"]["per_seed"], k)
                    for k in ("reward", "gold", "kl", "distinct_2", "fluency")}
    return {"paper_minus_default": diffs}


def plot(d, path):
    fig, axes = figure(3, (12, 3.8))
    objs = d["grid"]["objectives"]
    for ax, metric in zip(axes, ("reward", "gold", "kl")):
        for i, preset in enumerate(("default", "paper")):
            rows = {r["objective"]: r for r in d["rows"] if r["preset"] == preset}
            ax.bar([j + (i - 0.5) * 0.38 for j in range(len(objs))], [mean_of(rows[o], metric) for o in objs], 0.38,
                   yerr=[ci_of(rows[o], metric) for o in objs], capsize=2, label=preset,
                   color=[COLORS[o] for o in objs], alpha=1.0 if preset == "default" else 0.5,
                   hatch=None if preset == "default" else "//")
        ax.set_xticks(range(len(objs)), objs)
        ax.set_ylabel(f"mean {metric} (test)" if metric != "kl" else "KL(π ‖ π_ref) (test)")
        ax.legend(fontsize=8)
    fig.suptitle(f"paper preset (hatched) vs defaults; mean ± 95% CI over {len(d['seeds'])} seeds")
    save(fig, path)


def markdown(d) -> str:
    lines = []
    for o in d["grid"]["objectives"]:
        by = {r["preset"]: r for r in d["rows"] if r["objective"] == o}
        pd = d["paper_minus_default"][o]
        lines.append([o, *[pm(mean_of(by[p], m), ci_of(by[p], m)) for m in ("gold", "kl")
                           for p in ("default", "paper")],
                      pm(*pd["reward"]), pm(*pd["gold"]), pm(*pd["kl"]), pm(*pd["fluency"])])
    return "\n".join([provenance(d), "", table(
        ["objective", "gold default", "gold paper", "KL default", "KL paper", "Δreward", "Δgold", "ΔKL", "Δfluency"],
        lines), "", "Δ = paper − default, paired by seed.", "", "All rows:", "",
        metric_table(d["rows"], extra=("preset",))])


PAPER_PRESET = Experiment("paper", GRID, run, plot, markdown, paired)
