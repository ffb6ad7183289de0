"""The gap to the optimum, split into its causes (exact world).

Every method ends below the exact frontier. With every response enumerable, the distance to the
optimum a method targets, its regret R = τ·KL(π‖π*_τ) (`exact.compare`), can be measured on any
set of prompts at any point of training, and the loss itself can be taken without sampling at
all. So the test regret of the standard run (K = 8 responses per prompt from π_ref, 150 steps)
splits into four measured parts that add up exactly:

    R_test(K=8)  =  [R_test − R_train](K=8)                 generalisation: training prompts → test prompts
                 +  [R_train(K=8) − R_train(K=8, exact)]     estimation: log Ẑ(x) instead of log Z(x) (RPO only)
                 +  [R_train(K=8, exact) − R_train(K=∞)]     sampling: K responses instead of all of them
                 +  R_train(K=∞)                             optimisation: what 150 steps leave of the exact loss

R_train is measured on the training prompts (every other one of the dataset's, `TRAIN_STRIDE`),
R_test on the test prompts. K = ∞ is the *population* loss: each objective's own loss with every
enumerated response of a prompt weighted by π_ref(y|x) (`losses.*_loss(..., weights=)`), its exact
expectation — what the loss on K samples tends to as K grows; its batch is `POPULATION_PROMPTS`
prompts per step (all their 1110 responses each). For RPO that limit has the exact log Z(x), so
RPO's "mean", "loo" and "exact" share one population run; SFT's limit imitates each prompt's best
response (the true sum); KTO's weighs the mismatched pairs by π_ref too. DRO has no estimation
part: its value is learned. KTO and SFT have no τ of their own: they are decomposed at the
experiment's τ (the τ RPO and DRO train at), and their frontier gap, which needs no τ, is beside it.

The *fresh samples* rows are the online family (`experiments/online.py`) at the same τ, steps and
learning rate: every step samples the policy being trained, in groups of `group_size` per prompt
(A*-PO: one, after its V̂* from the K = 8 dataset), so there is no fixed sample to estimate on and
their train regret has no estimation part. Where the K = ∞ limit of a fresh objective was run, its
train regret splits into sampling + optimisation as above: RLOO's and Dr. GRPO's limit is the
exact policy gradient of J_τ (the population run "rloo": ascent on J_τ(π) itself, `exact.objective`).
The others' limits (online RPO's log-mean-exp of the policy's own samples, GRPO's std-weighted
prompts, A*-PO's and online DRO's regressions on π_θ) are other objectives, not run: their train
regret is reported unsplit.

Along training (steps 0, 25, …, 150 of the K = 8 and K = ∞ runs; and 0, 50, …, 300 of a run of
RPO and DRO on K = 8 twice as long, to see whether the regret turns) each checkpoint also records where the
policy's mass is: on responses observed in the dataset for that prompt or never observed, and on
the correct answer, near misses (training reward ≥ 1/2, not correct) or anything else.
"""

import copy

import torch

from rpo_mini import exact, losses, stages, training
from rpo_mini.align import Alignment
from rpo_mini.data import collate_prompts, reward_scale
from rpo_mini.evaluate import mean_ci
from rpo_mini.model import ValueModel

from .online import ONLINE, fresh_settings
from .runner import VARIANTS, Experiment, Job, materials, oracle_on, run_jobs, test_oracle
from .tables import COLORS, figure, pm, provenance, save, table

WORLD = "arithmetic"
TRAIN_STRIDE = 2          # in-sample regret on every other training prompt (100 of 200): the tables cost
POPULATION_PROMPTS = 8    # prompts per step of a population run, each with all of its responses
NEAR_MISS = 0.5           # a near miss: training reward at least this, not the correct answer
SAMPLED = ("rpo", "rpo-loo", "rpo-exact", "dro", "kto", "sft")
POPULATION = ("rpo", "dro", "kto", "sft", "rloo")  # one K = ∞ run per objective (RPO's three share it)
FRESH_LIMIT = {"rloo": "rloo", "dr-grpo": "rloo"}  # fresh variant → its K = ∞ run (Dr. GRPO: RLOO's × (K−1)/K)

GRID = {"full": {"tau": 0.3, "k": [4, 8, 32], "steps": 150, "every": 25, "long": {"steps": 300, "every": 50,
                                                                                    "variants": ["rpo", "dro"]},
                 "fresh": list(ONLINE), "group_size": 4},
        "quick": {"tau": 0.3, "k": [8], "steps": 4, "every": 2, "long": None, "fresh": ["rloo", "apo"],
                  "group_size": 4}}


def run(ctx, g) -> dict:
    jobs = []
    for s in ctx.seeds:
        for v in SAMPLED:
            for k in g["k"]:
                every = g["every"] if k == 8 else g["steps"]  # trajectories for K = 8; the end for other K
                jobs.append(_job(ctx, s, v, k, g["steps"], every, g["tau"]))
        jobs += [_job(ctx, s, o, "population", g["steps"], g["every"], g["tau"]) for o in POPULATION]
        jobs += [_job(ctx, s, v, "fresh", g["steps"], g["every"], g["tau"], g["group_size"]) for v in g["fresh"]]
        long = g["long"]
        if long:
            jobs += [_job(ctx, s, v, 8, long["steps"], long["every"], g["tau"]) for v in long["variants"]]
    results = run_jobs(ctx, jobs)
    return {"grid": g, "jobs": len(jobs), "runs": [{"variant": j.variant, **j.setting, **r} for j, r in zip(jobs, results)]}


def _job(ctx, seed, variant, k, steps, every, tau, group_size=None) -> Job:
    obj, overrides = VARIANTS[variant]  # e.g. rpo-loo: RPO with the leave-one-out partition
    align = {**overrides, "steps": steps, "rpo_tau": tau, "dro_tau": tau}
    if k == "fresh":
        align |= fresh_settings(tau, group_size)
    # a population or fresh run reads the K = 8 dataset only for its z-scoring and its observed
    # responses (and A*-PO for its V̂*)
    cfg = ctx.cfg(seed, WORLD, align=align, collect={"k": k if isinstance(k, int) else 8})
    return Job(f"{__name__}:track", cfg, seed, variant, {"k": k, "steps": steps},
               params={"objective": obj, "k": k, "every": every, "tau": tau})


# --- the task: train one run and measure it along the way -----------------------------------------

def track(job) -> dict:
    m = materials(job.cfg)
    cfg, p, data = job.cfg.align, job.params, m.data.value
    obj, eot = p["objective"], m.enc.eot_token
    scale = reward_scale(data.rewards, cfg.rewards_zscore)
    tau_raw = scale.raw_tau(p["tau"])  # the experiment's τ: RPO's and DRO's own (`_job`); KTO and SFT have none
    prompts = sorted({r["prompt"] for r in data.records})
    train = oracle_on(m, "gap-train", prompts[::TRAIN_STRIDE])
    test = test_oracle(m)
    column = {y: i for i, y in enumerate(m.world.responses())}
    observed = torch.zeros(train.ref.shape, dtype=torch.bool)
    row = {x: i for i, x in enumerate(train.prompts)}
    for r in data.records:
        if r["prompt"] in row:
            observed[row[r["prompt"]], column[r["response"]]] = True

    def measure(policy, step):
        policy.eval()
        out = {"step": step}
        for name, o in (("train", train), ("test", test)):
            t = o.table(policy, m.ctx.autocast)
            c = exact.compare(o, t, tau_raw)
            out |= {f"{name}_{k}": c[k] for k in ("regret", "frontier_gap", "exact_reward", "exact_gold", "exact_kl")}
            out |= {f"{name}_mass_{k}": v for k, v in masses(t, o, None if name == "test" else observed).items()}
        return out

    checkpoints = list(range(0, job.setting["steps"] + 1, p["every"]))
    if checkpoints[-1] != job.setting["steps"]:
        checkpoints.append(job.setting["steps"])
    lr = cfg.lr_for(obj)
    if p["k"] == "population":
        policy, advance = population(obj, m.base.value, oracle_on(m, "train", prompts), scale, cfg, lr, p["tau"],
                                     job.seed, m.ctx.autocast)
    else:
        oracle = None
        if cfg.estimator == "exact" and obj == "rpo":
            oracle = oracle_on(m, "train", prompts)
        a = Alignment(obj, m.base.value, data, cfg, lr, cfg.tau_for(obj), job.seed, eot, m.ctx.autocast, oracle=oracle,
                      fresh=stages.fresh_sampling(m.world, m.tok, job.cfg.collect))

        def advance(step):
            a.train(until=step, log=lambda *x, **k: None)
            return sum(a.history["generations"].values())  # responses sampled and scored so far
        policy = a.policy
    trace = []
    for step in checkpoints:
        spent = advance(step)
        trace.append(measure(policy, step) | ({"generations": spent} if spent is not None else {}))
    return {"seed": job.seed, "tau_raw": tau_raw, "reward_scale": scale.scale, "trace": trace}


def masses(table, o: exact.Oracle, observed=None) -> dict:
    """Where π puts its mass, averaged over prompts: the correct answer (gold 1), near misses
    (training reward ≥ NEAR_MISS, not correct), the rest; and with `observed` (N, Y) bool, the
    responses the dataset has for that prompt."""
    p = table.exp()
    correct = o.gold > 0.5
    near = (o.rewards >= NEAR_MISS) & ~correct
    out = {"correct": float((p * correct).sum(-1).mean()), "near_miss": float((p * near).sum(-1).mean())}
    out["other"] = 1.0 - out["correct"] - out["near_miss"]
    if observed is not None:
        out["observed"] = float((p * observed).sum(-1).mean())
    return out


def population(objective, base, o: exact.Oracle, scale, cfg, lr, tau, seed, autocast):
    """Train `objective` on its population loss: for each batch prompt, every enumerated response
    weighted by π_ref(y|x), rewards z-scored by `scale`, τ in those units (RPO, DRO); for RLOO,
    whose samples come from the policy itself, −J_τ(π) exactly (every response weighted by π).
    `o`: the oracle on the training prompts. Returns (policy, advance), advance(step) training up to `step`."""
    eot, prompts = o.eot, o.prompts
    torch.manual_seed(seed)
    policy = copy.deepcopy(base).requires_grad_(True).train()
    modules = {"policy": policy}
    if objective == "dro":
        value = ValueModel(base.config)
        value.trunk.load_state_dict(base.state_dict())
        modules["value"] = value.train()
    params = [q for mod in modules.values() for q in mod.parameters()]
    loop = training.Loop(f"{objective}-population", modules, training.make_optimizer(params, lr), cfg.steps, lr,
                         cfg.warmup, cfg.grad_clip, history=[], clip_separately=cfg.clip_separately)
    z, w = scale(o.rewards), o.ref.exp()         # (N, Y) z-scored rewards, π_ref weights
    log_z = exact.log_partition(o.ref, z, tau)   # (N,) the exact partition: the K → ∞ limit of every estimator
    best = o.rewards.argmax(-1)                  # (N,) best-of-K as K → ∞: the reward's maximiser
    n_y = z.size(1)

    def loss_at(step):
        idx = training.batch_indices(step, min(POPULATION_PROMPTS, len(prompts)), len(prompts), seed)
        policy.train()
        table = exact.logprob_table(policy, [o.prompt_tokens[i] for i in idx], o.response_tokens, eot,
                                    autocast=autocast, requires_grad=True)             # (B, Y)
        ref, zi, wi = o.ref[idx], z[idx], w[idx]
        flat = lambda t: t.reshape(-1)  # noqa: E731
        if objective == "rpo":
            return losses.rpo_loss(flat(table), flat(ref), flat(zi), log_z[idx].repeat_interleave(n_y), tau,
                                   weights=flat(wi))
        if objective == "dro":
            tokens, last = collate_prompts([o.prompt_tokens[i] for i in idx], eot)
            values = modules["value"](tokens, last).double()
            return losses.dro_loss(flat(table), flat(ref), flat(zi), values.repeat_interleave(n_y), tau,
                                   weights=flat(wi))
        if objective == "rloo":  # ascent on J_τ itself: the exact policy gradient, RLOO's limit as K → ∞
            loss = -exact.objective(table, ref, zi, tau).mean()
            return loss, {"loss": float(loss.detach())}
        if objective == "kto":  # z0 from each prompt with the next prompt's responses, weighted by their π_ref
            perm = losses.kto_mismatched(len(idx))
            desirable = losses.binarize_rewards(flat(zi), threshold="global", global_mean=0.0)
            return losses.kto_loss(flat(table), flat(ref), desirable, flat(table.detach()), flat(ref),
                                   beta=cfg.beta, weights=flat(wi), kl_weights=flat(wi[perm]))
        rows = torch.arange(len(idx))
        n_tok = torch.tensor([float(len(o.response_tokens[j])) for j in best[idx].tolist()], dtype=table.dtype)
        return losses.sft_loss(table[rows, best[idx]], n_tok)

    def advance(step):
        loop.run(loss_at, lambda *a: None, until=step)  # no responses sampled: returns None
    return policy, advance


# --- analysis ---------------------------------------------------------------------------------

PARTS = ("generalisation", "estimation", "sampling", "optimisation")


def _final(runs, variant, k, steps, key):
    """{seed: the last checkpoint's `key`} of the runs of one variant, K and length."""
    return {r["seed"]: r["trace"][-1][key] for r in runs if r["variant"] == variant and r["k"] == k
            and r["steps"] == steps}


def decompose(d) -> dict:
    """Per method and seed, the four parts of the standard run's test regret (they add up to it
    exactly), and their mean ± 95% interval over the replicates."""
    runs, steps = d["runs"], d["grid"]["steps"]
    out = {}
    for v in SAMPLED:
        obj = VARIANTS[v][0]
        r_test = _final(runs, v, 8, steps, "test_regret")
        r_train = _final(runs, v, 8, steps, "train_regret")
        pop = _final(runs, obj, "population", steps, "train_regret")
        exact_train = _final(runs, "rpo-exact", 8, steps, "train_regret") if obj == "rpo" else r_train
        per_seed = {}
        for s in r_test:
            if s in pop and s in exact_train:
                per_seed[s] = {"total": r_test[s], "generalisation": r_test[s] - r_train[s], "train": r_train[s],
                               "generations": _final(runs, v, 8, steps, "generations")[s],
                               "estimation": r_train[s] - exact_train[s] if obj == "rpo" else 0.0,
                               "sampling": exact_train[s] - pop[s], "optimisation": pop[s],
                               "frontier_gap": _final(runs, v, 8, steps, "test_frontier_gap")[s]}
        out[v] = {"per_seed": per_seed, "has_estimation": obj == "rpo", "fresh": False,
                  **{k: list(mean_ci([x[k] for x in per_seed.values()]))
                     for k in ("total", *PARTS, "train", "frontier_gap", "generations")}}
    for v in d["grid"]["fresh"]:
        r_test, r_train = (_final(runs, v, "fresh", steps, f"{split}_regret") for split in ("test", "train"))
        limit = FRESH_LIMIT.get(v)
        pop = _final(runs, limit, "population", steps, "train_regret") if limit else {}
        per_seed = {}
        for s in r_test:
            per_seed[s] = {"total": r_test[s], "generalisation": r_test[s] - r_train[s], "train": r_train[s],
                           "frontier_gap": _final(runs, v, "fresh", steps, "test_frontier_gap")[s],
                           "generations": _final(runs, v, "fresh", steps, "generations")[s]}
            if s in pop:
                per_seed[s] |= {"sampling": r_train[s] - pop[s], "optimisation": pop[s]}
        keys = ("total", "generalisation", "train", "frontier_gap", "generations",
                *(("sampling", "optimisation") if pop else ()))
        out[v] = {"per_seed": per_seed, "has_estimation": False, "fresh": True, "limit": limit,
                  **{k: list(mean_ci([x[k] for x in per_seed.values()])) for k in keys}}
    return out


def by_k(d) -> dict:
    """Final train and test regret of each variant at each K (and K = ∞), mean ± 95% interval."""
    runs, steps = d["runs"], d["grid"]["steps"]
    out = {}
    for v in SAMPLED:
        ks = [*d["grid"]["k"], "population"]
        out[v] = {str(k): {split: list(mean_ci(_final(runs, v if k != "population" else VARIANTS[v][0], k, steps,
                                                       f"{split}_regret").values()))
                           for split in ("train", "test")} for k in ks}
    return out


def trajectories(d) -> dict:
    """Mean over seeds of every measure at every checkpoint: {"variant/K/steps": [{step, ...}]}."""
    out = {}
    for r in d["runs"]:
        out.setdefault(f"{r['variant']}/{r['k']}/{r['steps']}", []).append(r["trace"])
    mean = {}
    for key, traces in out.items():
        n = min(len(t) for t in traces)
        mean[key] = [{k: sum(t[i][k] for t in traces) / len(traces) for k in traces[0][i]} for i in range(n)]
    return mean


def summary(d) -> dict:
    runs = [r for r in d["runs"] if r["k"] == 8 and r["steps"] == d["grid"]["steps"]]  # π_ref at the K = 8 data's τ
    pi_ref = {k: sum(r["trace"][0][k] for r in runs) / len(runs) for k in runs[0]["trace"][0] if k != "step"}
    return {"decomposition": decompose(d), "by_k": by_k(d), "trajectories": trajectories(d), "reference": pi_ref}


def plot(d, path):
    fig, axes = figure(3, (17, 4.6))
    dec = d["decomposition"]
    colors = {"generalisation": "tab:gray", "estimation": "tab:red", "sampling": "tab:orange",
              "optimisation": "tab:blue"}
    names = [*SAMPLED, *(v for v in dec if dec[v]["fresh"])]
    unsplit = next((v for v in names if "optimisation" not in dec[v]), None)
    for i, v in enumerate(names):
        bottom_pos, bottom_neg = 0.0, 0.0
        split = "optimisation" in dec[v]
        for part in ([q for q in PARTS if q in dec[v]] if split else ("generalisation", "train")):
            val = dec[v][part][0]
            if part == "train":  # a fresh objective whose K = ∞ limit was not run: its train regret, unsplit
                axes[0].bar(i, val, 0.7, bottom=bottom_pos if val >= 0 else bottom_neg, color="white",
                            edgecolor="tab:blue", hatch="//", label="train regret, not split" if v == unsplit else None)
                continue
            base = bottom_pos if val >= 0 else bottom_neg
            axes[0].bar(i, val, 0.7, bottom=base, color=colors[part], label=part if i == 0 else None)
            if val >= 0:
                bottom_pos += val
            else:
                bottom_neg += val
        total, ci = dec[v]["total"]
        axes[0].errorbar(i, total, yerr=ci, fmt="k_", ms=14, capsize=3, label="test regret (sum)" if i == 0 else None)
    axes[0].axhline(d["reference"]["test_regret"], color="0.5", ls=":", label="π_ref's test regret")
    if len(names) > len(SAMPLED):
        axes[0].axvline(len(SAMPLED) - 0.5, color="0.3", lw=0.8)
    axes[0].set_xticks(range(len(names)), names, rotation=40, ha="right")
    axes[0].set_ylabel("regret at τ (raw reward units)")
    axes[0].set_title("test regret, split into its parts (K = 8 | fresh samples)")
    tr = d["trajectories"]
    steps, long = d["grid"]["steps"], (d["grid"]["long"] or {}).get("steps")
    for v in ("rpo", "dro", "kto", "sft", "rloo"):
        for key, ls, lab in ((f"{v}/8/{steps}", "-", "K=8"), (f"{v}/fresh/{steps}", "-", "fresh"),
                             (f"{v}/population/{steps}", "--", "K=∞"),
                             (f"{v}/8/{long}", ":", f"K=8, {long} steps"),
                             (f"{v}/population/{long}", "-.", f"K=∞, {long} steps")):
            if key in tr:
                axes[1].plot([c["step"] for c in tr[key]], [c["test_regret"] for c in tr[key]], ls, marker=".",
                             color=COLORS.get(v), label=f"{v} {lab}")
    axes[1].set_xlabel("alignment step")
    axes[1].set_ylabel("test regret")
    axes[1].set_title("along training (mean over replicates)")
    axes[1].legend(fontsize=6, ncol=2)
    for key, ls in ((f"rpo/8/{steps}", "-"), (f"rpo/population/{steps}", "--")):
        if key in tr:
            for part, color in (("correct", "tab:green"), ("near_miss", "tab:orange"), ("other", "tab:red")):
                axes[2].plot([c["step"] for c in tr[key]], [c[f"test_mass_{part}"] for c in tr[key]], ls,
                             color=color, label=f"{part} ({'K=8' if '/8/' in key else 'K=∞'})")
    if f"rpo/8/{steps}" in tr:
        axes[2].plot([c["step"] for c in tr[f"rpo/8/{steps}"]], [1 - c["train_mass_observed"] for c in
                                                                 tr[f"rpo/8/{steps}"]], "-", color="0.3",
                     label="never observed (train prompts, K=8)")
    axes[2].set_xlabel("alignment step")
    axes[2].set_ylabel("probability mass (mean over prompts)")
    axes[2].set_title("RPO: where the mass goes (test prompts)")
    axes[2].legend(fontsize=6)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"gap (exact world, τ = {d['grid']['tau']:g}): mean over {len(d['seeds'])} full replicates")
    save(fig, path)


def markdown(d) -> str:
    dec, bk = d["decomposition"], d["by_k"]
    def line(v):
        e = dec[v]
        parts = [pm(*e[k], ".4f") if k in e and (k != "estimation" or e["has_estimation"]) else "—" for k in PARTS]
        return [v, f"{e['generations'][0]:,.0f}", pm(*e["total"], ".4f"), *parts, pm(*e["train"], ".4f"),
                pm(*e["frontier_gap"], ".3f")]
    fresh = [v for v in dec if dec[v]["fresh"]]
    lines = [line(v) for v in SAMPLED] + ([["*fresh samples*", *[""] * 8]] if fresh else []) + [line(v) for v in fresh]
    out = [provenance(d), "", f"Test regret at τ = {d['grid']['tau']:g} (raw units τ·σ) of the standard run (K = 8, "
           f"{d['grid']['steps']} steps) and its four parts, mean ± 95% CI over replicates (π_ref's test regret "
           f"{d['reference']['test_regret']:.4f}); train regret = estimation + sampling + optimisation. Fresh "
           f"samples: the online family in groups of {d['grid']['group_size']} (A*-PO: 1), sampling and "
           f"optimisation only where the objective's K = ∞ run exists ({', '.join(sorted(FRESH_LIMIT))}: the "
           f"exact policy gradient of J_τ):", "",
           table(["variant", "generations", "test regret", *PARTS, "train regret", "frontier gap"], lines), ""]
    ks = list(next(iter(bk.values())))
    lines = [[v, *[f"{pm(*bk[v][k]['train'], '.4f')} / {pm(*bk[v][k]['test'], '.4f')}" for k in ks]] for v in SAMPLED]
    out += ["Train / test regret at the end, by K (∞ = the population loss):", "",
            table(["variant", *[f"K = {'∞' if k == 'population' else k}" for k in ks]], lines), ""]
    tr = d["trajectories"]
    steps = d["grid"]["steps"]
    lines = []
    for key in sorted(k for k in tr if k.split("/")[0] in POPULATION and k.split("/")[1] in ("8", "population", "fresh")):
        for c in tr[key]:
            lines.append([key, c["step"], f"{c['train_regret']:.4f}", f"{c['test_regret']:.4f}", f"{c['test_exact_kl']:.3f}",
                          f"{c['test_exact_reward']:.3f}", f"{c['test_mass_correct']:.3f}",
                          f"{c['test_mass_near_miss']:.3f}", f"{c['test_mass_other']:.3f}",
                          f"{c['train_mass_observed']:.3f}"])
    out += [f"Along training (mean over replicates; run = variant/K/steps, the standard length is {steps}):", "",
            table(["run", "step", "train regret", "test regret", "test KL", "test E[r]", "correct", "near miss",
                   "other", "observed (train)"], lines)]
    return "\n".join(out)


GAP = Experiment("gap", GRID, run, plot, markdown, summary)
