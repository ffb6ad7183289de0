"""Paper: the authors' settings (`--preset paper`) against our defaults, one factor at a time.

The preset changes five things at once (per-token-mean log-probs, the "ref" estimator, τ = 5,
lr 1e-4, KTO's matched-batch reference point). Here RPO gets each of them alone on top of our
defaults, plus K = 4 (closer to the authors' data) and the authors' schedule (one epoch, warmed
up throughout), then all of the preset. Per-token means are also added at the preset's learning
rate and removed from the preset alone, so that what they do is measured at lr 1e-4 from both
sides; DRO gets the authors' value (a head on the policy's
pooled prompt states, `--dro_value shared`) and the preset; KTO the preset. Same data per seed.

Also measured directly on the data: the mean log Ẑ(x) of the "ref" estimator (Σ_j π_ref(y_j|x)
e^{r_j/τ}) at τ = 5 with per-token-mean and with summed log-probs, at K = 8 and K = 4: with
per-token means π_ref(y|x) is a per-token probability (≈ e^{-1} to e^{-3}), so its K-term sum
no longer behaves like a partition function, and every observed response is pushed by the same
offset.
"""

from rpo_mini import losses
from rpo_mini.config import PAPER
from rpo_mini.data import reward_scale
from rpo_mini.evaluate import mean_ci
from rpo_mini.sampling import response_logprobs

from .runner import Experiment, Job, materials, run_jobs, train_job
from .stats import make_rows, paired_difference
from .tables import COLORS, ci_of, figure, mean_of, metric_table, pm, provenance, save, table

# (label, variant, AlignConfig changes, CollectConfig changes)
ARMS = {"full": [
    ("rpo default", "rpo", {}, {}),
    ("rpo + per-token means", "rpo", {"length_normalize": True}, {}),
    ("rpo + ref estimator", "rpo", {"estimator": "ref"}, {}),
    ("rpo + τ 5", "rpo", {"rpo_tau": 5.0}, {}),
    ("rpo + lr 1e-4", "rpo", {"lr": 1e-4}, {}),
    ("rpo + K 4", "rpo", {}, {"k": 4}),
    ("rpo + one epoch, warm-up throughout", "rpo", {"steps": 50, "warmup": 50}, {}),
    ("rpo + lr 1e-4 + per-token means", "rpo", {"lr": 1e-4, "length_normalize": True}, {}),
    ("rpo paper preset", "rpo-paper", {}, {}),
    ("rpo paper preset − per-token means", "rpo-paper", {"length_normalize": False}, {}),
    ("dro default", "dro", {}, {}),
    ("dro + shared value head", "dro-shared", {}, {}),
    ("dro paper preset", "dro-paper", {}, {}),
    ("kto default", "kto", {}, {}),
    ("kto paper preset", "kto-paper", {}, {})],
    "quick": [("rpo default", "rpo", {}, {}), ("rpo + ref estimator", "rpo", {"estimator": "ref"}, {}),
              ("dro + shared value head", "dro-shared", {}, {}), ("rpo paper preset", "rpo-paper", {}, {}),
              ("rpo paper preset − per-token means", "rpo-paper", {"length_normalize": False}, {})]}


# The arm each arm is compared with, where it is not its objective's default: per-token means
# added at the preset's learning rate, and removed from the preset, each against its own
# starting point, so that both differences are made at lr 1e-4.
AGAINST = {"rpo + lr 1e-4 + per-token means": "rpo + lr 1e-4",
           "rpo paper preset − per-token means": "rpo paper preset"}


def against(arm: str) -> str:
    return AGAINST.get(arm, f"{arm.split()[0]} default")


def run(ctx, arms) -> dict:
    jobs = [train_job(ctx, v, s, align, {"collect": collect} if collect else {}, row={"arm": label})
            for label, v, align, collect in arms for s in ctx.seeds]
    offsets = [Job(f"{__name__}:ref_offset", ctx.cfg(s, collect={"k": k}), s, "offset", params={"k": k})
               for s in ctx.seeds for k in (8, 4)]
    results = run_jobs(ctx, jobs + offsets)
    per = {}
    for job, res in zip(offsets, results[len(jobs):]):
        per.setdefault(str(job.params["k"]), []).append(res)
    return {"grid": {"arms": [a[0] for a in arms], "paper": PAPER["align"]}, "jobs": len(jobs) + len(offsets),
            "rows": make_rows(jobs, results[:len(jobs)]), "ref_offset": per}


def ref_offset(job) -> dict:
    """Mean over samples of the "ref" estimator's log Ẑ(x) at τ = 5 on z-scored rewards, with
    per-token-mean and with summed reference log-probs; and the "mean" estimator's, for scale."""
    m = materials(job.cfg)
    data, eot = m.data.value, m.enc.eot_token
    z = reward_scale(data.rewards, True)(data.rewards)  # the preset z-scores (PAPER's rewards_zscore)
    out = {"seed": job.seed}
    for name, norm in (("per_token", True), ("summed", False)):
        ref = response_logprobs(m.base.value, data.prompt_tokens, data.response_tokens, eot, norm,
                                autocast=m.ctx.autocast).double()
        out[f"ref_{name}"] = float(losses.log_partition(z, data.prompt_ids, 5.0, "ref", ref_logps=ref).mean())
    out["mean"] = float(losses.log_partition(z, data.prompt_ids, 5.0, "mean").mean())
    return out


def paired(d) -> dict:
    """Each arm − the arm it is compared with (`against`), paired by seed."""
    rows = {r["arm"]: r for r in d["rows"]}
    diffs = {}
    for arm, r in rows.items():
        base = rows.get(against(arm))
        if base is not None and base is not r:
            diffs[arm] = {k: paired_difference(r["per_seed"], base["per_seed"], k)
                          for k in ("reward", "gold", "gated_gold", "kl", "distinct_2", "fluency")}
    offset = {k: {c: pm(*mean_ci([p[c] for p in per])) for c in per[0] if c not in ("seed", "seconds")}
              for k, per in d["ref_offset"].items()}
    return {"minus_default": diffs, "ref_offset_summary": offset}


def plot(d, path):
    fig, axes = figure(2, (13, 4.6))
    arms = d["grid"]["arms"]
    rows = {r["arm"]: r for r in d["rows"]}
    colors = [COLORS.get(rows[a]["variant"].split("-")[0]) for a in arms]
    for ax, metric in zip(axes, ("gold", "kl")):
        ax.barh(range(len(arms)), [mean_of(rows[a], metric) for a in arms], xerr=[ci_of(rows[a], metric) for a in arms],
                color=colors, capsize=2)
        ax.set_yticks(range(len(arms)), arms, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(f"mean {metric} (test)" if metric != "kl" else "KL(π ‖ π_ref) (test)")
        if metric == "kl":
            ax.set_xscale("symlog", linthresh=1.0)
    fig.suptitle(f"paper preset, one factor at a time; mean ± 95% CI over {len(d['seeds'])} seeds")
    save(fig, path)


def markdown(d) -> str:
    rows = {r["arm"]: r for r in d["rows"]}
    lines = []
    for arm in d["grid"]["arms"]:
        r, diff = rows[arm], d["minus_default"].get(arm, {})
        lines.append([arm, against(arm) if diff else "—", *[pm(mean_of(r, m), ci_of(r, m)) for m in ("gold", "gated_gold")],
                      pm(mean_of(r, "kl"), ci_of(r, "kl"), ".2f"), pm(mean_of(r, "fluency"), ci_of(r, "fluency"), ".3f"),
                      *[pm(*diff[k]) if k in diff else "—" for k in ("gold", "kl", "fluency")]])
    offs = [[k, *[v for v in e.values()]] for k, e in sorted(d["ref_offset_summary"].items())]
    cols = list(next(iter(d["ref_offset_summary"].values())))
    return "\n".join([provenance(d), "", table(
        ["arm", "against", "gold", "gated gold", "KL", "fluency", "Δgold", "ΔKL", "Δfluency"], lines), "",
        "Δ = arm − the arm in its \"against\" column, paired by seed.", "",
        "Mean log Ẑ(x) at τ = 5 (z-scored rewards) by estimator and reference log-prob (mean ± CI over seeds):", "",
        table(["K", *cols], offs), "", "All rows:", "", metric_table(d["rows"], extra=("arm",))])


PAPER_PRESET = Experiment("paper", ARMS, run, plot, markdown, paired)
