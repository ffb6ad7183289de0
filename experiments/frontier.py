"""Frontier and offpolicy: each objective over the same grid budget of learning rate × its own knob.

    frontier   on the usual data (K responses per prompt sampled from π_ref)
    offpolicy  on data from the world's off-policy generator (scored; ref log-probs under
               π_ref), where RPO's "mean" estimator and DRO's value are off their
               assumptions; with RPO's "ref" estimator (the authors' code) next to them, and
               RPO's and DRO's settings again on π_ref's own samples, so that the off-policy
               effect is a difference of differences paired by seed

Every grid point is trained and evaluated for every seed. Three comparisons, none of which
gives any objective a default of its own:

    upper envelope   the best mean test gold among an objective's settings at KL ≤ t
    matched KL       per seed, each objective's Pareto front chosen on validation and read on test
                     at KL = t (linear between its two neighbouring settings, only when both lie
                     within a factor MAX_KL_RATIO of t; never extrapolated); differences to RPO
                     paired by seed
    tuned            per seed, the setting with the best fluency-gated validation gold (every
                     validation prompt, 4 samples each; a non-fluent sample scores as a
                     failure), its test metrics, differences to RPO's tuned setting paired by seed
"""

import itertools
import math

from rpo_mini.evaluate import MAX_KL_RATIO, mean_ci, over_seeds

from .runner import Experiment, run_jobs, train_job
from .stats import (KL_THRESHOLDS, best_under_kl, difference_in_differences, make_rows, matched_kl, number,
                    paired_difference, pareto_front, select_per_seed)
from .tables import COLORS, ci_of, figure, mean_of, metric_table, pm, pmn, provenance, save, table

# The online rows sample 32 fresh responses per step (8 prompts × groups of 4): 50 steps generate
# 1,600, as many as the offline dataset (200 prompts × K = 8) that the other rows train on.
ONLINE_STEPS = 50
# {variant: {AlignConfig field: values}}: the settings are the product. Six per objective, each
# over its learning rate and its own knob (SFT: which responses it imitates).
GRID = {"full": {"sft": {"lr": [3e-5, 1e-4, 3e-4], "sft_mode": ["best", "above_mean"]},
                 "kto": {"lr": [1e-4, 3e-4], "beta": [0.1, 0.3, 1.0]},
                 "dro": {"lr": [3e-5, 1e-4], "dro_tau": [0.1, 0.3, 1.0]},
                 "rpo": {"lr": [3e-5, 1e-4], "rpo_tau": [0.1, 0.3, 1.0]},
                 "rloo": {"lr": [3e-5, 1e-4], "rloo_tau": [0.1, 0.3, 1.0], "steps": [ONLINE_STEPS]},
                 "rpo-online": {"lr": [3e-5, 1e-4], "rpo_tau": [0.1, 0.3, 1.0], "steps": [ONLINE_STEPS]}},
        "quick": {"kto": {"lr": [3e-4], "beta": [0.1]}, "dro": {"lr": [3e-4], "dro_tau": [0.3, 1.0]},
                  "rpo": {"lr": [3e-4], "rpo_tau": [0.3, 1.0]}, "rloo": {"lr": [3e-4], "rloo_tau": [0.3, 1.0]}}}
# Off-policy: three settings each, τ = 0.1 included (KTO left out to fit a CPU run).
OFFPOLICY_GRID = {"full": {"sft": {"lr": [1e-4, 3e-4, 1e-3]},
                           "dro": {"lr": [1e-4], "dro_tau": [0.1, 0.3, 1.0]},
                           "rpo": {"lr": [1e-4], "rpo_tau": [0.1, 0.3, 1.0]},
                           "rpo-ref": {"lr": [1e-4], "rpo_tau": [0.1, 0.3, 1.0]}},
                  "quick": {"dro": {"lr": [3e-4], "dro_tau": [1.0]}, "rpo": {"lr": [3e-4], "rpo_tau": [1.0]},
                            "rpo-ref": {"lr": [3e-4], "rpo_tau": [1.0]}}}
KL_TARGETS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # nats per response, where the matched-KL comparison reads
MATCHED = ("gold", "gated_gold")                    # what it compares


def settings(space: dict) -> list:
    """{field: values} → every combination, as AlignConfig changes."""
    return [dict(zip(space, combo)) for combo in itertools.product(*space.values())]


def grid_jobs(ctx, grid, sections=None, world="reviews", **params) -> list:
    """grid: {variant: {field: values}} → one training job per variant, setting and seed;
    sections: config changes shared by every job."""
    return [train_job(ctx, v, s, setting, sections or {}, world, **params)
            for v, space in grid.items() for setting in settings(space) for s in ctx.seeds]


def run(ctx, grid, sections=None, world="reviews") -> dict:
    jobs = grid_jobs(ctx, grid, sections, world)
    return {"grid": grid, "jobs": len(jobs), "rows": make_rows(jobs, run_jobs(ctx, jobs))}


ON_POLICY = ("rpo", "dro")  # their settings again on π_ref's own samples: the off-policy effect is a difference of differences


def run_offpolicy(ctx, grid) -> dict:
    """The grid on the off-policy generator's data; RPO's and DRO's settings again on π_ref's own
    samples (rows marked "on"), with the same seeds and sizes."""
    jobs = grid_jobs(ctx, grid, {"collect": {"off_policy": True}}) + \
        grid_jobs(ctx, {v: grid[v] for v in ON_POLICY}, row={"data": "on"})
    return {"grid": grid, "jobs": len(jobs), "rows": make_rows(jobs, run_jobs(ctx, jobs))}


def _arm(d, on: bool) -> dict:
    """d with only its off-policy rows (on=False) or only its reference-sample arm (on=True)."""
    return {**d, "rows": [r for r in d["rows"] if (r.get("data") == "on") == on]}


def offpolicy_did(rows, keys=("gold", "gated_gold", "kl")) -> list:
    """For each RPO and DRO setting (lr, τ) run on both data: DRO − RPO off-policy, DRO − RPO on
    π_ref's samples, and their difference, each paired by seed. At equal τ, not at matched KL."""
    by = {(r["variant"], r.get("data"), r["label"]): r["per_seed"]
          for r in rows if r["variant"] in ON_POLICY}
    out = []
    for label in dict.fromkeys(lab for v, data, lab in by if v == "dro"):
        arms = [by.get(k) for k in (("dro", None, label), ("rpo", None, label), ("dro", "on", label),
                                     ("rpo", "on", label))]
        if all(arms):
            out.append({"setting": label, **{k: {"off": list(paired_difference(arms[0], arms[1], k)),
                                                         "on": list(paired_difference(arms[2], arms[3], k)),
                                                         "did": difference_in_differences(*arms, k)}
                                                     for k in keys}})
    return out


def offpolicy_summary(d) -> dict:
    out = summary(_arm(d, False))
    out["summary"]["difference_in_differences"] = offpolicy_did(d["rows"])
    return out


def offpolicy_plot(d, path):
    plot(_arm(d, False), path)


def offpolicy_markdown(d) -> str:
    lines = [[e["setting"], *[pmn(e[k][part], "+.3f") if part == "did" else pm(*e[k][part])
                              for k in ("gold", "gated_gold", "kl") for part in ("off", "on", "did")]]
             for e in d["summary"]["difference_in_differences"]]
    return "\n".join([markdown(_arm(d, False)), "",
                      "The off-policy effect on DRO relative to RPO at equal settings: (DRO − RPO off-policy) − "
                      "(DRO − RPO on π_ref's own samples), paired by seed (same seeds, data sizes and settings; "
                      "at equal τ, not matched KL; > 0 in gold: the off-policy data costs RPO more than DRO):", "",
                      table(["setting", *[f"{h} {k}" for k in ("Δgold", "Δgated", "ΔKL")
                                          for h in ("off", "on", "Δ of Δ")]], lines), "",
                      "The reference-sample arm (π_ref's own samples):", "", metric_table(_arm(d, True)["rows"], reference=True)])


def tuned(rows, against="rpo", keys=("reward", "gold", "gated_gold", "kl", "distinct_2", "toxicity_rate",
                                      "fluency")) -> dict:
    """Each variant tuned per seed on validation (`select_per_seed`): the settings chosen, the test
    metrics over seeds, and the differences to `against`'s tuned setting, paired by seed."""
    chosen = select_per_seed(rows)
    out = {}
    for v, by_seed in chosen.items():
        results = [res for _, res in by_seed.values()]
        mean, ci = over_seeds(results, [k for k in keys if k in results[0]])
        labels = [label for label, _ in by_seed.values()]
        out[v] = {"chosen": {lab: labels.count(lab) for lab in dict.fromkeys(labels)}, "mean": mean, "ci": ci,
                  "n_seeds": len(results)}
        if against in chosen and v != against:
            other = {s: res for s, (_, res) in chosen[against].items()}
            out[v]["minus_" + against] = {
                k: list(mean_ci([res[k] - other[s][k] for s, (_, res) in by_seed.items() if s in other
                                 and math.isfinite(number(res.get(k))) and math.isfinite(number(other[s].get(k)))]))
                for k in mean}
    return out


def seed_spread(rows) -> list:
    """RPO and DRO at one learning rate and the nearest mean KL: the standard deviation over seeds of
    their test gold and KL (how repeatable a trained policy is, at matched lr and KL)."""
    out = []
    lrs = sorted({r["setting"].get("lr") for r in rows if r["variant"] in ("rpo", "dro")} - {None})
    for lr in lrs:
        by = {v: [r for r in rows if r["variant"] == v and r["setting"].get("lr") == lr] for v in ("rpo", "dro")}
        pairs = [(abs(math.log(mean_of(a, "kl") / mean_of(b, "kl"))), a, b) for a in by["rpo"] for b in by["dro"]
                 if mean_of(a, "kl") > 0 and mean_of(b, "kl") > 0]
        if not pairs:
            continue
        _, a, b = min(pairs, key=lambda p: p[0])
        out.append({"lr": lr, **{v: {"label": r["label"], **{f"sd_{k}": _sd([x[k] for x in r["per_seed"]
                                                                              if not x.get("diverged")])
                                                             for k in ("gold", "kl")},
                                     "kl": mean_of(r, "kl")} for v, r in (("rpo", a), ("dro", b))}})
    return out


def _sd(xs):
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float("nan")


FRESH = ("rloo", "rpo-online")  # the online rows (see ONLINE_STEPS)


def online_contrasts(rows, variants) -> dict:
    """The online rows against a learned value (offline DRO) and against each other (RLOO − online
    RPO): {against: {"matched": {metric: [{kl, variant: [mean, ci, n]}]}, "tuned": {variant:
    {metric: [mean, ci]}}}}, every difference paired by seed, at matched KL and tuned."""
    out = {}
    for against in ("dro", "rpo-online"):
        others = [v for v in FRESH if v in variants and v != against]
        if against not in variants or not others:
            continue
        out[against] = {
            "matched": {m: [{"kl": e["kl"], **{v: e["minus_" + against][v] for v in others}}
                            for e in matched_kl(rows, variants, m, KL_TARGETS, against=against)] for m in MATCHED},
            "tuned": {v: t["minus_" + against] for v, t in tuned(rows, against=against).items() if v in others}}
    return out


def summary(d) -> dict:
    rows = [r for r in d["rows"] if math.isfinite(number(r["mean"].get("kl")))]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    out = {"kl_thresholds": [t if t is not None else "inf" for t in KL_THRESHOLDS]}
    for metric in MATCHED:
        best = {}
        for v in variants:
            pts = [(r["mean"]["kl"], number(r["mean"].get(metric)), r["label"], r["ci"].get(metric))
                   for r in rows if r["variant"] == v]
            best[v] = [None if b is None else {"value": b[1], "ci": b[3], "kl": b[0], "label": b[2]}
                       for b in best_under_kl(pts)]
        out[f"best_{metric}_under_kl"] = best
        out[f"winner_{metric}"] = [max((v for v in variants if best[v][i]), key=lambda v: best[v][i]["value"],
                                       default=None) for i in range(len(KL_THRESHOLDS))]
    front = pareto_front([(r["mean"]["kl"], number(r["mean"].get("gold"))) for r in rows])
    out["pareto_gold"] = [f"{r['variant']} {r['label']}" for r, f in zip(rows, front) if f]
    out["matched"] = {m: matched_kl(rows, variants, m, KL_TARGETS) for m in MATCHED}
    out["tuned"] = tuned(rows)
    out["seed_spread"] = seed_spread(rows)
    out["online"] = online_contrasts(rows, variants)
    return {"summary": out}


def plot(d, path):
    fig, axes = figure(3, (16, 4.4))
    for ax, metric in zip(axes[:2], ("gold", "gated_gold")):
        for v in dict.fromkeys(r["variant"] for r in d["rows"]):
            rows = sorted((r for r in d["rows"] if r["variant"] == v), key=lambda r: mean_of(r, "kl"))
            kls = [mean_of(r, "kl") for r in rows]  # KL error bars stop at 0: a KL is never negative
            ax.errorbar(kls, [mean_of(r, metric) for r in rows],
                        xerr=[[min(ci_of(r, "kl"), max(k, 0.0)) for r, k in zip(rows, kls)],
                              [ci_of(r, "kl") for r in rows]], yerr=[ci_of(r, metric) for r in rows],
                        fmt="o", ms=4, capsize=2, color=COLORS.get(v), label=v)
        ref = [r["mean"].get(f"ref_{metric}") for r in d["rows"] if r["mean"].get(f"ref_{metric}") is not None]
        if ref:
            ax.plot([0], [ref[0]], "*", ms=12, color="0.3", label="π_ref")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("KL(π ‖ π_ref), nats per response (test)")
        ax.set_ylabel("mean gold (test)" if metric == "gold" else "mean fluency-gated gold (test)")
        ax.legend(fontsize=8)
    for v, vals in _matched_curves(d, "gold").items():
        ts = [t for t, m, c in vals]
        axes[2].errorbar(ts, [m for t, m, c in vals], yerr=[c for t, m, c in vals], fmt="-o", ms=3, capsize=2,
                         color=COLORS.get(v), label=v)
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("KL target t (nats)")
    axes[2].set_ylabel("upper envelope of test gold at KL = t")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"{d['experiment']}: every setting (mean ± 95% CI over {len(d['seeds'])} seeds); "
                 "right: each seed's front read at matched KL")
    save(fig, path)


def _matched_curves(d, metric):
    curves = {}
    for entry in d["summary"]["matched"][metric]:
        for v, (m, c, n) in entry["value"].items():
            if n >= 2 and math.isfinite(number(m)):
                curves.setdefault(v, []).append((entry["kl"], m, number(c) if c is not None else 0.0))
    return curves


def markdown(d) -> str:
    s = d["summary"]
    out = [provenance(d), "", "Test metrics per setting (mean ± 95% CI over seeds); π_ref = the base model:", "",
           metric_table(d["rows"], reference=True), ""]
    ths = [f"KL ≤ {t}" if t != "inf" else "any KL" for t in s["kl_thresholds"]]
    for metric in MATCHED:
        lines = [[v, *[pm(b["value"], b["ci"]) + f" ({b['label']})" if b else "—" for b in best]]
                 for v, best in s[f"best_{metric}_under_kl"].items()]
        lines.append(["**best**", *[w or "—" for w in s[f"winner_{metric}"]]])
        out += [f"Upper envelope: the best mean test {metric} among each variant's settings with mean KL under "
                "each threshold:", "", table(["variant", *ths], lines), ""]
    out += [f"On the joint gold–KL Pareto front: {', '.join(s['pareto_gold'])}.", ""]
    for metric in MATCHED:
        variants = list(s["matched"][metric][0]["value"])
        lines = []
        for e in s["matched"][metric]:
            lines.append([e["kl"], *[pmn(e["value"][v]) for v in variants],
                          *[pmn(e.get("minus_rpo", {}).get(v)) for v in variants if v != "rpo"]])
        out += [f"Matched KL: each seed's Pareto front, chosen on validation (KL, {metric}) and read on test at "
                f"KL = t between neighbours within a factor {MAX_KL_RATIO:g} of t, mean ± 95% CI (over the seeds "
                "where that read exists; n = how many); Δ = variant − RPO paired by seed:", "",
                table(["KL t", *variants, *[f"Δ {v}" for v in variants if v != "rpo"]], lines), ""]
    lines = [[v, ", ".join(f"{k} ×{n}" for k, n in t["chosen"].items()),
              *[pm(t["mean"].get(k), t["ci"].get(k)) for k in ("gold", "gated_gold", "kl")],
              *[pm(*t.get("minus_rpo", {}).get(k, (None, None))) if v != "rpo" else "—"
                for k in ("gold", "gated_gold", "kl", "distinct_2", "toxicity_rate")]]
             for v, t in s["tuned"].items()]
    out += ["Tuned: each seed's setting with the best fluency-gated validation gold; its test metrics, "
            "differences to RPO's tuned setting paired by seed (variant − RPO):", "",
            table(["variant", "chosen (of the seeds)", "gold", "gated gold", "KL", "Δgold", "Δgated gold", "ΔKL",
                   "Δdistinct-2", "Δtoxic"], lines)]
    for against, c in s.get("online", {}).items():
        ts = [e["kl"] for e in c["matched"]["gold"]]
        lines = [[f"{v} − {against}", metric, *[pmn(e[v]) for e in c["matched"][metric]],
                  pm(*c["tuned"][v][metric])] for metric in MATCHED for v in c["tuned"]]
        out += ["", f"The online rows against {against}, paired by seed: Δ = variant − {against} at matched KL "
                "(n = the seeds where both read) and tuned:", "",
                table(["Δ", "metric", *[f"KL {t:g}" for t in ts], "tuned"], lines)]
    if s.get("seed_spread"):
        lines = [[f"{e['lr']:g}", *[f"{e[v]['label']} (KL {e[v]['kl']:.2f}): sd gold {e[v]['sd_gold']:.3f}, "
                                   f"sd KL {e[v]['sd_kl']:.3f}" for v in ("rpo", "dro")]] for e in s["seed_spread"]]
        out += ["", "Seed-to-seed spread at one learning rate and the nearest mean KL (standard deviation over "
                "seeds of the test gold and KL):", "", table(["lr", "RPO", "DRO"], lines)]
    return "\n".join(out)



FRONTIER = Experiment("frontier", GRID, run, plot, markdown, summary)
OFFPOLICY = Experiment("offpolicy", OFFPOLICY_GRID, run_offpolicy, offpolicy_plot, offpolicy_markdown, offpolicy_summary)
