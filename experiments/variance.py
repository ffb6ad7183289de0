"""Variance: does DRO's learned value add gradient variance, and is RPO more stable?

    spread   along RPO's and DRO's training at one learning rate (the grid's trajectory_lr, for
             both: neither trajectory moves farther only because it steps farther), at init,
             mid-training and the end, the spread of the policy gradient over random minibatches at those fixed parameters, for
             several baselines on the SAME minibatches: rpo (τ log Ẑ(x)), none (0: target
             r/τ) and, on DRO's trajectory, dro (its V_φ(x)). At fixed parameters a learned
             value adds no estimation noise, so this cannot show the paper's claim; it is
             kept with its scale-free form (trace Cov / ‖mean gradient‖²) next to:
    agreement  each method on its own trajectory: the cosine between each minibatch gradient
             and the full-batch gradient (every training sample) at the same parameters
    curves   training loss and gradient norm of every step, mean ± CI over seeds
    stress   RPO and DRO at larger learning rates: how often a run diverges (non-finite loss)
             or collapses (test fluency below COLLAPSE), and why RPO's KL barely moves: the
             mass its targets ask for on the observed responses (`inflation`)
"""

import torch

from rpo_mini.align import Alignment
from rpo_mini.evaluate import mean_ci, over_seeds

from .runner import Experiment, Job, materials, quiet, run_jobs, train_job
from .stats import GradientSpread, make_rows
from .tables import COLORS, figure, pm, provenance, save, smooth, table

GRID = {"full": {"batches": 32, "trajectory_lr": 1e-4, "lrs": [1e-4, 3e-4, 1e-3, 3e-3]},
        "quick": {"batches": 4, "trajectory_lr": 1e-4, "lrs": [1e-4, 3e-3]}}
COLLAPSE = 0.5  # a run whose test fluency ends below this counts as collapsed


def run(ctx, g) -> dict:
    traj = [Job(f"{__name__}:trajectory", ctx.cfg(s), s, v, params={"batches": g["batches"], "lr": g["trajectory_lr"]})
            for v in ("rpo", "dro") for s in ctx.seeds]
    lr_jobs = [train_job(ctx, v, s, {"lr": lr}, values=v == "dro", inflation=True) for v in ("rpo", "dro")
               for lr in g["lrs"] for s in ctx.seeds]
    results = run_jobs(ctx, traj + lr_jobs)
    tr, lr_res = results[:len(traj)], results[len(traj):]
    spread = {}
    for job, res in zip(traj, tr):
        for p in res["points"]:
            spread.setdefault((job.variant, p["step"], p["estimator"]), []).append({"seed": job.seed, **p})
    points = []
    for (v, step, est), per in spread.items():
        mean, ci = over_seeds(per, [k for k in ("trace_cov", "mean_grad_sq", "noise_to_signal", "cosine_to_full")
                                    if k in per[0]])
        points.append({"trajectory": v, "step": step, "estimator": est, "mean": mean, "ci": ci, "per_seed": per})
    curves = {}
    for v in ("rpo", "dro"):
        runs = [res for job, res in zip(traj, tr) if job.variant == v]
        curves[v] = {k: [list(mean_ci([r[k][i] for r in runs])) for i in range(len(runs[0][k]))]
                     for k in ("loss", "grad_norm")}
    rows = make_rows(lr_jobs, lr_res)
    for row in rows:
        row["n_collapsed"] = sum(1 for r in row["per_seed"] if not r.get("diverged") and r["fluency"] < COLLAPSE)
    return {"grid": g, "jobs": len(traj) + len(lr_jobs), "spread": points, "curves": curves, "rows": rows,
            "collapse_fluency": COLLAPSE}


def trajectory(job) -> dict:
    """Train RPO or DRO at the job's learning rate, snapshotting the parameters at steps 0,
    steps/2 and steps; then, at each snapshot, the gradient spread of each baseline on the same
    minibatches."""
    m = materials(job.cfg)
    obj, cfg = job.variant, job.cfg.align
    lr, tau, eot = job.params["lr"], cfg.tau_for(obj), m.enc.eot_token
    base, data = m.base.value, m.data.value
    a = Alignment(obj, base, data, cfg, lr, tau, job.seed, eot, m.ctx.autocast)
    snaps = []
    for step in dict.fromkeys((0, cfg.steps // 2, cfg.steps)):
        a.train(log=quiet, until=step)
        snaps.append((step, {name: {k: t.detach().clone() for k, t in mod.state_dict().items()}
                             for name, mod in a.modules.items()}))
    a.policy.train()  # measured as trained: in training mode
    # The rpo and none baselines: RPO's loss with the trajectory's τ, with log Ẑ(x) and with 0.
    r = a if obj == "rpo" else Alignment("rpo", base, data, cfg, lr, tau, job.seed, eot, m.ctx.autocast)
    rpo_fixed = r.fixed
    baselines = {"rpo": (r, rpo_fixed), "none": (r, rpo_fixed | {"log_z": torch.zeros_like(rpo_fixed["log_z"])})}
    if obj == "dro":
        baselines["dro"] = (a, a.fixed)
    points = []
    for step, snap in snaps:
        for name, mod in a.modules.items():
            mod.load_state_dict(snap[name])
        r.policy.load_state_dict(snap["policy"])
        for est, (alignment, fixed) in baselines.items():
            alignment.fixed = fixed
            full = full_batch_gradient(alignment) if est == obj else None
            stats = minibatch_gradient_stats(alignment, job.params["batches"], seed=job.seed, full=full)
            points.append({"step": step, "estimator": est, **stats})
        r.fixed = rpo_fixed
    history = a.history["train"]
    return {"seed": job.seed, "points": points, "loss": [h["loss"] for h in history],
            "grad_norm": [h["grad_norm"] for h in history]}


def _policy_gradient(a: Alignment, idx: torch.Tensor) -> torch.Tensor:
    """The gradient of the alignment's loss on the samples `idx` w.r.t. the policy's parameters,
    flattened (float64); no gradient is left behind."""
    for mod in a.modules.values():
        mod.zero_grad(set_to_none=True)
    loss, _ = a.loss(idx)
    loss.backward()
    grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().double()
                      for p in a.policy.parameters() if p.requires_grad])
    for mod in a.modules.values():
        mod.zero_grad(set_to_none=True)
    return grad


def full_batch_gradient(a: Alignment) -> torch.Tensor:
    """The gradient of the mean loss over every training sample (minibatch-sized chunks, weighted
    by their size: every loss here is a mean over its batch)."""
    index = a.fixed["index"]
    total = None
    for s in range(0, len(index), a.cfg.batch_size):
        idx = index[s:s + a.cfg.batch_size]
        g = _policy_gradient(a, idx) * len(idx)
        total = g if total is None else total + g
    return total / len(index)


def minibatch_gradient_stats(a: Alignment, n_batches: int, seed: int = 0, full: torch.Tensor | None = None) -> dict:
    """The policy gradient of the alignment's loss (`a.loss`, its objective and `a.fixed`) on
    n_batches random minibatches of its batch size, drawn with `seed` (the same minibatches for
    every call with the same seed and dataset), at the current parameters; their spread by
    `GradientSpread`; with `full` (the full-batch gradient), each one's cosine to it."""
    g = torch.Generator().manual_seed(seed * 7 + 11)
    index, spread, cosines = a.fixed["index"], GradientSpread(), []
    for _ in range(n_batches):
        grad = _policy_gradient(a, index[torch.randperm(len(index), generator=g)[:a.cfg.batch_size]])
        spread.add(grad)
        if full is not None:
            cosines.append(float(grad @ full / (grad.norm() * full.norm()).clamp(min=1e-300)))
    return spread.stats() | ({"cosine_to_full": sum(cosines) / len(cosines)} if cosines else {})


def plot(d, path):
    fig, axes = figure(4, (17, 4))
    for traj, ls in (("rpo", "-"), ("dro", "--")):
        for est in ("rpo", "dro", "none"):
            pts = sorted((p for p in d["spread"] if p["trajectory"] == traj and p["estimator"] == est),
                         key=lambda p: p["step"])
            if pts:
                axes[0].errorbar([p["step"] for p in pts], [p["mean"]["trace_cov"] for p in pts],
                                 yerr=[p["ci"]["trace_cov"] or 0 for p in pts], fmt=ls + "o", capsize=2,
                                 color=COLORS[est], label=f"{est} baseline on {traj}'s path")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("training step (parameters fixed there)")
    axes[0].set_ylabel("trace Cov of minibatch gradient")
    axes[0].legend(fontsize=7)
    for ax, key, label in ((axes[1], "loss", "training loss"), (axes[2], "grad_norm", "gradient norm (pre-clip)")):
        for v in ("rpo", "dro"):
            mc = d["curves"][v][key]
            w = max(1, len(mc) // 25)  # a moving average over w steps keeps the plot readable
            mean, ci = smooth([m for m, _ in mc], w), smooth([c or 0 for _, c in mc], w)
            steps = range(w, len(mc) + 1)
            ax.plot(steps, mean, color=COLORS[v], label=v)
            ax.fill_between(steps, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)],
                            color=COLORS[v], alpha=0.25)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(label + (f", {w}-step moving average" if w > 1 else ""))
        ax.legend(fontsize=8)
    lrs = d["grid"]["lrs"]
    width = 0.38
    for i, v in enumerate(("rpo", "dro")):
        rows = {r["setting"]["lr"]: r for r in d["rows"] if r["variant"] == v}
        fail = [(rows[lr]["n_diverged"] + rows[lr]["n_collapsed"]) / rows[lr]["n_seeds"] for lr in lrs]
        axes[3].bar([j + (i - 0.5) * width for j in range(len(lrs))], fail, width, color=COLORS[v], label=v)
    axes[3].set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    axes[3].set_xlabel("learning rate")
    axes[3].set_ylabel(f"share of runs diverged or fluency < {d['collapse_fluency']}")
    axes[3].set_ylim(0, 1.05)
    axes[3].legend(fontsize=8)
    fig.suptitle(f"variance and stability: mean ± 95% CI over {len(d['seeds'])} seeds")
    save(fig, path)


def markdown(d) -> str:
    lines = [[p["trajectory"], p["step"], p["estimator"], pm(p["mean"]["trace_cov"], p["ci"]["trace_cov"], ".4g"),
              pm(p["mean"]["mean_grad_sq"], p["ci"]["mean_grad_sq"], ".4g"),
              pm(p["mean"]["noise_to_signal"], p["ci"]["noise_to_signal"], ".3g"),
              pm(p["mean"].get("cosine_to_full"), p["ci"].get("cosine_to_full"), ".3f")]
             for p in sorted(d["spread"], key=lambda p: (p["trajectory"], p["step"], p["estimator"]))]
    fails = [[r["variant"], f"{r['setting']['lr']:g}", f"{r['n_diverged']}/{r['n_seeds']}",
              f"{r['n_collapsed']}/{r['n_seeds']}", pm(r["mean"].get("fluency"), r["ci"].get("fluency"), ".3f"),
              pm(r["mean"].get("gold"), r["ci"].get("gold")), pm(r["mean"].get("kl"), r["ci"].get("kl"), ".2f"),
              *[pm(r["mean"].get(k), r["ci"].get(k), "+.2f") for k in ("target_inflation", "fit_inflation")]]
             for r in d["rows"]]
    fin = {v: [d["curves"][v][k][-1][0] for k in ("loss", "grad_norm")] for v in d["curves"]}
    return "\n".join([provenance(d), "",
                      f"Spread of the policy gradient over {d['grid']['batches']} minibatches at fixed parameters "
                      f"along RPO's and DRO's training, both at lr {d['grid']['trajectory_lr']:g} (same minibatches "
                      "for every baseline; mean ± CI over seeds):", "",
                      table(["trajectory", "step", "baseline", "trace Cov", "‖mean grad‖²", "trace Cov / ‖mean‖²",
                             "cos(minibatch, full batch)"], lines), "",
                      f"Final training loss / gradient norm at lr {d['grid']['trajectory_lr']:g} (mean over seeds): " +
                      ", ".join(f"{v} {a:.4g} / {b:.4g}" for v, (a, b) in fin.items()) + ".", "",
                      f"Learning-rate stress test (diverged = non-finite loss; collapsed = test fluency < "
                      f"{d['collapse_fluency']}):", "",
                      table(["objective", "lr", "diverged", "collapsed", "fluency", "gold", "KL",
                             "target inflation", "realised inflation"], fails), "",
                      "Inflation (nats, mean over training prompts): log (1/K) Σ_i e^{t_i} of the targets t_i the "
                      "objective regresses each prompt's observed log-ratios onto (RPO: r_i/τ − log Ẑ(x); DRO: "
                      "(r_i − V(x))/τ), and the same of the log-ratios the trained policy actually has on them. 0: "
                      "the observed responses keep π_ref's total mass; > 0: they are asked to gain mass taken from "
                      "every response never observed."])


VARIANCE = Experiment("variance", GRID, run, plot, markdown)
