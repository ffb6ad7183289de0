"""Heterogeneity: how much prompts differ (the world's subject-prior strength), and whether RPO's
per-prompt log Ẑ(x) then beats one global baseline for all prompts ("rpo-global") or DRO's
learned V(x). Each world's between-prompt vs within-prompt reward spread is measured too.
"""

from rpo_mini.worlds import make_world, reward_spread

from .runner import Experiment, run_jobs, train_job
from .stats import make_rows, paired_difference
from .tables import COLORS, ci_of, figure, mean_of, metric_table, pm, provenance, save, table

GRID = {"full": {"prior_strength": [0.0, 0.5, 1.0, 2.0]},
        "quick": {"prior_strength": [0.0, 1.0]}}
VARIANTS = ("rpo", "rpo-global", "dro")


def run(ctx, g) -> dict:
    grid = g["prior_strength"]
    jobs = [train_job(ctx, v, s, sections={"world": {"prior_strength": ps}}, row={"prior_strength": ps})
            for ps in grid for v in VARIANTS for s in ctx.seeds]
    rows = make_rows(jobs, run_jobs(ctx, jobs))
    spread = {}
    for ps in grid:  # between-prompt vs within-prompt reward spread of each world (the first seed's)
        w = make_world(ctx.cfg(ctx.seeds[0], world={"prior_strength": ps}).world)
        between, within = reward_spread(w, w.train_prompts[:40])
        spread[str(ps)] = {"between": between, "within": within, "ratio": between / within}
    return {"grid": {"prior_strength": grid}, "jobs": len(jobs), "rows": rows, "spread": spread}


def paired(d) -> dict:
    """RPO − RPO-global and RPO − DRO at each prior strength, paired by seed."""
    diffs = {}
    for ps in d["grid"]["prior_strength"]:
        by = {r["variant"]: r for r in d["rows"] if r["prior_strength"] == ps}
        diffs[str(ps)] = {f"rpo_minus_{v}": {k: paired_difference(by["rpo"]["per_seed"], by[v]["per_seed"], k)
                                             for k in ("reward", "gold", "kl")} for v in ("rpo-global", "dro")}
    return {"paired": diffs}


def plot(d, path):
    fig, axes = figure(3, (13, 4))
    for ax, metric in zip(axes, ("reward", "gold", "kl")):
        for v in VARIANTS:
            rows = sorted((r for r in d["rows"] if r["variant"] == v), key=lambda r: r["prior_strength"])
            ax.errorbar([r["prior_strength"] for r in rows], [mean_of(r, metric) for r in rows],
                        yerr=[ci_of(r, metric) for r in rows], fmt="-o", capsize=2, color=COLORS[v], label=v)
        ax.set_xlabel("subject-prior strength (0 = all prompts alike)")
        ax.set_ylabel(f"mean {metric} (test)" if metric != "kl" else "KL(π ‖ π_ref) (test)")
        ax.legend(fontsize=8)
    fig.suptitle(f"heterogeneity: per-prompt vs global baseline; mean ± 95% CI over {len(d['seeds'])} seeds")
    save(fig, path)


def markdown(d) -> str:
    lines = []
    for ps in d["grid"]["prior_strength"]:
        by = {r["variant"]: r for r in d["rows"] if r["prior_strength"] == ps}
        sp, pd = d["spread"][str(ps)], d["paired"][str(ps)]
        lines.append([ps, f"{sp['ratio']:.2f}", *[pm(mean_of(by[v], "gold"), ci_of(by[v], "gold")) for v in VARIANTS],
                      pm(*pd["rpo_minus_rpo-global"]["gold"]), pm(*pd["rpo_minus_dro"]["gold"]),
                      pm(*pd["rpo_minus_rpo-global"]["reward"]), pm(*pd["rpo_minus_dro"]["reward"])])
    return "\n".join([provenance(d), "", table(
        ["prior strength", "between/within spread", "RPO gold", "RPO-global gold", "DRO gold",
         "RPO − global (gold)", "RPO − DRO (gold)", "RPO − global (reward)", "RPO − DRO (reward)"], lines), "",
        "All rows:", "", metric_table(d["rows"], extra=("prior_strength",))])


HETEROGENEITY = Experiment("heterogeneity", GRID, run, plot, markdown, paired)
