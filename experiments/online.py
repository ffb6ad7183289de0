"""Offline once or online every step: the online family against RPO at equal generation counts
(exact world).

RPO estimates each prompt's shift once, from K = 8 responses π_ref wrote (1,600 generations for
200 training prompts), and trains on those responses for every step. The online family samples
the policy being trained afresh every step (batch_size generations per step) and takes the shift
from the fresh group — its mean (Dr. GRPO), its mean and std (GRPO), the others' mean (RLOO), or
its log-mean-exp (online RPO, `mean` or `loo`) — or, A*-PO, from π_ref's dataset once (V̂* at
β₁ = τ) with one fresh sample per prompt per step. DRO learns it, offline and on fresh groups.
Every variant optimises the KL-regularised reward at one τ, so each is measured by its exact
regret τ·KL(π‖π*_τ) on the test prompts, every `every` steps, against the generations spent so far
(the dataset's, for the variants that read it, plus the fresh ones).

Each variant gets the same learning-rate grid (equal tuning budgets); a replicate's learning rate
is chosen on the validation prompts' exact regret at the end, and the test regret reported.
"""

import time

from rpo_mini import exact, stages
from rpo_mini.align import Alignment
from rpo_mini.data import reward_scale
from rpo_mini.evaluate import mean_ci

from .runner import VARIANTS as OBJECTIVE_OF, Experiment, Job, materials, run_jobs, test_oracle, val_oracle
from .tables import COLORS, figure, pm, provenance, save, table

WORLD = "arithmetic"
# offline RPO and DRO (π_ref's K = 8 dataset) and the online family (`runner.VARIANTS` says what each runs)
ONLINE = ("apo", "rpo-online", "rpo-online-loo", "rloo", "grpo", "dr-grpo", "dro-online")
VARIANTS = ("rpo", "dro", *ONLINE)

GRID = {"full": {"tau": 0.3, "lrs": [1e-4, 3e-4], "steps": 150, "every": 25, "group_size": 4},
        "quick": {"tau": 0.3, "lrs": [3e-4], "steps": 4, "every": 2, "group_size": 4}}


def run(ctx, g) -> dict:
    jobs = [_job(ctx, s, v, lr, g) for s in ctx.seeds for v in VARIANTS for lr in g["lrs"]]
    results = run_jobs(ctx, jobs)
    return {"grid": g, "jobs": len(jobs), "runs": [{"variant": j.variant, **j.setting, **r} for j, r in zip(jobs, results)]}


def fresh_settings(tau, group_size) -> dict:
    """The AlignConfig changes a comparison of the online family runs with: one τ for every
    objective (A*-PO's β₁ = β₂ = τ, so that its target is RPO's) and the size of the fresh groups."""
    return {"tau": tau, "apo_beta1": tau, "group_size": group_size}


def _job(ctx, seed, variant, lr, g) -> Job:
    obj, overrides = OBJECTIVE_OF[variant]
    align = {**overrides, "steps": g["steps"], "lr": lr, **fresh_settings(g["tau"], g["group_size"])}
    cfg = ctx.cfg(seed, WORLD, align=align)
    return Job(f"{__name__}:track", cfg, seed, variant, {"lr": lr}, params={"objective": obj, "every": g["every"]})


# --- the task: train one run, measure it along the way ----------------------------------------

def track(job) -> dict:
    m = materials(job.cfg)
    cfg, p, data = job.cfg.align, job.params, m.data.value
    obj = p["objective"]
    scale = reward_scale(data.rewards, cfg.rewards_zscore)
    tau_raw = scale.raw_tau(cfg.tau_for(obj))
    test, val = test_oracle(m), val_oracle(m)
    a = Alignment(obj, m.base.value, data, cfg, cfg.lr_for(obj), cfg.tau_for(obj), job.seed, m.enc.eot_token,
                  m.ctx.autocast, fresh=stages.fresh_sampling(m.world, m.tok, job.cfg.collect))
    t0 = time.perf_counter()
    checkpoints = sorted(set(range(0, cfg.steps + 1, p["every"])) | {cfg.steps})
    trace = []
    for step in checkpoints:
        a.train(until=step, log=lambda *x, **k: None)
        a.policy.eval()
        c = exact.compare(test, test.table(a.policy, m.ctx.autocast), tau_raw)
        trace.append({"step": step, "generations": sum(a.history["generations"].values()),
                      **{k: c[k] for k in ("regret", "exact_kl", "exact_reward", "exact_gold", "frontier_gap")}})
    val_regret = exact.compare(val, val.table(a.policy, m.ctx.autocast), tau_raw)["regret"]
    rows = a.history["train"]
    stats = {k: sum(r[k] for r in rows) / len(rows) for k in ("zero_variance_groups", "entropy", "adv_std")
             if rows and k in rows[0]}
    return {"seed": job.seed, "tau_raw": tau_raw, "ref_regret": exact.compare(test, test.ref, tau_raw)["regret"],
            "val_regret": val_regret, "trace": trace, "train_stats": stats,
            "seconds": time.perf_counter() - t0, "generations": a.history["generations"]}


# --- analysis ---------------------------------------------------------------------------------

def _runs(d, variant, lr):
    return {r["seed"]: r for r in d["runs"] if r["variant"] == variant and r["lr"] == lr}


def tuned(d) -> dict:
    """Per variant: each replicate's learning rate chosen on validation regret, its final test
    regret, and the difference to offline RPO's (tuned the same way), paired by replicate."""
    picks = {}
    for v in VARIANTS:
        by_seed = {}
        for lr in d["grid"]["lrs"]:
            for s, r in _runs(d, v, lr).items():
                if s not in by_seed or r["val_regret"] < by_seed[s]["val_regret"]:
                    by_seed[s] = r
        picks[v] = by_seed
    out = {}
    for v, by_seed in picks.items():
        final = {s: r["trace"][-1] for s, r in by_seed.items()}
        diff = [final[s]["regret"] - picks["rpo"][s]["trace"][-1]["regret"] for s in final if s in picks["rpo"]]
        out[v] = {"lr": {str(s): r["lr"] for s, r in by_seed.items()},
                  **{k: list(mean_ci([f[k] for f in final.values()])) for k in ("regret", "exact_kl", "exact_reward")},
                  "generations": list(mean_ci([f["generations"] for f in final.values()])),
                  "d_regret_vs_rpo": list(mean_ci(diff))}
    return out


def at_generations(d) -> dict:
    """Test regret at the dataset's generation count (K × prompts): offline RPO's final regret
    against each online variant's at its checkpoint nearest that count (the same lr), paired."""
    out = {}
    for lr in d["grid"]["lrs"]:
        rpo = _runs(d, "rpo", lr)
        budget = next(iter(rpo.values()))["trace"][-1]["generations"]
        row = {"budget": budget}
        for v in ONLINE:
            runs = _runs(d, v, lr)
            near = {s: min(r["trace"], key=lambda c: abs(c["generations"] - budget)) for s, r in runs.items()}
            row[v] = {"generations": list(mean_ci([c["generations"] for c in near.values()])),
                      "regret": list(mean_ci([c["regret"] for c in near.values()])),
                      "d_regret_vs_rpo": list(mean_ci([near[s]["regret"] - rpo[s]["trace"][-1]["regret"]
                                                       for s in near if s in rpo]))}
        out[str(lr)] = row
    return out


def trajectories(d) -> dict:
    """Mean over replicates of the test regret at every checkpoint: {"variant/lr": [{step, generations, regret}]}."""
    out = {}
    for v in VARIANTS:
        for lr in d["grid"]["lrs"]:
            traces = [r["trace"] for r in _runs(d, v, lr).values()]
            if traces:
                n = min(len(t) for t in traces)
                out[f"{v}/{lr}"] = [{k: sum(t[i][k] for t in traces) / len(traces) for k in traces[0][i]}
                                    for i in range(n)]
    return out


def train_stats(d) -> dict:
    """Mean over the run and the replicates of what online trainers log (zero-variance groups,
    entropy, advantage spread), per variant and lr."""
    out = {}
    for v in VARIANTS:
        for lr in d["grid"]["lrs"]:
            stats = [r["train_stats"] for r in _runs(d, v, lr).values() if r["train_stats"]]
            if stats:
                out[f"{v}/{lr}"] = {k: list(mean_ci([s[k] for s in stats])) for k in stats[0]}
    return out


def summary(d) -> dict:
    ref = [r["ref_regret"] for r in d["runs"]]
    return {"tuned": tuned(d), "at_generations": at_generations(d), "trajectories": trajectories(d),
            "train_stats": train_stats(d), "reference": {"regret": sum(ref) / len(ref)}}


def plot(d, path):
    lrs = d["grid"]["lrs"]
    fig, axes = figure(len(lrs) + 1, (6 * (len(lrs) + 1), 4.6))
    colors = {v: COLORS.get(OBJECTIVE_OF[v][0]) for v in VARIANTS}
    styles = {"rpo-online-loo": ":", "dr-grpo": ":", "dro-online": "--", "rpo-online": "--"}
    tr = d["trajectories"]
    for ax, lr in zip(axes, lrs):
        for v in VARIANTS:
            t = tr.get(f"{v}/{lr}")
            if not t:
                continue
            if v in ONLINE:
                ax.plot([c["generations"] for c in t], [c["regret"] for c in t], styles.get(v, "-"), marker=".",
                        color=colors[v], label=v)
            else:  # offline: all its generations are spent before the first step
                ax.plot(t[-1]["generations"], t[-1]["regret"], marker="s", ms=9, ls="none", color=colors[v],
                        label=f"{v} (offline, end)")
        ax.axhline(d["reference"]["regret"], color="0.5", ls=":", label="π_ref")
        ax.set_xlabel("generations spent (responses sampled and scored)")
        ax.set_ylabel("test regret τ·KL(π‖π*_τ) (raw reward units)")
        ax.set_title(f"lr {lr:g} (mean over replicates)")
    axes[0].legend(fontsize=7)
    tu = d["tuned"]
    names = list(VARIANTS)
    axes[-1].bar(range(len(names)), [tu[v]["regret"][0] for v in names], yerr=[tu[v]["regret"][1] for v in names],
                 color=[colors[v] for v in names], capsize=3)
    axes[-1].axhline(d["reference"]["regret"], color="0.5", ls=":")
    axes[-1].set_xticks(range(len(names)), names, rotation=40, ha="right")
    axes[-1].set_ylabel("test regret at the end")
    axes[-1].set_title("tuned per replicate on validation")
    fig.suptitle(f"online (exact world, τ = {d['grid']['tau']:g}): {len(d['seeds'])} full replicates")
    save(fig, path)


def markdown(d) -> str:
    tu, ag = d["tuned"], d["at_generations"]
    out = [provenance(d), "",
           f"Test regret at τ = {d['grid']['tau']:g} after {d['grid']['steps']} steps, each replicate's lr chosen on "
           f"validation regret from {d['grid']['lrs']} (π_ref's test regret {d['reference']['regret']:.4f}); "
           f"Δ = variant − offline RPO, paired by replicate:", "",
           table(["variant", "lr chosen", "generations", "test regret", "Δ regret vs rpo", "KL(π‖π_ref)", "E[r]"],
                 [[v, ", ".join(f"{x:g}" for x in tu[v]["lr"].values()), f"{tu[v]['generations'][0]:,.0f}",
                   pm(*tu[v]["regret"], ".4f"), pm(*tu[v]["d_regret_vs_rpo"], "+.4f"), pm(*tu[v]["exact_kl"], ".3f"),
                   pm(*tu[v]["exact_reward"], ".3f")] for v in VARIANTS]), ""]
    for lr, row in ag.items():
        out += [f"At offline RPO's budget ({row['budget']:,} generations, lr {float(lr):g}): each online variant's "
                f"test regret at its checkpoint nearest that count, against offline RPO's final:", "",
                table(["variant", "generations", "test regret", "Δ regret vs rpo"],
                      [[v, f"{row[v]['generations'][0]:,.0f}", pm(*row[v]["regret"], ".4f"),
                        pm(*row[v]["d_regret_vs_rpo"], "+.4f")] for v in ONLINE]), ""]
    ts = d["train_stats"]
    keys = ("zero_variance_groups", "adv_std", "entropy")
    out += ["What online trainers log, mean over training and replicates:", "",
            table(["run", *keys], [[k, *[pm(*v[x], ".3f") if x in v else "—" for x in keys]] for k, v in ts.items()])]
    return "\n".join(out)


ONLINE_EXPERIMENT = Experiment("online", GRID, run, plot, markdown, summary)
