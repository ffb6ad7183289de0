"""The exact world (arithmetic) as ground truth: how far each method ends from the optimum it targets.

Every response is enumerable, so for each trained policy the exact expected reward, its KL to
π_ref, its KL to the optimum π*_τ and its regret J*_τ − J_τ(π) = τ KL(π‖π*_τ) are sums, not
estimates (`rpo_mini.exact.compare`, on the test prompts):

    optimum        every objective over the same grid budget (learning rate × its own knob),
                   DRO also with policy and value clipped jointly; each policy's frontier gap
                   (reward short of the exact frontier at its own KL) and, for RPO and DRO, its
                   regret at the τ it trained with
    partition      K responses per prompt from 2 to 64 on a fixed set of prompts: RPO with the
                   "mean", "loo", "ref" and "exact" partitions against DRO, at two τ; and the
                   error of each log Ẑ(x) against the enumerated log Z(x)
    value          DRO's learned V(x)/τ on one dataset, over alignment seeds: its spread across
                   seeds against the bootstrap spread of RPO's log Ẑ(x) over its K samples, and
                   both against the exact log Z(x)
    exact_heterogeneity  prompts alike (prior_strength 0: one error rate for all) or differing
                   by difficulty (1): RPO's per-prompt log Ẑ vs one global baseline vs DRO, two τ
    exact_offpolicy  data from the world's off-policy generator, whose probabilities μ(y|x) are
                   known: RPO "mean", "ref" and the importance-weighted "iw" partition vs DRO

Regret and KL are in raw reward units and nats; τ in the tables is the training τ (z-scored
rewards), its raw-unit value (τ·σ) is what the exact optimum uses.
"""

import math

import torch

from rpo_mini import exact, losses
from rpo_mini.data import reward_scale
from rpo_mini.evaluate import MAX_KL_RATIO, mean_ci

from . import frontier
from .runner import Experiment, Job, materials, run_jobs, tau_field, test_oracle, train_job
from .stats import difference_in_differences, make_rows, matched_kl, paired_difference
from .tables import COLORS, ci_of, figure, mean_of, pm, pmn, provenance, save, table

WORLD = "arithmetic"
EXACT_KEYS = ("exact_reward", "exact_gold", "exact_kl", "frontier_gap", "kl_to_matched_optimum", "regret",
              "kl_to_own_optimum")

# --- optimum ---------------------------------------------------------------------------------

# Ten settings per competing objective (equal tuning budgets); τ dense enough that RPO's and DRO's
# fronts have a point every ~0.25 nats over the KL range compared. DRO clipped jointly is an
# ablation of the clipping at four of DRO's settings, not a competitor.
EXACT_TAUS = [0.1, 0.2, 0.3, 0.5, 1.0]
OPTIMUM_GRID = {"full": {"sft": {"lr": [3e-5, 1e-4, 3e-4, 1e-3, 3e-3], "sft_mode": ["best", "above_mean"]},
                         "kto": {"lr": [3e-5, 1e-4], "beta": [0.03, 0.1, 0.3, 1.0, 3.0]},
                         "dro": {"lr": [1e-4, 3e-4], "dro_tau": EXACT_TAUS},
                         "dro-joint": {"lr": [1e-4, 3e-4], "dro_tau": [0.3, 1.0]},
                         "rpo": {"lr": [1e-4, 3e-4], "rpo_tau": EXACT_TAUS}},
                "quick": {"dro": {"lr": [3e-4], "dro_tau": [0.3]}, "rpo": {"lr": [3e-4], "rpo_tau": [1.0]}}}


def run_optimum(ctx, grid) -> dict:
    d = frontier.run(ctx, grid, world=WORLD)
    d["frontier"] = frontier_points(ctx)
    return d


def frontier_points(ctx) -> dict:
    """The exact frontier (E_{π*_τ}[r], KL(π*_τ‖π_ref)) of every seed's base model on its test prompts."""
    jobs = [Job(f"{__name__}:exact_frontier", ctx.cfg(s, WORLD), s, "frontier") for s in ctx.seeds]
    return {str(j.seed): r["points"] for j, r in zip(jobs, run_jobs(ctx, jobs))}


def exact_frontier(job) -> dict:
    return {"points": test_oracle(materials(job.cfg)).frontier(exact.FRONTIER_TAUS)}


EXACT_KL_TARGETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)  # nats: where the exact world's fronts are read


def beyond_frontier(rows) -> None:
    """Runs whose KL exceeds every optimum's have no optimum at equal KL (matched τ at the clamp):
    KL(π‖π* at its KL) is left out of their row's mean and they are counted (`n_beyond`)."""
    for r in rows:
        ok = [x for x in r["per_seed"] if not x.get("diverged") and not exact.beyond_frontier(x.get("matched_tau", 1.0))]
        r["n_beyond"] = sum(1 for x in r["per_seed"] if not x.get("diverged")) - len(ok)
        r["mean"]["kl_to_matched_optimum"], r["ci"]["kl_to_matched_optimum"] = \
            mean_ci([x["kl_to_matched_optimum"] for x in ok])


def optimum_summary(d) -> dict:
    rows = d["rows"]
    beyond_frontier(rows)
    clip = {}
    for r in rows:
        twin = next((x for x in rows if x["variant"] == "dro-joint" and x["setting"] == r["setting"]), None)
        if r["variant"] == "dro" and twin:
            clip[r["label"]] = {k: paired_difference(twin["per_seed"], r["per_seed"], k)
                                for k in ("exact_reward", "exact_kl", "regret", "frontier_gap")}
    tuned = frontier.tuned(rows, keys=("exact_reward", "exact_gold", "exact_kl", "frontier_gap", "regret", "gold",
                                       "kl"))
    competitors = [v for v in dict.fromkeys(r["variant"] for r in rows) if v != "dro-joint"]
    matched = {m: matched_kl(rows, competitors, m, EXACT_KL_TARGETS, kl="exact_kl") for m in ("exact_gold", "exact_reward")}
    return {"summary": {"tuned": tuned, "joint_minus_separate": clip, "matched": matched}}


def optimum_plot(d, path):
    fig, axes = figure(2, (12, 4.4))
    for s, pts in d["frontier"].items():
        axes[0].plot([p["kl"] for p in pts], [p["reward"] for p in pts], "-", color="0.75", lw=1,
                     label="exact frontier (each seed)" if s == str(d["seeds"][0]) else None)
    for v in dict.fromkeys(r["variant"] for r in d["rows"]):
        rows = [r for r in d["rows"] if r["variant"] == v]
        axes[0].errorbar([mean_of(r, "exact_kl") for r in rows], [mean_of(r, "exact_reward") for r in rows],
                         xerr=[ci_of(r, "exact_kl") for r in rows], yerr=[ci_of(r, "exact_reward") for r in rows],
                         fmt="o", ms=4, capsize=2, color=COLORS.get(v), label=v)
        axes[1].errorbar([mean_of(r, "exact_kl") for r in rows], [mean_of(r, "frontier_gap") for r in rows],
                         yerr=[ci_of(r, "frontier_gap") for r in rows], fmt="o", ms=4, capsize=2,
                         color=COLORS.get(v), label=v)
    axes[0].set_xscale("symlog", linthresh=0.1)
    axes[0].set_xlim(0, 3)
    axes[0].set_xlabel("exact KL(π ‖ π_ref), nats (test prompts)")
    axes[0].set_ylabel("exact E_π[r] (training reward)")
    axes[1].set_xlabel("exact KL(π ‖ π_ref), nats")
    axes[1].set_ylabel("frontier gap: E_π*[r] − E_π[r] at equal KL")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(f"optimum (exact world): every setting, mean ± 95% CI over {len(d['seeds'])} full replicates")
    save(fig, path)


def optimum_markdown(d) -> str:
    s = d["summary"]
    def own(r, k):  # at the policy's own τ; KTO and SFT have none: their regret is at the matched τ
        if k == "kl_to_own_optimum" and r["variant"][:3] in ("kto", "sft"):
            return "(matched)"
        return pm(mean_of(r, k), ci_of(r, k), ".3f")
    lines = [[r["variant"], r["label"], *[pm(mean_of(r, k), ci_of(r, k), ".3f") for k in
                                          ("exact_reward", "exact_gold", "exact_kl", "frontier_gap")],
              own(r, "regret"), pm(mean_of(r, "ref_regret"), ci_of(r, "ref_regret"), ".3f"), own(r, "kl_to_own_optimum"),
              pm(mean_of(r, "kl_to_matched_optimum"), ci_of(r, "kl_to_matched_optimum"), ".3f"),
              f"{r['n_beyond']}/{r['n_seeds']}", pm(mean_of(r, "gold"), ci_of(r, "gold"), ".3f"),
              f"{r['n_seeds'] - r['n_diverged']}/{r['n_seeds']}"] for r in d["rows"]]
    out = [provenance(d), "", "Every setting, exact measures on the test prompts (mean ± 95% CI over replicates); "
           "regret and KL to π*_τ at the policy's own τ (RPO, DRO; τ·σ in reward units) or, for KTO and SFT, at the "
           "matched τ (the τ whose optimum spends their KL); π_ref's regret at the same τ; KL(π‖π* at its KL) over "
           "the runs that have an optimum at their KL (beyond = runs spending more KL than the reward's maximiser, "
           "whose frontier gap is to that maximiser):", "",
           table(["variant", "setting", "E[r]", "E[gold]", "KL", "frontier gap", "regret", "π_ref regret",
                  "KL(π‖π*_τ)", "KL(π‖π* at its KL)", "beyond", "sampled gold", "runs"], lines), ""]
    keys = ("exact_gold", "exact_kl", "frontier_gap")
    lines = [[v, ", ".join(f"{k} ×{n}" for k, n in t["chosen"].items()),
              *[pm(t["mean"].get(k), t["ci"].get(k), ".3f") for k in keys],
              *[pm(*t.get("minus_rpo", {}).get(k, (None, None))) if v != "rpo" else "—" for k in keys]]
             for v, t in s["tuned"].items()]
    out += ["Tuned on validation (fluency-gated sampled gold, per replicate); exact test measures, Δ = variant − "
            "RPO paired by replicate:", "",
            table(["variant", "chosen", "E[gold]", "KL", "frontier gap", "ΔE[gold]", "ΔKL", "Δgap"], lines), ""]
    lines = [[label, *[pm(*x[k]) for k in ("exact_reward", "exact_kl", "regret", "frontier_gap")]]
             for label, x in s["joint_minus_separate"].items()]
    out += ["DRO with policy and value clipped jointly minus clipped apart, same settings, paired by replicate:", "",
            table(["setting", "ΔE[r]", "ΔKL", "Δregret", "Δgap"], lines)]
    for metric in ("exact_gold", "exact_reward"):
        entries = s["matched"][metric]
        variants = list(entries[0]["value"])
        lines = [[e["kl"], *[pmn(e["value"][v]) for v in variants],
                  *[pmn(e.get("minus_rpo", {}).get(v)) for v in variants if v != "rpo"]] for e in entries]
        out += ["", f"Matched exact KL: each replicate's front of {metric.replace('_', ' ')} against exact KL, chosen on "
                f"validation prompts and read on the test prompts at KL = t between neighbours within a factor "
                f"{MAX_KL_RATIO:g} of t (— = no read; n = replicates read); Δ = variant − RPO paired by replicate:", "",
                table(["KL t", *variants, *[f"Δ {v}" for v in variants if v != "rpo"]], lines)]
    return "\n".join(out)


OPTIMUM = Experiment("optimum", OPTIMUM_GRID, run_optimum, optimum_plot, optimum_markdown, optimum_summary)


# --- partition: K --------------------------------------------------------------------------------

PARTITION_GRID = {"full": {"k": [2, 4, 16, 64], "n_prompts": 100, "lr": 1e-4, "taus": [0.3, 1.0],
                           "variants": ["rpo", "rpo-loo", "rpo-ref", "rpo-exact", "dro"]},
                  "quick": {"k": [2, 4], "n_prompts": 16, "lr": 3e-4, "taus": [1.0],
                            "variants": ["rpo", "rpo-exact", "dro"]}}
PARTITION_ESTIMATORS = ("mean", "loo", "ref")


def run_partition(ctx, g) -> dict:
    jobs = [train_job(ctx, v, s, {"lr": g["lr"], tau_field(v): tau},
                      {"collect": {"k": k, "n_prompts": g["n_prompts"]}}, WORLD, row={"k": k, "tau": tau})
            for k in g["k"] for v in g["variants"] for tau in g["taus"] for s in ctx.seeds]
    errs = [Job(f"{__name__}:partition_error", ctx.cfg(s, WORLD, collect={"k": k, "n_prompts": g["n_prompts"]}), s,
                "partition", params={"taus": g["taus"], "row": {"k": k}}) for k in g["k"] for s in ctx.seeds]
    results = run_jobs(ctx, jobs + errs)
    errors = {}
    for job, res in zip(errs, results[len(jobs):]):
        errors.setdefault(str(job.params["row"]["k"]), []).append(res)
    return {"grid": g, "jobs": len(jobs) + len(errs), "rows": make_rows(jobs, results[:len(jobs)]),
            "log_z_errors": errors}


def partition_error(job) -> dict:
    """Each estimator's log Ẑ(x) against the enumerated log Z(x), on the dataset's prompts, in the
    units RPO trains in (z-scored rewards): mean signed error (bias) and mean |error| per τ."""
    m = materials(job.cfg)
    data = m.data.value
    prompts = [r["prompt"] for r in data.records]
    oracle = exact.oracle(m.base.value, m.enc, m.world, sorted(set(prompts)), m.reward, m.ctx.autocast)
    scale = reward_scale(data.rewards, job.cfg.align.rewards_zscore)
    z = scale(data.rewards)
    ref_logps = torch.tensor([r["ref_logp"] for r in data.records], dtype=torch.float64)
    out = {"seed": job.seed}
    for tau in job.params["taus"]:
        truth = oracle.per_sample(oracle.log_z(tau, scale), prompts)
        out |= log_z_errors(z, data.prompt_ids, tau, truth, ref_logps)
    return out


def log_z_errors(z, prompt_ids, tau, truth, ref_logps) -> dict:
    """Each estimator's error log Ẑ(x_i) − log Z(x_i) over samples i (all (N,)): its mean (the bias,
    signed: negative means Ẑ underestimates) and its mean absolute value, keyed `{est}_tau{τ}_…`."""
    out = {}
    for est in PARTITION_ESTIMATORS:
        d = losses.log_partition(z, prompt_ids, tau, est, ref_logps=ref_logps) - truth
        out[f"{est}_tau{tau:g}_bias"] = float(d.mean())
        out[f"{est}_tau{tau:g}_abs"] = float(d.abs().mean())
    return out


def partition_summary(d) -> dict:
    """At each K and τ, every variant's regret and frontier gap, and the difference to DRO paired by seed."""
    out = {}
    for k in d["grid"]["k"]:
        for tau in d["grid"]["taus"]:
            by = {r["variant"]: r for r in d["rows"] if r["k"] == k and r["tau"] == tau}
            out[f"{k}/{tau:g}"] = {v: {key: paired_difference(r["per_seed"], by["dro"]["per_seed"], key)
                                       for key in ("regret", "kl_to_own_optimum", "frontier_gap", "exact_gold",
                                                   "exact_kl")}
                                   for v, r in by.items() if v != "dro" and "dro" in by}
    errors = {}
    for k, per in d["log_z_errors"].items():
        keys = [c for c in per[0] if c not in ("seed", "seconds")]
        errors[k] = {c: list(mean_ci([p[c] for p in per])) for c in keys}
    return {"minus_dro": out, "log_z_error_summary": errors}


def partition_plot(d, path):
    taus = d["grid"]["taus"]
    fig, axes = figure(len(taus) + 1, (5 * (len(taus) + 1), 4.2))
    for ax, tau in zip(axes, taus):
        for v in d["grid"]["variants"]:
            rows = sorted((r for r in d["rows"] if r["variant"] == v and r["tau"] == tau), key=lambda r: r["k"])
            ax.errorbar([r["k"] for r in rows], [mean_of(r, "regret") for r in rows],
                        yerr=[ci_of(r, "regret") for r in rows], fmt="-o", ms=4, capsize=2,
                        color=COLORS.get(v), label=v)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("K responses per prompt")
        ax.set_ylabel(f"exact regret at τ = {tau:g} (raw reward units)")
        ax.legend(fontsize=8)
    ks = sorted(int(k) for k in d["log_z_errors"])
    for est, color in zip(PARTITION_ESTIMATORS, (COLORS["rpo"], COLORS["rpo-loo"], COLORS["rpo-ref"])):
        for tau, ls in zip(taus, ("-", ":")):
            key = f"{est}_tau{tau:g}_bias"
            axes[-1].plot(ks, [d["log_z_error_summary"][str(k)][key][0] for k in ks], ls + "o", ms=3, color=color,
                          label=f"{est}, τ={tau:g}")
    axes[-1].axhline(0, color="0.7", lw=0.8)
    axes[-1].set_xscale("log", base=2)
    axes[-1].set_xlabel("K")
    axes[-1].set_ylabel("log Ẑ(x) − log Z(x), mean over prompts (nats)")
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"partition (exact world): mean ± 95% CI over {len(d['seeds'])} full replicates")
    save(fig, path)


def partition_markdown(d) -> str:
    g = d["grid"]
    out = [provenance(d), ""]
    for tau in g["taus"]:
        lines = []
        for k in g["k"]:
            by = {r["variant"]: r for r in d["rows"] if r["k"] == k and r["tau"] == tau}
            diffs = d["minus_dro"][f"{k}/{tau:g}"]
            lines.append([k, *[f"{pm(mean_of(by[v], 'regret'), ci_of(by[v], 'regret'), '.4f')} "
                               f"(KL {mean_of(by[v], 'exact_kl'):.2f})" for v in g["variants"]],
                          *[pm(*diffs[v]["regret"], ".4f") for v in g["variants"] if v != "dro"]])
        out += [f"τ = {tau:g} (lr {g['lr']:g}, {g['n_prompts']} prompts): exact regret J*_τ − J_τ(π) (KL to π_ref); "
                "Δ = variant − DRO paired by replicate:", "",
                table(["K", *g["variants"], *[f"Δregret {v}" for v in g["variants"] if v != "dro"]], lines), ""]
    lines = [[k, *[pm(*e[f"{est}_tau{tau:g}_{m}"], ".3f") for tau in g["taus"] for est in PARTITION_ESTIMATORS
                   for m in ("bias",)]] for k, e in sorted(d["log_z_error_summary"].items(), key=lambda x: int(x[0]))]
    out += ["log Ẑ(x) − log Z(x) (the estimate's bias, nats, z-scored reward units), mean over prompts:", "",
            table(["K", *[f"{est} τ={tau:g}" for tau in g["taus"] for est in PARTITION_ESTIMATORS]], lines)]
    return "\n".join(out)


PARTITION = Experiment("partition", PARTITION_GRID, run_partition, partition_plot, partition_markdown,
                       partition_summary)


# --- value: DRO's V(x) over seeds vs RPO's log Ẑ over its samples ----------------------------------

VALUE_GRID = {"full": {"tau": 1.0, "lr": 1e-4, "bootstrap": 200}, "quick": {"tau": 1.0, "lr": 3e-4, "bootstrap": 20}}


def run_value(ctx, g) -> dict:
    """DRO trained with every seed on ONE dataset (the first seed's): V(x)/τ's spread over seeds."""
    jobs = [train_job(ctx, "dro", s, {"lr": g["lr"], "dro_tau": g["tau"]}, world=WORLD, values=True) for s in ctx.seeds]
    for job in jobs:  # one world, base model and dataset for all: only the alignment seed varies
        job.cfg.run.seed = job.cfg.world.seed = ctx.seeds[0]
    truth = Job(f"{__name__}:value_truth", jobs[0].cfg, ctx.seeds[0], "truth", params=g)
    results = run_jobs(ctx, jobs + [truth])
    values = torch.tensor([r["values"] for r in results[:-1]], dtype=torch.float64)  # (seeds, prompts)
    t = results[-1]
    log_z = torch.tensor(t["log_z"], dtype=torch.float64)
    return {"grid": g, "jobs": len(jobs) + 1, "per_seed": [{k: v for k, v in r.items() if k != "values"}
                                                            for r in results[:-1]],
            "v_sd_over_seeds": float(values.std(0).mean()),
            "v_abs_error": float((values - log_z).abs().mean()), "v_bias": float((values - log_z).mean()),
            "log_z_hat_bootstrap_sd": t["bootstrap_sd"], "log_z_hat_abs_error": t["abs_error"],
            "log_z_hat_bias": t["bias"], "k": jobs[0].cfg.collect.k, "n_prompts": len(t["log_z"])}


def value_truth(job) -> dict:
    """On the dataset's training prompts: the exact log Z_τ(x) (z-scored units), RPO's "mean" log Ẑ(x),
    and the bootstrap standard deviation of log Ẑ(x) when its K rewards are resampled."""
    m = materials(job.cfg)
    data, tau = m.data.value, job.params["tau"]
    prompts = m.world.train_prompts[:job.cfg.collect.n_prompts or None]  # the order dro_values uses
    oracle = exact.oracle(m.base.value, m.enc, m.world, prompts, m.reward, m.ctx.autocast)
    scale = reward_scale(data.rewards, job.cfg.align.rewards_zscore)
    log_z = oracle.log_z(tau, scale)
    z = scale(data.rewards).view(len(prompts), -1)  # collection writes K per prompt, in order
    hat = torch.logsumexp(z / tau, 1) - math.log(z.shape[1])
    g = torch.Generator().manual_seed(job.seed)
    idx = torch.randint(z.shape[1], (job.params["bootstrap"], *z.shape), generator=g)
    boot = torch.logsumexp(torch.gather(z.expand(job.params["bootstrap"], *z.shape), 2, idx) / tau, 2) - \
        math.log(z.shape[1])
    return {"log_z": log_z.tolist(), "bootstrap_sd": float(boot.std(0).mean()),
            "abs_error": float((hat - log_z).abs().mean()), "bias": float((hat - log_z).mean())}


def value_plot(d, path):
    fig, ax = figure(1, (6, 4))
    names = ["DRO V(x)/τ: sd over seeds", "RPO log Ẑ(x): bootstrap sd", "DRO |V/τ − log Z|", "RPO |log Ẑ − log Z|"]
    vals = [d["v_sd_over_seeds"], d["log_z_hat_bootstrap_sd"], d["v_abs_error"], d["log_z_hat_abs_error"]]
    ax.bar(range(4), vals, color=[COLORS["dro"], COLORS["rpo"], COLORS["dro"], COLORS["rpo"]])
    ax.set_xticks(range(4), names, rotation=15, fontsize=7, ha="right")
    ax.set_ylabel("nats, mean over training prompts")
    fig.suptitle(f"value (exact world): K = {d['k']}, {d['n_prompts']} prompts, {len(d['seeds'])} DRO seeds")
    save(fig, path)


def value_markdown(d) -> str:
    return "\n".join([provenance(d), "", table(
        ["", "spread", "mean |error| vs exact log Z", "mean error (bias)"],
        [["DRO V(x)/τ", f"{d['v_sd_over_seeds']:.3f} (sd over {len(d['seeds'])} seeds)", f"{d['v_abs_error']:.3f}",
          f"{d['v_bias']:+.3f}"],
         ["RPO log Ẑ(x), mean", f"{d['log_z_hat_bootstrap_sd']:.3f} (bootstrap sd over its K = {d['k']})",
          f"{d['log_z_hat_abs_error']:.3f}", f"{d['log_z_hat_bias']:+.3f}"]])])


VALUE = Experiment("value", VALUE_GRID, run_value, value_plot, value_markdown)


# --- heterogeneity and off-policy in the exact world --------------------------------------------------

HETEROGENEITY_GRID = {"full": {"prior_strength": [0.0, 1.0], "taus": [0.3, 1.0], "lr": 1e-4,
                               "variants": ["rpo", "rpo-global", "dro"]},
                      "quick": {"prior_strength": [0.0, 1.0], "taus": [1.0], "lr": 3e-4,
                                "variants": ["rpo", "rpo-global"]}}
OFFPOLICY_GRID = {"full": {"taus": [0.3, 1.0], "lr": 1e-4, "variants": ["rpo", "rpo-iw", "rpo-ref", "dro"]},
                  "quick": {"taus": [1.0], "lr": 3e-4, "variants": ["rpo", "rpo-iw", "dro"]}}


def _tau_jobs(ctx, g, sections, row):
    return [train_job(ctx, v, s, {"lr": g["lr"], tau_field(v): tau}, sections, WORLD,
                      row={**row, "tau": tau}) for v in g["variants"] for tau in g["taus"] for s in ctx.seeds]


def run_heterogeneity(ctx, g) -> dict:
    jobs = [j for ps in g["prior_strength"] for j in _tau_jobs(ctx, g, {"world": {"prior_strength": ps}},
                                                               {"prior_strength": ps})]
    return {"grid": g, "jobs": len(jobs), "rows": make_rows(jobs, run_jobs(ctx, jobs))}


ON_POLICY = ["rpo", "dro"]  # the same design on π_ref's own samples: the off-policy effect is a difference of differences


def run_offpolicy(ctx, g) -> dict:
    """The variants on the off-policy generator's data, and RPO and DRO on π_ref's own samples
    (rows marked "on"; the same jobs as `exact_heterogeneity` at the world's prior, so cached)."""
    jobs = _tau_jobs(ctx, g, {"collect": {"off_policy": True}}, {}) + \
        _tau_jobs(ctx, {**g, "variants": ON_POLICY}, {}, {"data": "on"})
    return {"grid": g, "jobs": len(jobs), "rows": make_rows(jobs, run_jobs(ctx, jobs))}


def _name(r) -> str:
    """A row's column: its variant, marked @on for the reference-sample arm (π_ref's own samples)."""
    return r["variant"] + ("@on" if r.get("data") == "on" else "")


def _conditions(d):
    return sorted({(r.get("prior_strength"), r["tau"]) for r in d["rows"]}, key=lambda c: (c[0] or 0, c[1]))


def tau_summary(d) -> dict:
    """Each variant − RPO on the same data, paired by replicate; where both arms ran, the
    difference of differences (DRO − RPO off-policy) − (DRO − RPO on reference samples), paired by replicate."""
    out, did = {}, {}
    for ps, tau in _conditions(d):
        by = {_name(r): r for r in d["rows"] if r.get("prior_strength") == ps and r["tau"] == tau}
        out[f"{ps}/{tau:g}"] = {v: {k: paired_difference(r["per_seed"], by["rpo@on" if v.endswith("@on") else "rpo"]
                                                         ["per_seed"], k)
                                    for k in ("regret", "frontier_gap", "exact_gold", "exact_kl")}
                                for v, r in by.items() if v not in ("rpo", "rpo@on")}
        if all(v in by for v in ("rpo", "dro", "rpo@on", "dro@on")):
            arms = [by[v]["per_seed"] for v in ("dro", "rpo", "dro@on", "rpo@on")]
            did[f"{tau:g}"] = {k: difference_in_differences(*arms, k) for k in ("regret", "frontier_gap", "exact_gold")}
    return {"minus_rpo": out, **({"difference_in_differences": did} if did else {})}


def tau_plot(d, path):
    fig, axes = figure(2, (11, 4.2))
    conds = _conditions(d)
    variants = list(dict.fromkeys(_name(r) for r in d["rows"]))
    width = 0.8 / len(variants)
    for ax, key in zip(axes, ("regret", "frontier_gap")):
        for i, v in enumerate(variants):
            rows = [next(r for r in d["rows"] if _name(r) == v and r.get("prior_strength") == ps and r["tau"] == t)
                    for ps, t in conds]
            ax.bar([j + (i - (len(variants) - 1) / 2) * width for j in range(len(conds))],
                   [mean_of(r, key) for r in rows], width, yerr=[ci_of(r, key) for r in rows], capsize=2,
                   color=COLORS.get(v.removesuffix("@on")), hatch="//" if v.endswith("@on") else None, label=v)
        ax.set_xticks(range(len(conds)), [(f"prior {ps:g}, " if ps is not None else "") + f"τ={t:g}"
                                          for ps, t in conds])
        ax.set_ylabel(f"exact {key.replace('_', ' ')} (test prompts)")
        ax.legend(fontsize=8)
    fig.suptitle(f"{d['experiment']}: mean ± 95% CI over {len(d['seeds'])} full replicates")
    save(fig, path)


def tau_markdown(d) -> str:
    variants = list(dict.fromkeys(_name(r) for r in d["rows"]))
    lines = []
    for ps, tau in _conditions(d):
        by = {_name(r): r for r in d["rows"] if r.get("prior_strength") == ps and r["tau"] == tau}
        diffs = d["minus_rpo"][f"{ps}/{tau:g}"]
        lines.append([*([ps] if ps is not None else []), tau,
                      *[f"{pm(mean_of(by[v], 'regret'), ci_of(by[v], 'regret'), '.4f')} "
                        f"(gold {mean_of(by[v], 'exact_gold'):.3f}, KL {mean_of(by[v], 'exact_kl'):.2f})"
                        for v in variants],
                      *[pm(*diffs[v]["regret"], ".4f") for v in variants if v not in ("rpo", "rpo@on")]])
    head = (["prior strength"] if _conditions(d)[0][0] is not None else []) + ["τ"]
    out = [provenance(d), "", "Exact regret at each policy's own τ (exact E[gold], KL to π_ref); Δ = variant − RPO on the "
           "same data (@on: π_ref's own samples, against RPO @on), paired by replicate:", "",
           table([*head, *variants, *[f"Δregret {v}" for v in variants if v not in ("rpo", "rpo@on")]], lines)]
    if d.get("difference_in_differences"):
        lines = [[tau, *[pmn(x[k], ".4f") for k in ("regret", "frontier_gap", "exact_gold")]]
                 for tau, x in d["difference_in_differences"].items()]
        out += ["", "The off-policy effect on DRO relative to RPO: (DRO − RPO off-policy) − (DRO − RPO on π_ref's "
                "samples), paired by replicate (> 0 in regret: off-policy data hurts DRO more than RPO):", "",
                table(["τ", "Δ of Δ regret", "Δ of Δ frontier gap", "Δ of Δ E[gold]"], lines)]
    return "\n".join(out)


EXACT_HETEROGENEITY = Experiment("exact_heterogeneity", HETEROGENEITY_GRID, run_heterogeneity, tau_plot, tau_markdown,
                                 tau_summary)
EXACT_OFFPOLICY = Experiment("exact_offpolicy", OFFPOLICY_GRID, run_offpolicy, tau_plot, tau_markdown, tau_summary)
