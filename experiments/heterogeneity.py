"""Heterogeneity: how much prompts differ (the world's subject-prior strength), and whether RPO's
per-prompt log Ẑ(x) then beats one global baseline for all prompts ("rpo-global") or DRO's
learned V(x), each at one learning rate over a τ grid, compared at matched KL. Each world's
between-prompt vs within-prompt reward spread is measured too. (The reviews reward ignores the
prompt, so here π* differs across prompts only through π_ref; `exact_heterogeneity` has
rewards whose difficulty depends on the prompt.)
"""

from rpo_mini.evaluate import MAX_KL_RATIO
from rpo_mini.worlds import make_world, reward_spread

from .runner import Experiment, run_jobs, tau_field, train_job
from .stats import make_rows, matched_kl, paired_difference
from .tables import COLORS, ci_of, figure, mean_of, metric_table, pm, pmn, provenance, save, table

GRID = {"full": {"prior_strength": [0.0, 2.0], "taus": [0.3, 1.0], "lr": 1e-4},
        "quick": {"prior_strength": [0.0, 1.0], "taus": [1.0], "lr": 3e-4}}
VARIANTS = ("rpo", "rpo-global", "dro")
KL_TARGETS = (0.5, 1.0, 2.0, 4.0, 8.0)


def run(ctx, g) -> dict:
    grid = g["prior_strength"]
    jobs = [train_job(ctx, v, s, {"lr": g["lr"], tau_field(v): tau},
                      sections={"world": {"prior_strength": ps}}, row={"prior_strength": ps, "tau": tau})
            for ps in grid for v in VARIANTS for tau in g["taus"] for s in ctx.seeds]
    rows = make_rows(jobs, run_jobs(ctx, jobs))
    spread = {}
    for ps in grid:  # between-prompt vs within-prompt reward spread of each world (the first seed's)
        w = make_world(ctx.cfg(ctx.seeds[0], world={"prior_strength": ps}).world)
        between, within = reward_spread(w, w.train_prompts[:40])
        spread[str(ps)] = {"between": between, "within": within, "ratio": between / within}
    return {"grid": g, "jobs": len(jobs), "rows": rows, "spread": spread}


def paired(d) -> dict:
    """At each prior strength: RPO − RPO-global and RPO − DRO at each τ, paired by seed; and each
    variant's front over τ read at matched KL (`matched_kl`), differences to RPO paired by seed."""
    diffs, matched = {}, {}
    for ps in d["grid"]["prior_strength"]:
        for tau in d["grid"]["taus"]:
            by = {r["variant"]: r for r in d["rows"] if r["prior_strength"] == ps and r["tau"] == tau}
            diffs[f"{ps}/{tau:g}"] = {f"rpo_minus_{v}": {k: paired_difference(by["rpo"]["per_seed"], by[v]["per_seed"], k)
                                                        for k in ("reward", "gold", "kl")} for v in VARIANTS[1:]}
        rows = [r for r in d["rows"] if r["prior_strength"] == ps]
        matched[str(ps)] = matched_kl(rows, list(VARIANTS), "gold", KL_TARGETS)
    return {"paired": diffs, "matched": matched}


def plot(d, path):
    grid = d["grid"]["prior_strength"]
    fig, axes = figure(len(grid), (5.5 * len(grid), 4))
    for ax, ps in zip(axes, grid):
        for v in VARIANTS:
            rows = sorted((r for r in d["rows"] if r["variant"] == v and r["prior_strength"] == ps),
                          key=lambda r: mean_of(r, "kl"))
            ax.errorbar([mean_of(r, "kl") for r in rows], [mean_of(r, "gold") for r in rows],
                        xerr=[ci_of(r, "kl") for r in rows], yerr=[ci_of(r, "gold") for r in rows], fmt="-o",
                        capsize=2, color=COLORS[v], label=v)
            for r in rows:
                ax.annotate(f"τ={r['tau']:g}", (mean_of(r, "kl"), mean_of(r, "gold")), fontsize=7, xytext=(3, 3),
                            textcoords="offset points", color=COLORS[v])
        ax.set_xlabel("KL(π ‖ π_ref) (test)")
        ax.set_ylabel("mean gold (test)")
        ax.set_title(f"subject-prior strength {ps:g} (between/within spread {d['spread'][str(ps)]['ratio']:.2f})",
                     fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(f"heterogeneity: per-prompt vs global baseline vs DRO over τ; mean ± 95% CI over "
                 f"{len(d['seeds'])} seeds")
    save(fig, path)


def markdown(d) -> str:
    lines = []
    for ps in d["grid"]["prior_strength"]:
        for tau in d["grid"]["taus"]:
            by = {r["variant"]: r for r in d["rows"] if r["prior_strength"] == ps and r["tau"] == tau}
            pd = d["paired"][f"{ps}/{tau:g}"]
            lines.append([ps, f"{d['spread'][str(ps)]['ratio']:.2f}", tau,
                          *[f"{pm(mean_of(by[v], 'gold'), ci_of(by[v], 'gold'))} (KL {mean_of(by[v], 'kl'):.2f})"
                            for v in VARIANTS],
                          pm(*pd["rpo_minus_rpo-global"]["gold"]), pm(*pd["rpo_minus_dro"]["gold"])])
    matched = []
    for ps in d["grid"]["prior_strength"]:
        for e in d["matched"][str(ps)]:
            matched.append([ps, e["kl"], *[pmn(e["value"].get(v)) for v in VARIANTS],
                            *[pmn(e.get("minus_rpo", {}).get(v)) for v in VARIANTS[1:]]])
    return "\n".join([provenance(d), "", f"Learning rate {d['grid']['lr']:g} for every variant.", "", table(
        ["prior strength", "between/within spread", "τ", "RPO gold", "RPO-global gold", "DRO gold",
         "RPO − global (gold)", "RPO − DRO (gold)"], lines), "",
        "Matched KL: each seed's front over τ, chosen on validation and read on test at KL = t (gold) between "
        f"neighbours within a factor {MAX_KL_RATIO:g} of t; Δ = variant − RPO paired by seed:", "",
        table(["prior strength", "KL t", *VARIANTS, *[f"Δ {v}" for v in VARIANTS[1:]]], matched), "",
        "All rows:", "", metric_table(d["rows"], extra=("prior_strength", "tau"))])



HETEROGENEITY = Experiment("heterogeneity", GRID, run, plot, markdown, paired)
