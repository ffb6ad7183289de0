"""K: responses per prompt at a fixed number of samples (K × prompts = total).

RPO estimates each prompt's log-partition log Z(x) from that prompt's K rewards; DRO learns a
value V(x) instead. For each K: both objectives' test metrics, and how far RPO's log Ẑ(x) and
DRO's V(x)/τ are from log Z(x) estimated with many fresh π_ref samples per prompt.
"""

import dataclasses
import math

import torch

from rpo_mini import losses
from rpo_mini.data import reward_stats
from rpo_mini.evaluate import over_seeds
from rpo_mini.sampling import sample_responses

from .runner import Experiment, Job, materials, run_jobs, train_job
from .stats import make_rows
from .tables import COLORS, ci_of, figure, mean_of, pm, provenance, save, table

GRID = {"full": {"k": [2, 4, 8, 16], "total": 480, "reference_samples": 64},
        "quick": {"k": [2, 4], "total": 64, "reference_samples": 8}}


def run(ctx, g) -> dict:
    ks = [(k, g["total"] // k) for k in g["k"]]
    jobs = [train_job(ctx, v, s, sections={"collect": {"k": k, "n_prompts": n}}, values=v == "dro", row={"k": k})
            for k, n in ks for v in ("rpo", "dro") for s in ctx.seeds]
    refs = [Job(f"{__name__}:logz_reference", ctx.cfg(s, collect={"k": ks[0][0], "n_prompts": ks[0][1]}), s,
                "reference", params={"ks": ks, "samples": g["reference_samples"]}) for s in ctx.seeds]
    results = run_jobs(ctx, jobs + refs)
    train, ref = results[:len(jobs)], dict(zip(ctx.seeds, results[len(jobs):]))
    errors = []  # per K and seed: |estimate − log Z_ref| averaged over prompts, and the bias
    for job, res in zip(jobs, train):
        if job.variant == "dro" and "values" in res:
            k = job.params["row"]["k"]
            r = ref[job.seed][str(k)]
            errors.append({"k": k, "seed": job.seed, **_errors("dro_v", res["values"], r["logz_ref"]),
                           **_errors("rpo_logz", r["logz_hat"], r["logz_ref"])})
    summary = {}
    for k, _ in ks:
        per = [e for e in errors if e["k"] == k]
        mean, ci = over_seeds(per, [c for c in per[0] if c not in ("k", "seed")]) if per else ({}, {})
        summary[str(k)] = {"mean": mean, "ci": ci, "per_seed": per}
    return {"grid": {**g, "settings": ks}, "jobs": len(jobs) + len(refs), "rows": make_rows(jobs, train),
            "logz": summary}


def _errors(name, estimate, reference) -> dict:
    d = [a - b for a, b in zip(estimate, reference)]
    return {f"{name}_abs_err": sum(abs(x) for x in d) / len(d), f"{name}_bias": sum(d) / len(d)}


def logz_reference(job) -> dict:
    """log Z(x) from many π_ref samples per prompt, next to RPO's log Ẑ from each K dataset.

    Rewards are z-scored with each dataset's own mean and std, as `align.prepare` does, so
    both are in the units the objective trains with."""
    m = materials(job.cfg)
    enc, device = m.enc, m.ctx.device
    n_max, samples = max(n for _, n in job.params["ks"]), job.params["samples"]
    prompts = m.world.train_prompts[:n_max]
    toks = [enc.encode_ordinary(p) for p in prompts for _ in range(samples)]
    g = torch.Generator(device=device).manual_seed(job.seed + 7919)
    responses, _ = sample_responses(m.base.value, toks, enc.eot_token, job.cfg.collect.max_new_tokens, g,
                                    autocast=m.ctx.autocast)
    texts = [enc.decode([t for t in r if t != enc.eot_token]) for r in responses]
    owners = [p for p in prompts for _ in range(samples)]
    raw = torch.tensor([m.world.score(p, t)[m.reward] for p, t in zip(owners, texts)],
                       dtype=torch.float64).view(n_max, samples)
    out = {}
    for k, n in job.params["ks"]:
        cfg = dataclasses.replace(job.cfg, collect=dataclasses.replace(job.cfg.collect, k=k, n_prompts=n))
        data = materials(cfg).data.value
        tau = cfg.align.tau_for("rpo")
        mean, std = reward_stats(data.rewards) if cfg.align.rewards_zscore else (0.0, 1.0)
        log_z_hat = losses.log_partition((data.rewards - mean) / std, data.prompt_ids, tau, "mean")
        per_prompt = torch.zeros(n, dtype=torch.float64).index_copy(0, data.prompt_ids, log_z_hat)
        log_z_ref = torch.logsumexp((raw[:n] - mean) / std / tau, dim=1) - math.log(samples)
        out[str(k)] = {"logz_hat": per_prompt.tolist(), "logz_ref": log_z_ref.tolist()}
    return out


def plot(d, path):
    fig, axes = figure(2, (11, 4.2))
    for v in ("rpo", "dro"):
        rows = sorted((r for r in d["rows"] if r["variant"] == v), key=lambda r: r["k"])
        for metric, ls in (("gold", "-"), ("reward", ":")):
            axes[0].errorbar([r["k"] for r in rows], [mean_of(r, metric) for r in rows],
                             yerr=[ci_of(r, metric) for r in rows], fmt=ls + "o", capsize=2, color=COLORS[v],
                             label=f"{v} {metric}")
    axes[0].set_xlabel(f"K responses per prompt ({d['grid']['total']} samples in all)")
    axes[0].set_ylabel("mean reward (test)")
    axes[0].set_xscale("log", base=2)
    axes[0].legend(fontsize=8)
    ks = sorted(int(k) for k in d["logz"])
    for name, label, color in (("rpo_logz", "RPO log Ẑ(x)", COLORS["rpo"]), ("dro_v", "DRO V(x)/τ", COLORS["dro"])):
        s = [d["logz"][str(k)] for k in ks]
        axes[1].errorbar(ks, [x["mean"].get(f"{name}_abs_err") for x in s],
                         yerr=[x["ci"].get(f"{name}_abs_err") or 0 for x in s], fmt="-o", capsize=2, color=color,
                         label=f"{label}: mean |error|")
        axes[1].plot(ks, [x["mean"].get(f"{name}_bias") for x in s], ":", color=color, label=f"{label}: mean error")
    axes[1].axhline(0, color="0.7", lw=0.8)
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("K responses per prompt")
    axes[1].set_ylabel(f"vs log Z from {d['grid']['reference_samples']} π_ref samples (nats)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"k: fixed sample budget; mean ± 95% CI over {len(d['seeds'])} seeds")
    save(fig, path)


def markdown(d) -> str:
    lines = []
    for k in sorted(int(k) for k in d["logz"]):
        rows = {r["variant"]: r for r in d["rows"] if r["k"] == k}
        z = d["logz"][str(k)]
        lines.append([k, d["grid"]["total"] // k,
                      *[pm(mean_of(rows[v], m), ci_of(rows[v], m)) for v in ("rpo", "dro") for m in ("gold", "kl")],
                      *[pm(z["mean"].get(f"{n}_{e}"), z["ci"].get(f"{n}_{e}")) for n in ("rpo_logz", "dro_v")
                        for e in ("abs_err", "bias")]])
    return "\n".join([provenance(d), "", table(
        ["K", "prompts", "RPO gold", "RPO KL", "DRO gold", "DRO KL", "RPO log Ẑ |err|", "RPO log Ẑ bias",
         "DRO V/τ |err|", "DRO V/τ bias"], lines), "",
        f"Errors are against log Z(x) from {d['grid']['reference_samples']} fresh π_ref samples per prompt "
        "(itself a mean estimate), in nats, averaged over the training prompts; bias = mean signed error."])


K = Experiment("k", GRID, run, plot, markdown)
