"""The report: the comparison table, metrics.json, report.md and the PNG plots.

Everything here is drawn from the values it is handed — nothing is read from disk because it
happens to be there.
"""

import json
import os

from matplotlib.figure import Figure  # figures straight to files; no pyplot state, any backend

from .align import OBJECTIVES
from .evaluate import over_seeds
from .files import atomic_open, write_json

COLORS = {"reference": "0.4", **{o.name: o.color for o in OBJECTIVES.values()}}  # the one palette
COLUMNS = [("reward", "reward"), ("gold", "gold"), ("win_rate", "win vs ref"), ("kl", "KL"),
           ("distinct_1", "dist-1"), ("distinct_2", "dist-2"), ("toxicity_rate", "toxic"),
           ("fluency", "fluent"), ("length", "words"),
           # an exact world's sums over every response (rpo_mini/exact.py)
           ("exact_reward", "exact r"), ("exact_kl", "exact KL"), ("own_tau", "τ raw"),
           ("kl_to_own_optimum", "KL to π*"), ("regret", "regret"), ("ref_regret", "ref regret"),
           ("seconds", "time s"), ("generations", "generated")]  # responses sampled and scored


def aggregate(runs: dict) -> dict:
    """Per policy: each metric's mean over seeds, its 95% interval and the per-seed values.

    One seed: the interval over test prompts from that run. Several seeds: the interval of
    the per-seed values (seed-to-seed variation, which is what a reader should trust)."""
    policies = {}
    for name, per_seed in runs.items():
        row = {"n_seeds": len(per_seed)}
        mean, ci = over_seeds(per_seed)
        for key in mean:
            row[key], row[key + "_ci"], row[key + "_per_seed"] = mean[key], ci[key], [r[key] for r in per_seed]
        row["samples"] = per_seed[0].get("samples", [])
        row["checkpoints"] = [r["checkpoint"] for r in per_seed if "checkpoint" in r]
        policies[name] = row
    return {"policies": policies}


def table(metrics: dict) -> str:
    """A fixed-width text table: one row per policy, reward with its 95% interval."""
    cols = [(k, label) for k, label in COLUMNS
            if any(k in row for row in metrics["policies"].values())]
    header = f"{'policy':<10}" + "".join(f"{label:>16}" if k == "reward" else f"{label:>11}" for k, label in cols)
    lines = [header, "-" * len(header)]
    for name, row in metrics["policies"].items():
        cells = []
        for k, _ in cols:
            v = row.get(k)
            if v is None:
                cells.append(f"{'':>11}")
            elif k == "reward":
                cells.append(f"{v:>+9.3f} ±{row.get('reward_ci', float('nan')):5.3f}")
            elif k == "seconds":
                cells.append(f"{v:>11.1f}")
            elif k == "generations":
                cells.append(f"{v:>11,.0f}")
            else:
                cells.append(f"{v:>11.3f}")
        lines.append(f"{name:<10}" + "".join(cells))
    return "\n".join(lines)


def plot_training(histories: dict, path: str) -> None:
    """Loss, gradient norm and validation reward over steps, per objective (seeds overlaid)."""
    fig = Figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    for obj, runs in histories.items():
        for i, h in enumerate(runs):
            steps = [r["step"] for r in h["train"]]
            kw = {"color": COLORS.get(obj), "alpha": 0.8, "label": obj if i == 0 else None}
            axes[0].plot(steps, [r["loss"] for r in h["train"]], **kw)
            axes[1].plot(steps, [r["grad_norm"] for r in h["train"]], **kw)
            axes[2].plot([p["step"] for p in h["probe"]], [p["reward"] for p in h["probe"]], marker="o", **kw)
    for ax, title, ylabel in zip(axes, ("training loss", "gradient norm (before clipping)", "validation reward"),
                                 ("loss", "‖g‖", "mean reward")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.legend()
    axes[0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


ONLINE_PANELS = (("reward", "reward of the fresh samples", "mean raw reward"),
                 ("log_ratio", "KL estimate of the fresh samples", "mean log π/π_ref (nats)"),
                 ("zero_variance_groups", "groups whose rewards are all equal", "fraction of prompts"),
                 ("adv_std", "advantage spread (RLOO, GRPO)", "std of A"),
                 ("entropy", "entropy estimate", "−mean log π(y|x) (nats)"))


def plot_online(histories: dict, path: str) -> bool:
    """What users of online trainers ask about, per step, against the generations spent: the fresh
    samples' reward, their KL estimate, the share of zero-variance groups, the advantages' spread
    and the entropy. False (nothing drawn) when no objective trained on fresh samples."""
    online = {o: runs for o, runs in histories.items() if runs and runs[0]["train"]
              and "generations" in runs[0]["train"][0]}
    if not online:
        return False
    fig = Figure(figsize=(18, 3.8))
    axes = fig.subplots(1, len(ONLINE_PANELS))
    for obj, runs in online.items():
        for i, h in enumerate(runs):
            spent = [sum(r["generations"] for r in h["train"][:j + 1]) for j in range(len(h["train"]))]
            kw = {"color": COLORS.get(obj), "alpha": 0.8, "label": obj if i == 0 else None}
            for ax, (key, _, _) in zip(axes, ONLINE_PANELS):
                if key in h["train"][0]:
                    ax.plot(spent, [r[key] for r in h["train"]], **kw)
    for ax, (_, title, ylabel) in zip(axes, ONLINE_PANELS):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("generations spent in training")
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def plot_reward_kl(metrics: dict, histories: dict, path: str, sweep: dict | None = None) -> None:
    """Reward against KL(π‖π_ref): each objective's path through training (validation probes),
    its final test point with 95% intervals, and its sweep curve over τ/β when one was run."""
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    for obj, runs in histories.items():
        for i, h in enumerate(runs):
            ax.plot([p["kl"] for p in h["probe"]], [p["reward"] for p in h["probe"]], ":", marker=".",
                    color=COLORS.get(obj), alpha=0.6)
    for name, row in metrics["policies"].items():
        ax.errorbar(row["kl"], row["reward"], xerr=row.get("kl_ci"), yerr=row.get("reward_ci"), fmt="o",
                    ms=8, capsize=3, color=COLORS.get(name), label=name)
    for obj, points in (sweep or {}).items():
        pts = sorted((p["kl"], p["reward"]) for p in points)
        ax.plot(*zip(*pts), "-", color=COLORS.get(obj), alpha=0.5, lw=2)
    ax.set_xlabel("KL(π ‖ π_ref)  (nats per response)")
    ax.set_ylabel("mean reward")
    ax.set_title("reward vs KL (dotted: validation during training; dots: test)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_exact_frontier(metrics: dict, path: str) -> None:
    """An exact world's optimal reward–KL frontier (π*_τ over a grid of τ) with every policy's
    exact point: no policy can lie above the curve."""
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    ex = metrics["exact"]
    front = sorted((p["kl"], p["reward"]) for p in ex["frontier"])
    ax.plot(*zip(*front), "-", color="black", lw=1.5, label="optimal frontier π*_τ")
    for opt in ex["optimal"]:
        ax.plot(opt["exact_kl"], opt["exact_reward"], "*", ms=14, color="black",
                label=f"π*_τ at τ = {opt['tau']:g} ({', '.join(o for o, t in ex['taus'].items() if t == opt['tau'])})")
    for name, row in metrics["policies"].items():
        ax.errorbar(row["exact_kl"], row["exact_reward"], xerr=row.get("exact_kl_ci"), yerr=row.get("exact_reward_ci"),
                    fmt="o", ms=8, capsize=3, color=COLORS.get(name), label=name)
    ax.set_xlabel("KL(π ‖ π_ref), exact  (nats per response)")
    ax.set_ylabel("E_π[reward], exact")
    ax.set_title(f"exact reward vs KL on {ex['prompts']} test prompts")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_reward_distributions(data, path: str, n_prompts: int = 12) -> None:
    """The dataset's rewards for a dozen prompts side by side: they differ in mean and spread."""
    by_prompt = {}
    for rec in data.records:
        by_prompt.setdefault(rec["prompt"], []).append(rec["reward"])
    prompts = list(by_prompt)[:n_prompts]
    prompts.sort(key=lambda p: sum(by_prompt[p]) / len(by_prompt[p]))
    fig = Figure(figsize=(10, 4.5))
    ax = fig.subplots()
    ax.boxplot([by_prompt[p] for p in prompts], showmeans=True)
    for i, p in enumerate(prompts, 1):
        ax.scatter([i] * len(by_prompt[p]), by_prompt[p], s=10, alpha=0.5, color="tab:blue")
    ax.set_xticks(range(1, len(prompts) + 1), [p.replace(" at the ", "\n@ ") for p in prompts],
                  rotation=60, fontsize=7, ha="right")
    ax.set_ylabel("reward")
    ax.set_title("per-prompt reward distributions of the dataset (sorted by prompt mean)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def exact_note(ex: dict) -> list[str]:
    """What the exact columns mean, for report.md."""
    taus = ", ".join(f"{o} τ = {t:g}" for o, t in ex["taus"].items())
    return [f"Exact columns: sums over every response to the {ex['prompts']} test prompts (no sampling). "
            f"`exact r` = E_π[{ex['reward']}] (E_π[gold] is `exact_gold` in metrics.json), `exact KL` = KL(π‖π_ref). "
            "`KL to π*` and `regret` = J*_τ − J_τ(π) = τ·KL(π‖π*_τ) are at each policy's own τ "
            f"({taus or 'none trained'} on z-scored rewards, times the rewards' std "
            f"{ex['reward_scale']:.4g} in reward units: the `τ raw` column); KTO and SFT have no τ and are "
            "measured at the τ whose optimum spends their KL. `ref regret` is π_ref's regret at the same τ.", ""]


def write_all(out: str, metrics: dict, histories: dict, data, world, reward: str, sweep: dict | None = None,
              log=print) -> None:
    """metrics.json, the three plots and report.md, and the table on the terminal.

    `sweep`: this run's sweep result, drawn into the reward–KL plot (None: no sweep ran)."""
    plots = {"training": "plots/training_curves.png", "reward_kl": "plots/reward_vs_kl.png",
             "rewards": "plots/reward_distributions.png"}
    plot_training(histories, os.path.join(out, plots["training"]))
    plot_reward_kl(metrics, histories, os.path.join(out, plots["reward_kl"]), sweep and sweep["points"])
    plot_reward_distributions(data, os.path.join(out, plots["rewards"]))
    if plot_online(histories, os.path.join(out, "plots/online.png")):
        plots["online"] = "plots/online.png"
    if "exact" in metrics:
        plots["exact_frontier"] = "plots/exact_frontier.png"
        plot_exact_frontier(metrics, os.path.join(out, plots["exact_frontier"]))
    metrics["plots"] = plots
    write_json(os.path.join(out, "metrics.json"), metrics)
    text = table(metrics)
    log("\n" + text)
    cfg = metrics["config"]
    lines = ["# rpo_mini report", "",
             f"World `{cfg['world']['name']}`, reward `{reward}` (gold: `{world.gold_reward}`), "
             f"device `{metrics['device']}`, seeds `{cfg['run']['seeds']}`, preset `{cfg['run']['preset']}`. "
             f"Total time {metrics['timings']['total']:.0f} s.", "",
             "Reward ± 95% interval on the test prompts (over prompts for one seed, over seeds for several); "
             "win rate against the reference's samples for the same prompts; KL = E_π[log π − log π_ref] "
             "per response.", "", "```", text, "```", ""]
    if "exact" in metrics:
        lines += exact_note(metrics["exact"])
    lines += ["## Samples (first sample for the same test prompts)", ""]
    for name, row in metrics["policies"].items():
        lines.append(f"**{name}**")
        lines += [f"- *{p}*{t}" for p, t in row["samples"]] + [""]
    lines += ["## Plots", ""] + [f"![{k}]({v})" for k, v in plots.items()] + ["",
              "## Configuration", "", "```json", json.dumps(cfg, indent=1), "```", ""]
    with atomic_open(os.path.join(out, "report.md")) as f:
        f.write("\n".join(lines))
