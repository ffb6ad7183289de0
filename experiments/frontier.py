"""Frontier and offpolicy: each objective's reward–KL (and gold–KL) curve over its own knob.

    frontier   on the usual data (K responses per prompt sampled from π_ref)
    offpolicy  on data from the world's off-policy generator (scored; ref log-probs under
               π_ref), where RPO's "mean" estimator and DRO's value are off their
               assumptions; with RPO's "ref" estimator (the authors' code) next to them

Each grid point is trained and evaluated for every seed. The analysis: who has the best mean
test reward (and gold) at KL ≤ each threshold, the joint Pareto fronts, and each variant at
the setting chosen on validation, with paired differences to RPO's chosen setting.
"""

from rpo_mini.evaluate import MIN_FLUENCY

from .runner import VARIANTS, Experiment, run_jobs, train_job
from .stats import KL_THRESHOLDS, best_under_kl, make_rows, number, paired_difference, pareto_front, \
    select_on_validation
from .tables import COLORS, ci_of, figure, mean_of, metric_table, pm, provenance, save, table

# Each objective's own knob: the AlignConfig field that moves it along its reward–KL curve.
KNOBS = {"sft": "sft_lr", "kto": "beta", "dro": "dro_tau", "rpo": "rpo_tau"}

GRID = {"full": {"sft": [3e-5, 1e-4, 3e-4, 1e-3], "kto": [0.03, 0.1, 0.3, 1.0],
                 "dro": [0.1, 0.3, 1.0, 3.0], "rpo": [0.1, 0.3, 1.0, 3.0]},
        "quick": {"sft": [3e-4], "kto": [0.1], "dro": [0.3, 1.0], "rpo": [0.3, 1.0]}}
OFFPOLICY_GRID = {"full": {"sft": [3e-4, 1e-3], "kto": [0.1, 1.0], "dro": [0.3, 1.0, 3.0],
                           "rpo": [0.3, 1.0, 3.0], "rpo-ref": [0.3, 1.0, 3.0]},
                  "quick": {"dro": [1.0], "rpo": [1.0], "rpo-ref": [1.0]}}


def run(ctx, grid, sections=None) -> dict:
    """grid: {variant: knob values}; sections: config changes shared by every job."""
    jobs = [train_job(ctx, v, s, {KNOBS[VARIANTS[v][0]]: x}, sections or {})
            for v, xs in grid.items() for x in xs for s in ctx.seeds]
    return {"grid": grid, "jobs": len(jobs), "rows": make_rows(jobs, run_jobs(ctx, jobs))}


def run_offpolicy(ctx, grid) -> dict:
    return run(ctx, grid, {"collect": {"off_policy": True}})


def summary(d) -> dict:
    """Who dominates where: the best mean (test) reward and gold at KL ≤ each threshold, the
    joint Pareto fronts, and each variant's setting chosen on validation with paired
    differences to RPO's chosen setting."""
    rows = [r for r in d["rows"] if number(r["mean"].get("kl")) == number(r["mean"].get("kl"))]  # not NaN
    out = {"kl_thresholds": [t if t is not None else "inf" for t in KL_THRESHOLDS]}
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    for metric in ("reward", "gold"):
        best = {}
        for v in variants:
            pts = [(r["mean"]["kl"], number(r["mean"].get(metric)), r["label"], r["ci"].get(metric))
                   for r in rows if r["variant"] == v]
            best[v] = [None if b is None else {"value": b[1], "ci": b[3], "kl": b[0], "label": b[2]}
                       for b in best_under_kl(pts)]
        out[f"best_{metric}_under_kl"] = best
        out[f"winner_{metric}"] = [max((v for v in variants if best[v][i]), key=lambda v: best[v][i]["value"],
                                       default=None) for i in range(len(KL_THRESHOLDS))]
        front = pareto_front([(r["mean"]["kl"], number(r["mean"].get(metric))) for r in rows])
        out[f"pareto_{metric}"] = [f"{r['variant']} {r['label']}" for r, f in zip(rows, front) if f]
    chosen = select_on_validation(rows)
    out["selected"] = {v: {"label": r["label"], "setting": r["setting"], "mean": r["mean"], "ci": r["ci"]}
                       for v, r in chosen.items()}
    if "rpo" in chosen:
        out["selected_minus_rpo"] = {
            v: {k: paired_difference(r["per_seed"], chosen["rpo"]["per_seed"], k)
                for k in ("reward", "gold", "kl", "distinct_2", "toxicity_rate", "fluency")}
            for v, r in chosen.items() if v != "rpo"}
    return {"summary": out}


def plot(d, path):
    fig, axes = figure(2, (11, 4.2))
    for ax, metric in zip(axes, ("reward", "gold")):
        for v in dict.fromkeys(r["variant"] for r in d["rows"]):
            rows = sorted((r for r in d["rows"] if r["variant"] == v), key=lambda r: mean_of(r, "kl"))
            ax.errorbar([mean_of(r, "kl") for r in rows], [mean_of(r, metric) for r in rows],
                        xerr=[ci_of(r, "kl") for r in rows], yerr=[ci_of(r, metric) for r in rows],
                        fmt="-o", ms=4, capsize=2, color=COLORS.get(v), label=v)
            for r in rows:
                ax.annotate(r["label"].split("=")[-1], (mean_of(r, "kl"), mean_of(r, metric)), fontsize=7,
                            xytext=(3, 3), textcoords="offset points", color=COLORS.get(v))
        ref = [r["mean"].get(f"ref_{metric}") for r in d["rows"] if r["mean"].get(f"ref_{metric}") is not None]
        if ref:
            ax.plot([0], [ref[0]], "*", ms=12, color="0.3", label="π_ref")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("KL(π ‖ π_ref), nats per response (test)")
        ax.set_ylabel(f"mean {metric} reward (test)")
        ax.legend(fontsize=8)
    fig.suptitle(f"{d['experiment']}: mean ± 95% CI over {len(d['seeds'])} seeds (labels: τ, β or lr)")
    save(fig, path)


def markdown(d) -> str:
    s = d["summary"]
    out = [provenance(d), "", "Test metrics per setting (mean ± 95% CI over seeds); π_ref = the base model:", "",
           metric_table(d["rows"], reference=True), ""]
    ths = [f"KL ≤ {t}" if t != "inf" else "any KL" for t in s["kl_thresholds"]]
    for metric in ("reward", "gold"):
        lines = [[v, *[pm(b["value"], b["ci"]) + f" ({b['label']})" if b else "—" for b in best]]
                 for v, best in s[f"best_{metric}_under_kl"].items()]
        lines.append(["**best**", *[w or "—" for w in s[f"winner_{metric}"]]])
        out += [f"Best mean test {metric} among settings with mean KL under each threshold:", "",
                table(["variant", *ths], lines), "",
                f"On the joint {metric}–KL Pareto front: {', '.join(s[f'pareto_{metric}'])}.", ""]
    sel = s["selected"]
    lines = [[v, r["label"], *[pm(r["mean"].get(k), r["ci"].get(k)) for k in ("reward", "gold", "kl")],
              *[pm(*s.get("selected_minus_rpo", {}).get(v, {}).get(k, (None, None)))
                if v != "rpo" else "—" for k in ("reward", "gold", "kl", "distinct_2", "toxicity_rate")]]
             for v, r in sel.items()]
    out += [f"Each variant at the setting chosen on *validation* (max gold, fluency ≥ {MIN_FLUENCY}); "
            "differences to RPO paired by seed (variant − RPO):", "",
            table(["variant", "setting", "reward", "gold", "KL", "Δreward", "Δgold", "ΔKL", "Δdistinct-2", "Δtoxic"],
                  lines)]
    return "\n".join(out)


FRONTIER = Experiment("frontier", GRID, run, plot, markdown, summary)
OFFPOLICY = Experiment("offpolicy", OFFPOLICY_GRID, run_offpolicy, plot, markdown, summary)
