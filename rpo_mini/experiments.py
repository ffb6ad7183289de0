"""Experiments: does the toy reproduce the RPO paper's claims? (FINDINGS.md)

The RPO paper (Faye, Azzag & Lebbah, arXiv 2506.13702) claims that RPO beats SFT, KTO and DRO,
gives more aligned, more diverse and less toxic outputs, and optimises more stably than DRO
because it has no value function. Seven experiments test that on our worlds:

    frontier       reward–KL (and gold–KL) curve of each objective over its τ / β / lr grid
    offpolicy      the same on off-policy data (responses from the world's other generator),
                   with RPO's "ref" estimator (the authors' code) next to the "mean" one
    k              responses per prompt K ∈ {2, 4, 8, 16} at a fixed number of samples: RPO's
                   log Ẑ and DRO's V/τ against a many-sample estimate of log Z
    heterogeneity  subject-prior strength of the world: RPO (per-prompt log Ẑ) vs RPO with one
                   global baseline vs DRO
    variance       spread of the minibatch gradient at fixed parameters (RPO vs DRO vs no
                   baseline, at init / mid / end of training), loss and gradient-norm curves,
                   and how often runs diverge or collapse at larger learning rates
    cost           time per step and peak memory of each objective
    paper          the `--preset paper` settings (DESIGN.md §7) vs our defaults, same data

    python -m rpo_mini.experiments NAME [--quick] [--seeds 0,1,2,3,4] [--device auto] [--out findings]
                                        [--workers N] [--cache DIR] [--fixed-data] [--plan]
    python -m rpo_mini.experiments all --workers 8          # everything: one GPU, 16 CPU cores
    python -m rpo_mini.experiments all --plan               # the job counts, nothing run
    python -m rpo_mini.experiments writeup --out findings   # markdown tables from the JSON
    python -m rpo_mini.experiments all --quick              # a smoke test (~1 min, 2-core CPU)

CPU fallback: `all --device cpu --fixed-data --seeds 0,1,2` (one base model per world instead of
one per seed and world; see FINDINGS.md for the time estimates).

Each experiment writes `OUT/NAME.json` (settings, machine, date, per-seed raw values, means with
95% intervals over seeds) and `OUT/NAME.png`, and prints its tables. Everything heavy goes
through the pipeline's cached stages (`rpo_mini.pipeline.Stages`) under `--cache`, so a rerun
reuses worlds, tokenizers, base models, datasets, policies and evaluations.

A seed is a full replicate by default: the world, the pretraining, the data collection and the
alignment all use it. `--fixed-data` keeps one world, base model and dataset (the first seed's)
and varies only alignment and evaluation (cheaper; it understates the spread).

Parallelism: `--workers N` runs independent (setting, seed) jobs in N spawned processes; the
shared artifacts of every job (tokenizer, base model, datasets, reference samples) are built
first, one job per base model, so that the training jobs only read them.
"""

import argparse
import copy
import dataclasses
import datetime
import json
import math
import multiprocessing as mp
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

try:
    import resource
except ImportError:  # Windows: no peak RSS
    resource = None

from . import checkpoint, losses, runtime
from .align import align, objective_step, prepare
from .collect import response_logprobs, sample_responses
from .config import PAPER, QUICK, Config, apply, stage_key, to_dict
from .data import collate_prompts, reward_stats
from .evaluate import mean_ci, summarize
from .model import ValueModel
from .worlds import reward_spread

EXPERIMENTS = ("frontier", "offpolicy", "k", "heterogeneity", "variance", "cost", "paper")

# Each objective's own knob: what moves it along its reward–KL curve.
KNOBS = {"sft": ("sft_lr", "lr"), "kto": ("beta", "β"), "dro": ("dro_tau", "τ"), "rpo": ("rpo_tau", "τ")}

# A variant = an objective + alignment settings + how its data is presented.
VARIANTS = {
    "sft": ("sft", {}), "kto": ("kto", {}), "dro": ("dro", {}), "rpo": ("rpo", {}),
    "rpo-ref": ("rpo", {"estimator": "ref"}),  # the authors' estimator, Σ_j π_ref(y_j|x) e^{r_j/τ}
    "rpo-global": ("rpo", {}),                 # one baseline for all prompts (prompt ids zeroed)
    **{f"{o}-paper": (o, PAPER["align"]) for o in ("sft", "kto", "dro", "rpo")},
}
COLORS = {"sft": "tab:green", "kto": "tab:orange", "dro": "tab:purple", "rpo": "tab:blue",
          "rpo-ref": "tab:cyan", "rpo-global": "tab:red", "none": "0.4"}

GRIDS = {
    "full": {
        "frontier": {"sft": [3e-5, 1e-4, 3e-4, 1e-3], "kto": [0.03, 0.1, 0.3, 1.0],
                     "dro": [0.1, 0.3, 1.0, 3.0], "rpo": [0.1, 0.3, 1.0, 3.0]},
        "offpolicy": {"sft": [3e-4, 1e-3], "kto": [0.1, 1.0], "dro": [0.3, 1.0, 3.0],
                      "rpo": [0.3, 1.0, 3.0], "rpo-ref": [0.3, 1.0, 3.0]},
        "k": {"k": [2, 4, 8, 16], "total": 480, "reference_samples": 64},
        "heterogeneity": {"prior_strength": [0.0, 0.5, 1.0, 2.0]},
        "variance": {"batches": 32, "lrs": [1e-4, 3e-4, 1e-3, 3e-3]},
        "cost": {"steps": 60, "skip": 10, "repeats": 3},
        "paper": {"objectives": ["sft", "kto", "dro", "rpo"]},
    },
    "quick": {
        "frontier": {"sft": [3e-4], "kto": [0.1], "dro": [0.3, 1.0], "rpo": [0.3, 1.0]},
        "offpolicy": {"dro": [1.0], "rpo": [1.0], "rpo-ref": [1.0]},
        "k": {"k": [2, 4], "total": 64, "reference_samples": 8},
        "heterogeneity": {"prior_strength": [0.0, 1.0]},
        "variance": {"batches": 4, "lrs": [1e-4, 3e-3]},
        "cost": {"steps": 8, "skip": 2, "repeats": 1},
        "paper": {"objectives": ["kto", "rpo"]},
    },
}
# Changes to the defaults, for every experiment. Validation probes at steps 0, 75 and 150 (the
# default 50 adds a fourth, unused). max_new_tokens 48 (default 40) sizes the model's context for
# the off-policy generator's longer reviews (up to ~47 tokens with the prompt; collect.py cuts
# longer ones), so that on- and off-policy data share one base model per seed.
FULL = {"align": {"eval_every": 75}, "collect": {"max_new_tokens": 48}}
# On top of config.QUICK: smaller still, so `all --quick` runs in about a minute on a 2-core CPU.
QUICKER = {"pretrain": {"pretrain_steps": 100}, "collect": {"n_prompts": 32, "max_new_tokens": 48},
           "align": {"steps": 12, "eval_every": 12}, "eval": {"eval_prompts": 12}}

KL_THRESHOLDS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, None)  # nats per response; None = no limit
METRICS = ("reward", "gold", "kl", "win_rate", "distinct_1", "distinct_2", "toxicity_rate", "fluency", "length")
MIN_FLUENCY = 0.9   # a setting chosen on validation must still be fluent (as in pipeline.sweep)
COLLAPSE = 0.5      # a run whose test fluency ends below this counts as collapsed


# =============================================================================================
# The run context and the jobs


@dataclass
class Ctx:
    """What every experiment of one invocation shares."""
    quick: bool = False
    seeds: list = field(default_factory=lambda: [0, 1, 2, 3, 4])
    device: str = "auto"
    out: str = "findings"
    cache: str = "out/experiments"
    workers: int = 1
    fixed_data: bool = False
    command: str = ""
    plan: list | None = None  # --plan: count the jobs, run nothing
    _pool: object = field(default=None, repr=False)

    def pool(self):
        """The worker processes, started once per invocation (spawn: CUDA cannot be forked)."""
        if self._pool is None:
            threads = max(1, (os.cpu_count() or 1) // self.workers)
            self._pool = mp.get_context("spawn").Pool(self.workers, _init_worker, (threads, self.cache))
        return self._pool

    def close(self, terminate=False):
        if self._pool is not None:
            self._pool.terminate() if terminate else self._pool.close()
            self._pool.join()
            self._pool = None

    @property
    def grid(self) -> dict:
        return GRIDS["quick" if self.quick else "full"]

    def base_cfg(self) -> Config:
        cfg = apply(Config(), FULL)
        if self.quick:
            apply(apply(cfg, QUICK), QUICKER)
            cfg.run.quick = True
        cfg.run.out, cfg.run.device = self.cache, self.device
        return cfg

    def cfg(self, seed: int, **sections) -> Config:
        """The config of one replicate: `sections` = {"align": {...}, "collect": {...}, ...}."""
        cfg = apply(self.base_cfg(), sections)
        cfg.run.seed = cfg.world.seed = self.seeds[0] if self.fixed_data else seed
        return cfg


@dataclass
class Job:
    task: str                      # prepare | train | trajectory | logz_ref | cost
    cfg: Config
    seed: int = 0                  # the alignment (and evaluation) seed
    variant: str = ""
    setting: dict = field(default_factory=dict)  # what defines this point of the grid
    params: dict = field(default_factory=dict)


def train_job(ctx, variant: str, seed: int, setting: dict | None = None, sections: dict | None = None,
              **params) -> Job:
    """Train + evaluate one (variant, setting, seed): `setting` holds AlignConfig changes."""
    setting = setting or {}
    sections = copy.deepcopy(sections or {})
    sections["align"] = {**VARIANTS[variant][1], **sections.get("align", {}), **setting}
    return Job("train", ctx.cfg(seed, **sections), seed, variant, setting, params)


def run_jobs(ctx: Ctx, jobs: list, fresh: bool = False) -> list:
    """Run jobs in order (in-process) or in a spawn pool; results in the order of `jobs`.

    Shared artifacts are built first (`_prepare_jobs`), one job per base model, so that no two
    processes ever write the same file. fresh=True gives every job its own new process, one at
    a time (clean timings and peak-memory readings for `cost`)."""
    prep = _prepare_jobs(jobs)
    if ctx.plan is not None:
        ctx.plan.append({"jobs": len(jobs), "base_models": len(prep),
                         "tasks": {t: sum(j.task == t for j in jobs) for t in dict.fromkeys(j.task for j in jobs)}})
        raise _Planned
    for phase, todo in (("prepare", prep), ("run", jobs)):
        if not todo:
            continue
        t0 = time.perf_counter()
        results = _map(ctx, todo, fresh=fresh and phase == "run")
        print(f"  {phase}: {len(todo)} job(s) in {time.perf_counter() - t0:.1f}s", flush=True)
    return results


class _Planned(Exception):
    pass


def _map(ctx, jobs, fresh=False):
    results = [None] * len(jobs)
    if ctx.workers <= 1 and not fresh:
        for i, job in enumerate(jobs):
            results[i] = _report(i, len(jobs), job, run_job(job))
        return results
    pool = _fresh_pool(ctx) if fresh else ctx.pool()
    try:
        for n, (i, result) in enumerate(pool.imap_unordered(_indexed, list(enumerate(jobs)))):
            results[i] = _report(n, len(jobs), jobs[i], result)
    except BaseException:
        pool.terminate() if fresh else ctx.close(terminate=True)
        raise
    finally:
        if fresh:
            pool.close()
            pool.join()
    return results


def _fresh_pool(ctx):
    """One process per job, one job at a time, using every core."""
    return mp.get_context("spawn").Pool(1, _init_worker, (os.cpu_count() or 1, ctx.cache), maxtasksperchild=1)


def _report(n, total, job, result):
    bits = [f"[{n + 1:>3}/{total}] {job.task:<10} {job.variant:<10}",
            " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in job.setting.items()),
            f"seed {job.seed}"]
    if "reward" in result:
        bits.append(f"reward {result['reward']:+.3f} gold {result['gold']:+.3f} kl {result['kl']:.2f}")
    if result.get("diverged"):
        bits.append("DIVERGED")
    print("  ".join(b for b in bits if b) + f"  ({result.get('seconds', 0.0):.1f}s)", flush=True)
    return result


def _prepare_jobs(jobs) -> list:
    """One `prepare` job per base model: its datasets and its reference evaluations."""
    groups = {}
    for job in jobs:
        c = job.cfg
        key = stage_key(c.world, c.tokenizer, c.model, c.pretrain, c.run.seed, c.collect.max_new_tokens,
                        c.run.out, c.run.device)
        g = groups.setdefault(key, Job("prepare", c, c.run.seed, "data", params={"collects": [], "seeds": []}))
        if to_dict(c.collect) not in g.params["collects"]:
            g.params["collects"].append(to_dict(c.collect))
        if job.seed not in g.params["seeds"]:
            g.params["seeds"].append(job.seed)
    return list(groups.values())


# =============================================================================================
# Worker side: every task builds (or loads) its stages through the pipeline

_MATERIALS = {}  # per process: config of the data → (stages, base model, dataset)


def _init_worker(threads, cache):
    torch.set_num_threads(threads)
    # Progress bars of N processes would interleave; a file is no terminal, so tqdm stays quiet.
    os.makedirs(os.path.join(cache, "logs"), exist_ok=True)
    sys.stderr = open(os.path.join(cache, "logs", f"worker-{os.getpid()}.log"), "a", buffering=1)


def _indexed(item):
    i, job = item
    return i, run_job(job)


def _quiet(*args, **kwargs):
    pass


def run_job(job: Job) -> dict:
    t0 = time.perf_counter()
    result = TASKS[job.task](job)
    result["seconds"] = result.get("seconds", time.perf_counter() - t0)
    return result


def _materials(cfg: Config):
    """(stages, base, dataset) for cfg's data, built or loaded once per process."""
    from .pipeline import Stages  # a leaf import: pipeline imports this project's every stage

    key = stage_key(cfg.world, cfg.tokenizer, cfg.model, cfg.pretrain, cfg.collect, cfg.eval,
                    cfg.run.seed, cfg.run.out, cfg.run.device, cfg.run.dtype)
    if key not in _MATERIALS:
        st = Stages(cfg, log=_quiet)
        st.tokenizer()
        base = st.base()
        _MATERIALS[key] = (st, base, st.dataset(base))
    st, base, data = _MATERIALS[key]
    return st.with_align(**to_dict(cfg.align)), base, data


def _task_prepare(job):
    for c in job.params["collects"]:
        st, base, _ = _materials(dataclasses.replace(job.cfg, collect=type(job.cfg.collect)(**c)))
    for seed in job.params["seeds"]:
        st.evaluate("reference", base, base, seed, st.base_key)
    return {}


def _task_train(job):
    """Align (cached), evaluate on the test prompts (cached) against the reference's samples."""
    st, base, data = _materials(job.cfg)
    objective = VARIANTS[job.variant][0]
    if job.variant == "rpo-global":
        # The policy is cached under its own key, since the stages key it by the data's origin.
        st = copy.copy(st)
        st.data_key = stage_key(st.data_key, "global-baseline")
        data = global_baseline(data)
    runtime.seed_everything(job.seed)
    probe = st.world.val_prompts[:8] if st.cfg.run.quick else None  # (default: the first 32)
    try:
        policy, history, path = st.policy(objective, job.seed, base, data, probe_prompts=probe)
    except FloatingPointError as e:  # a non-finite loss: align refuses to train on
        return {"seed": job.seed, "diverged": True, "error": str(e)}
    ref_s = st.evaluate("reference", base, base, job.seed, st.base_key)
    s = st.evaluate(objective, policy, base, job.seed, st.policy_key(objective, job.seed))
    m = summarize(s, st.world, st.reward_name, ref_s)
    ref = summarize(ref_s, st.world, st.reward_name)
    out = {"seed": job.seed, "diverged": False, **{k: m[k] for k in METRICS if k in m},
           **{f"ref_{k}": ref[k] for k in METRICS if k in ref and k not in ("kl", "win_rate")},
           "final_loss": history["train"][-1]["loss"], "train_seconds": history.get("seconds", 0.0)}
    if history["probe"]:
        out |= {f"val_{k}": v for k, v in history["probe"][-1].items() if k != "step"}
        out["path"] = [[p["step"], p["kl"], p["reward"], p["gold"]] for p in history["probe"]]
    if job.params.get("values"):  # DRO: its value network's V(x)/τ on the training prompts
        out["values"] = _dro_values(st, base, path, st.cfg.objective_tau("dro"))
    return out


def global_baseline(data):
    """The dataset with every sample in one prompt group, for RPO's partition only: log Ẑ becomes
    logsumexp over ALL rewards/τ − log N, one baseline shared by every prompt."""
    return dataclasses.replace(data, prompt_ids=torch.zeros_like(data.prompt_ids))


def _dro_values(st, base, path, tau) -> list:
    vpath = path.replace(".pt", ".value.pt")
    value = ValueModel(base.config)
    checkpoint.load_state_dict(value, checkpoint.load(vpath)["model"], vpath)
    value = value.to(st.device).eval()
    prompts = st.world.train_prompts[:st.cfg.collect.n_prompts or None]
    tokens, last = collate_prompts([st.enc.encode_ordinary(p) for p in prompts], st.enc.eot_token)
    with torch.no_grad(), st.autocast():
        v = value(tokens.to(st.device), last.to(st.device)).float()
    return (v / tau).cpu().tolist()


def _task_logz_ref(job):
    """log Z(x) from many π_ref samples per prompt, next to RPO's log Ẑ from each K dataset.

    Rewards are z-scored with each dataset's own mean and std, as `align.prepare` does, so
    both are in the units the objective trains with."""
    st, base, _ = _materials(job.cfg)
    n_max, m = max(n for _, n in job.params["ks"]), job.params["samples"]
    prompts = st.world.train_prompts[:n_max]
    toks = [st.enc.encode_ordinary(p) for p in prompts for _ in range(m)]
    g = torch.Generator(device=st.device).manual_seed(job.seed + 7919)
    responses, _ = sample_responses(base, toks, st.enc.eot_token, st.cfg.collect.max_new_tokens, g,
                                    autocast=st.autocast)
    texts = [st.enc.decode([t for t in r if t != st.enc.eot_token]) for r in responses]
    owners = [p for p in prompts for _ in range(m)]
    raw = torch.tensor([st.world.score(p, t)[st.reward_name] for p, t in zip(owners, texts)],
                       dtype=torch.float64).view(n_max, m)
    out = {}
    for k, n in job.params["ks"]:
        cfg = dataclasses.replace(job.cfg, collect=dataclasses.replace(job.cfg.collect, k=k, n_prompts=n))
        st_k, _, data = _materials(cfg)
        tau = st_k.cfg.objective_tau("rpo")
        mean, std = reward_stats(data.rewards) if st_k.cfg.align.rewards_zscore else (0.0, 1.0)
        log_z_hat = losses.log_partition((data.rewards - mean) / std, data.prompt_ids, tau, "mean")
        per_prompt = torch.zeros(n, dtype=torch.float64).index_copy(0, data.prompt_ids, log_z_hat)
        log_z_ref = torch.logsumexp((raw[:n] - mean) / std / tau, dim=1) - math.log(m)
        out[str(k)] = {"logz_hat": per_prompt.tolist(), "logz_ref": log_z_ref.tolist()}
    return out


def _task_trajectory(job):
    """Train RPO or DRO, snapshotting the parameters at init, mid-training and the end; then, at
    each snapshot, the spread of the minibatch gradient for several baselines on the SAME
    minibatches: rpo (τ log Ẑ(x)), none (0: target r/τ) and, on DRO's trajectory, dro (V_φ(x))."""
    st, base, data = _materials(job.cfg)
    obj, a, device = job.variant, st.cfg.align, st.device
    tau, lr, eot = st.cfg.objective_tau(obj), st.cfg.objective_lr(obj), st.enc.eot_token
    live, snaps = {}, []

    def wrap(module):  # align hands over its live modules here; the probe copies them
        live["value" if isinstance(module, ValueModel) else "policy"] = module
        return module

    def snapshot(policy):
        snaps.append({k: {n: t.detach().clone() for n, t in m.state_dict().items()} for k, m in live.items()})
        return {}

    cfg = dataclasses.replace(a, eval_every=max(1, a.steps // 2))  # probes at 0, steps/2, steps
    _, _, history = align(obj, base, data, cfg, lr, tau, job.seed, eot, st.autocast, probe=snapshot,
                          log=_quiet, wrap=wrap)
    ref_logps = response_logprobs(base, data.prompt_tokens, data.response_tokens, eot, a.length_normalize,
                                  autocast=st.autocast)
    preps = {"rpo": prepare("rpo", data, ref_logps, a, tau)}
    preps["none"] = preps["rpo"] | {"log_z": torch.zeros_like(preps["rpo"]["log_z"])}
    if obj == "dro":
        preps["dro"] = prepare("dro", data, ref_logps, a, tau)
    preps = {e: {k: v.to(device) if k != "index" else v for k, v in p.items()} for e, p in preps.items()}  # as align
    policy = copy.deepcopy(base).requires_grad_(True).train()
    value = ValueModel(base.config).to(device).requires_grad_(False) if obj == "dro" else None
    run = {"policy": policy, "ref": base, "policy_nograd": policy, "value": value}
    points = []
    for snap, probe in zip(snaps, history["probe"]):
        policy.load_state_dict(snap["policy"])
        if value is not None:
            value.load_state_dict(snap["value"])
        for est, prep in preps.items():
            stats = minibatch_gradient_stats("dro" if est == "dro" else "rpo", run, data, prep, a, tau, eot,
                                             device, st.autocast, job.params["batches"], seed=job.seed)
            points.append({"step": probe["step"], "estimator": est, **stats})
    return {"seed": job.seed, "points": points, "loss": [r["loss"] for r in history["train"]],
            "grad_norm": [r["grad_norm"] for r in history["train"]]}


def minibatch_gradient_stats(objective, run, data, prep, cfg, tau, eot, device, autocast, n_batches, seed=0):
    """The policy gradient of `objective`'s loss on n_batches random minibatches (batch_size of
    cfg, drawn with `seed`: the same minibatches for every call with the same seed), at fixed
    parameters; their spread by `gradient_spread`. Only the policy's parameters count."""
    policy = run["policy"]
    params = [p for p in policy.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(seed * 7 + 11)
    index, spread = prep["index"], GradientSpread()
    for _ in range(n_batches):
        idx = index[torch.randperm(len(index), generator=g)[:cfg.batch_size]]
        policy.zero_grad(set_to_none=True)
        loss, _ = objective_step(objective, run, data, prep, idx, cfg, tau, eot, device, autocast)
        loss.backward()
        spread.add(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]))
    policy.zero_grad(set_to_none=True)
    return spread.stats()


class GradientSpread:
    """Running spread of vectors g_1..g_M (Welford, float64, O(P) memory):

        trace_cov      = Σ_m ||g_m − ḡ||² / (M − 1)   (trace of the sample covariance)
        mean_grad_sq   = ||ḡ||²                       (the signal)
        noise_to_signal = trace_cov / ||ḡ||²"""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, 0.0

    def add(self, g: torch.Tensor) -> None:
        g = g.detach().double()
        self.n += 1
        if self.mean is None:
            self.mean = torch.zeros_like(g)
        delta = g - self.mean
        self.mean += delta / self.n
        self.m2 += float(delta @ (g - self.mean))

    def stats(self) -> dict:
        trace = self.m2 / (self.n - 1) if self.n > 1 else float("nan")
        signal = float(self.mean @ self.mean)
        return {"n": self.n, "trace_cov": trace, "mean_grad_sq": signal,
                "noise_to_signal": trace / signal if signal > 0 else float("nan")}


class StepClock:
    """`wrap` for align: times every policy forward, i.e. one training step from one forward to
    the next (forward, loss, backward, clip, optimizer, bookkeeping); on CUDA the clock waits
    for the device and the peak-memory counter restarts at the first step."""

    def __init__(self, device):
        self.device, self.times = device, []

    def wrap(self, module):
        if isinstance(module, ValueModel):
            return module
        clock = self

        class Clocked(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = module

            def forward(self, *args, **kwargs):
                if clock.device.type == "cuda":
                    torch.cuda.synchronize(clock.device)
                    if not clock.times:
                        torch.cuda.reset_peak_memory_stats(clock.device)
                clock.times.append(time.perf_counter())
                return self.inner(*args, **kwargs)

        return Clocked()


def _peak_rss_mb() -> float:
    if resource is None:
        return float("nan")
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2 ** 20


def _task_cost(job):
    """Per-step time and peak memory of one objective, in a process of its own."""
    st, base, data = _materials(job.cfg)
    obj, device, p = job.variant, st.device, job.params
    a = dataclasses.replace(st.cfg.align, steps=p["steps"], eval_every=10 ** 9)
    # align's first pass (reference log-probs of the whole dataset) is the same for everyone:
    # run it once so that the CPU's process-wide peak RSS afterwards measures the training.
    response_logprobs(base, data.prompt_tokens, data.response_tokens, st.enc.eot_token, a.length_normalize,
                      autocast=st.autocast)
    rss_before = _peak_rss_mb()
    runs = []
    tau = st.cfg.objective_tau(obj) if obj in ("rpo", "dro") else None
    for seed in p["seeds"]:
        clock = StepClock(device)
        policy, value, _ = align(obj, base, data, a, st.cfg.objective_lr(obj), tau, seed, st.enc.eot_token,
                                 st.autocast, log=_quiet, wrap=clock.wrap)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        steps = [t1 - t0 for t0, t1 in zip(clock.times, clock.times[1:])][p["skip"]:]
        q = statistics.quantiles(steps, n=4) if len(steps) > 1 else [steps[0]] * 3
        run = {"seed": seed, "ms_per_step": 1000 * statistics.median(steps), "ms_iqr": 1000 * (q[2] - q[0]),
               "params": sum(x.numel() for m in (policy, value) if m is not None for x in m.parameters())}
        if device.type == "cuda":
            run["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        else:
            run["peak_rss_mb"], run["rss_growth_mb"] = _peak_rss_mb(), _peak_rss_mb() - rss_before
        runs.append(run)
    return {"runs": runs}


TASKS = {"prepare": _task_prepare, "train": _task_train, "trajectory": _task_trajectory,
         "logz_ref": _task_logz_ref, "cost": _task_cost}


# =============================================================================================
# Aggregation and the small analyses (pure functions, tested)


def aggregate(per_seed: list, keys=None) -> tuple[dict, dict]:
    """Means and 95% intervals over seeds of every numeric key (diverged runs left out)."""
    ok = [r for r in per_seed if not r.get("diverged")]
    keys = keys or [k for k in (ok[0] if ok else {}) if k != "seed" and isinstance(ok[0][k], (int, float))
                    and not isinstance(ok[0][k], bool)]
    mean, ci = {}, {}
    for k in keys:
        values = [r[k] for r in ok if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        mean[k], ci[k] = mean_ci(values) if values else (float("nan"), float("nan"))
    return mean, ci


def make_rows(jobs: list, results: list, x_of=None) -> list:
    """One row per (variant, setting): the per-seed results and their mean ± interval."""
    rows = {}
    for job, res in zip(jobs, results):
        key = (job.variant, json.dumps(job.setting, sort_keys=True), json.dumps(job.params.get("row", {})))
        row = rows.setdefault(key, {"variant": job.variant, "setting": job.setting, **job.params.get("row", {}),
                                    "label": _label(job.variant, job.setting), "per_seed": []})
        row["per_seed"].append({k: v for k, v in res.items() if k not in ("path", "values")})
        row.setdefault("paths", []).append(res.get("path"))
    for row in rows.values():
        row["mean"], row["ci"] = aggregate(row["per_seed"])
        row["n_seeds"] = len(row["per_seed"])
        row["n_diverged"] = sum(bool(r.get("diverged")) for r in row["per_seed"])
    return list(rows.values())


def _label(variant, setting) -> str:
    names = {"sft_lr": "lr", "lr": "lr", "beta": "β", "rpo_tau": "τ", "dro_tau": "τ", "prior_strength": "prior"}
    return " ".join(f"{names.get(k, k)}={v:g}" for k, v in setting.items()) or variant


def best_under_kl(points: list, thresholds=KL_THRESHOLDS) -> list:
    """points: (kl, value, label) → for each threshold the point with the highest value among
    those with kl ≤ threshold (None = no limit), or None when no point qualifies."""
    out = []
    for t in thresholds:
        ok = [p for p in points if t is None or p[0] <= t]
        out.append(max(ok, key=lambda p: p[1]) if ok else None)
    return out


def pareto_front(points: list) -> list:
    """points: (kl, value) → for each, True when no other point has kl ≤ and value ≥ with one
    of them strict (lower KL and higher value are both better)."""
    return [not any(k2 <= k and v2 >= v and (k2 < k or v2 > v) for k2, v2 in points) for k, v in points]


def paired_difference(a: list, b: list, key: str) -> tuple[float, float]:
    """Mean and 95% interval of a[key] − b[key] over the seeds both have (paired by seed)."""
    number = lambda r: isinstance(r.get(key), (int, float)) and not r.get("diverged")
    bs = {r["seed"]: r[key] for r in b if number(r)}
    return mean_ci([r[key] - bs[r["seed"]] for r in a if number(r) and r["seed"] in bs])


def select_on_validation(rows: list) -> dict:
    """Per variant, the setting with the highest mean *validation* gold reward among those whose
    validation samples stay ≥ MIN_FLUENCY fluent (pipeline.sweep's rule; test stays untouched)."""
    chosen = {}
    for row in rows:
        m = row["mean"]
        if not math.isfinite(_num(m.get("val_gold"))):
            continue
        best = chosen.get(row["variant"])
        rank = (_num(m.get("val_fluency")) >= MIN_FLUENCY, m["val_gold"])
        if best is None or rank > best[0]:
            chosen[row["variant"]] = (rank, row)
    return {v: r for v, (_, r) in chosen.items()}


# =============================================================================================
# The experiments


def frontier(ctx: Ctx) -> dict:
    """1. Each objective's reward–KL and gold–KL curve over its own knob (τ, β or lr)."""
    return _frontier(ctx, "frontier", ctx.grid["frontier"], {})


def offpolicy(ctx: Ctx) -> dict:
    """2. The frontier again on data from the world's off-policy generator (scored; ref
    log-probs under π_ref), where RPO's "mean" estimator and DRO's value are off their
    assumptions; RPO's "ref" estimator (the authors' code) included."""
    return _frontier(ctx, "offpolicy", ctx.grid["offpolicy"], {"collect": {"off_policy": True}})


def _frontier(ctx, name, grid, sections) -> dict:
    jobs = [train_job(ctx, v, s, {KNOBS[VARIANTS[v][0]][0]: x}, sections)
            for v, xs in grid.items() for x in xs for s in ctx.seeds]
    return {"grid": grid, "jobs": len(jobs), "rows": make_rows(jobs, run_jobs(ctx, jobs))}


def frontier_summary(d) -> dict:
    """Who dominates where: the best mean (test) reward and gold at KL ≤ each threshold, the
    joint Pareto fronts, and each variant's setting chosen on validation with paired
    differences to RPO's chosen setting."""
    rows = [r for r in d["rows"] if _num(r["mean"].get("kl")) == _num(r["mean"].get("kl"))]  # not NaN
    out = {"kl_thresholds": [t if t is not None else "inf" for t in KL_THRESHOLDS]}
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    for metric in ("reward", "gold"):
        best = {}
        for v in variants:
            pts = [(r["mean"]["kl"], _num(r["mean"].get(metric)), r["label"], r["ci"].get(metric))
                   for r in rows if r["variant"] == v]
            best[v] = [None if b is None else {"value": b[1], "ci": b[3], "kl": b[0], "label": b[2]}
                       for b in best_under_kl(pts)]
        out[f"best_{metric}_under_kl"] = best
        out[f"winner_{metric}"] = [max((v for v in variants if best[v][i]), key=lambda v: best[v][i]["value"],
                                       default=None) for i in range(len(KL_THRESHOLDS))]
        ok = rows
        front = pareto_front([(r["mean"]["kl"], _num(r["mean"].get(metric))) for r in ok])
        out[f"pareto_{metric}"] = [f"{r['variant']} {r['label']}" for r, f in zip(ok, front) if f]
    chosen = select_on_validation(rows)
    out["selected"] = {v: {"label": r["label"], "setting": r["setting"], "mean": r["mean"], "ci": r["ci"]}
                       for v, r in chosen.items()}
    if "rpo" in chosen:
        out["selected_minus_rpo"] = {
            v: {k: paired_difference(r["per_seed"], chosen["rpo"]["per_seed"], k)
                for k in ("reward", "gold", "kl", "distinct_2", "toxicity_rate", "fluency")}
            for v, r in chosen.items() if v != "rpo"}
    return {"summary": out}


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def k_experiment(ctx: Ctx) -> dict:
    """3. K responses per prompt at a fixed number of samples: RPO (mean estimator) vs DRO,
    and how far RPO's log Ẑ(x) and DRO's V(x)/τ are from a many-sample log Z(x)."""
    g = ctx.grid["k"]
    ks = [(k, g["total"] // k) for k in g["k"]]
    jobs = [train_job(ctx, v, s, sections={"collect": {"k": k, "n_prompts": n}}, values=v == "dro", row={"k": k})
            for k, n in ks for v in ("rpo", "dro") for s in ctx.seeds]
    refs = [Job("logz_ref", ctx.cfg(s, collect={"k": ks[0][0], "n_prompts": ks[0][1]}), s, "reference",
                params={"ks": ks, "samples": g["reference_samples"]}) for s in ctx.seeds]
    results = run_jobs(ctx, jobs + refs)
    train, ref = results[:len(jobs)], dict(zip(ctx.seeds, results[len(jobs):]))
    errors = []  # per K and seed: |estimate − log Z_ref| averaged over prompts, and the bias
    for job, res in zip(jobs, train):
        if job.variant == "dro" and "values" in res:
            r = ref[job.seed][str(job.params["row"]["k"])]
            errors.append({"k": job.params["row"]["k"], "seed": job.seed, **_errors("dro_v", res["values"], r["logz_ref"]),
                           **_errors("rpo_logz", r["logz_hat"], r["logz_ref"])})
    summary = {}
    for k, _ in ks:
        per = [e for e in errors if e["k"] == k]
        mean, ci = aggregate(per, [c for c in per[0] if c not in ("k", "seed")]) if per else ({}, {})
        summary[str(k)] = {"mean": mean, "ci": ci, "per_seed": per}
    return {"grid": {**g, "settings": ks}, "jobs": len(jobs) + len(refs), "rows": make_rows(jobs, train),
            "logz": summary}


def _errors(name, estimate, reference) -> dict:
    d = [a - b for a, b in zip(estimate, reference)]
    return {f"{name}_abs_err": sum(abs(x) for x in d) / len(d), f"{name}_bias": sum(d) / len(d)}


def heterogeneity(ctx: Ctx) -> dict:
    """4. How much prompts differ (the world's subject-prior strength): RPO's per-prompt log Ẑ
    vs one global baseline for all prompts vs DRO's learned V(x)."""
    grid = ctx.grid["heterogeneity"]["prior_strength"]
    jobs = [train_job(ctx, v, s, sections={"world": {"prior_strength": ps}}, row={"prior_strength": ps})
            for ps in grid for v in ("rpo", "rpo-global", "dro") for s in ctx.seeds]
    results = run_jobs(ctx, jobs)
    rows = make_rows(jobs, results)
    spread = {}
    for ps in grid:  # between-prompt vs within-prompt reward spread of each world (seed 0's)
        w = _world(ctx.cfg(ctx.seeds[0], world={"prior_strength": ps}))
        between, within = reward_spread(w, w.train_prompts[:40])
        spread[str(ps)] = {"between": between, "within": within, "ratio": between / within}
    return {"grid": {"prior_strength": grid}, "jobs": len(jobs), "rows": rows, "spread": spread}


def heterogeneity_paired(d) -> dict:
    """RPO − RPO-global and RPO − DRO at each prior strength, paired by seed."""
    diffs = {}
    for ps in d["grid"]["prior_strength"]:
        by = {r["variant"]: r for r in d["rows"] if r["prior_strength"] == ps}
        diffs[str(ps)] = {f"rpo_minus_{v}": {k: paired_difference(by["rpo"]["per_seed"], by[v]["per_seed"], k)
                                             for k in ("reward", "gold", "kl")} for v in ("rpo-global", "dro")}
    return {"paired": diffs}


def _world(cfg):
    from .worlds import make_world
    return make_world(cfg.world)


def variance(ctx: Ctx) -> dict:
    """5. Gradient spread at fixed parameters along RPO's and DRO's training, loss and
    gradient-norm curves across seeds, and divergence / collapse at larger learning rates."""
    g = ctx.grid["variance"]
    traj = [Job("trajectory", ctx.cfg(s), s, v, params={"batches": g["batches"]}) for v in ("rpo", "dro")
            for s in ctx.seeds]
    lr_jobs = [train_job(ctx, v, s, {"lr": lr}) for v in ("rpo", "dro") for lr in g["lrs"] for s in ctx.seeds]
    results = run_jobs(ctx, traj + lr_jobs)
    tr, lr_res = results[:len(traj)], results[len(traj):]
    spread = {}
    for job, res in zip(traj, tr):
        for p in res["points"]:
            spread.setdefault((job.variant, p["step"], p["estimator"]), []).append({"seed": job.seed, **p})
    points = []
    for (v, step, est), per in spread.items():
        mean, ci = aggregate(per, ["trace_cov", "mean_grad_sq", "noise_to_signal"])
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


def cost(ctx: Ctx) -> dict:
    """6. Median time per training step (after warm-up) and peak memory, one process per
    objective, run one at a time. CUDA: peak allocated memory during the steps. CPU: the
    process's peak RSS (coarse: allocator caching and Python included)."""
    g = ctx.grid["cost"]
    seeds = ctx.seeds[:g["repeats"]]
    jobs = [Job("cost", ctx.cfg(ctx.seeds[0]), ctx.seeds[0], o, params={**g, "seeds": seeds})
            for o in ("sft", "kto", "dro", "rpo")]
    results = run_jobs(ctx, jobs, fresh=True)
    rows = []
    for job, res in zip(jobs, results):
        mean, ci = aggregate(res["runs"])
        rows.append({"variant": job.variant, "per_seed": res["runs"], "mean": mean, "ci": ci})
    return {"grid": {**g, "seeds": seeds}, "jobs": len(jobs), "rows": rows,
            "memory": "cuda max_memory_allocated during the steps" if _device(ctx).type == "cuda"
            else "CPU process peak RSS (ru_maxrss); growth = over the peak before alignment"}


def paper(ctx: Ctx) -> dict:
    """7. The authors' settings (`--preset paper`: per-token-mean log-probs, "ref" estimator
    with τ = 5, matched-batch KTO with β = 1, lr 1e-4) against our defaults, same data."""
    objs = ctx.grid["paper"]["objectives"]
    jobs = [train_job(ctx, v, s, row={"objective": o, "preset": p}) for o in objs
            for p, v in (("default", o), ("paper", f"{o}-paper")) for s in ctx.seeds]
    return {"grid": {"objectives": objs, "paper": PAPER["align"]}, "jobs": len(jobs),
            "rows": make_rows(jobs, run_jobs(ctx, jobs))}


def paper_paired(d) -> dict:
    """paper − default per objective, paired by seed."""
    paired = {}
    for o in d["grid"]["objectives"]:
        by = {r["preset"]: r for r in d["rows"] if r["objective"] == o}
        paired[o] = {k: paired_difference(by["paper"]["per_seed"], by["default"]["per_seed"], k)
                     for k in ("reward", "gold", "kl", "distinct_2", "fluency")}
    return {"paper_minus_default": paired}


RUNNERS = {"frontier": frontier, "offpolicy": offpolicy, "k": k_experiment, "heterogeneity": heterogeneity,
           "variance": variance, "cost": cost, "paper": paper}
# What is computed from the saved results alone (again by `writeup`, so that it can be revised
# without rerunning anything).
ANALYSES = {"frontier": frontier_summary, "offpolicy": frontier_summary, "heterogeneity": heterogeneity_paired,
            "paper": paper_paired}


# =============================================================================================
# Running, saving, plotting


def run_experiment(ctx: Ctx, name: str) -> dict:
    if ctx.plan is not None:
        try:
            RUNNERS[name](ctx)
        except _Planned:
            p = ctx.plan[-1]
            print(f"{name:<14} {p['jobs']:>4} jobs {p['tasks']} over {p['base_models']} base model(s)")
            return p
    print(f"== {name} ({'quick' if ctx.quick else 'full'}, seeds {ctx.seeds}, workers {ctx.workers})", flush=True)
    t0 = time.perf_counter()
    result = RUNNERS[name](ctx)
    cfg = ctx.base_cfg()
    opts = f"{' --quick' if ctx.quick else ''} --seeds {','.join(map(str, ctx.seeds))}" \
           f"{' --fixed-data' if ctx.fixed_data else ''} --workers {ctx.workers}"
    d = {"experiment": name, "quick": ctx.quick, "seeds": ctx.seeds, "fixed_data": ctx.fixed_data,
         "workers": ctx.workers, "device": _describe_device(ctx), "machine": _machine(),
         "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "elapsed_s": time.perf_counter() - t0, "command": ctx.command,
         "rerun": f"python -m rpo_mini.experiments {name}{opts}",
         "config": {s: to_dict(getattr(cfg, s)) for s in ("world", "tokenizer", "model", "pretrain",
                                                          "collect", "align", "eval")}, **result}
    d = _analyse(name, _clean(d))
    os.makedirs(ctx.out, exist_ok=True)
    with open(os.path.join(ctx.out, f"{name}.json"), "w") as f:
        json.dump(d, f, indent=1)
    PLOTS[name](d, os.path.join(ctx.out, f"{name}.png"))
    print(MARKDOWN[name](d), flush=True)
    print(f"== {name}: {d['jobs']} jobs in {d['elapsed_s']:.1f}s → {ctx.out}/{name}.json, {name}.png\n", flush=True)
    return d


def _analyse(name, d) -> dict:
    return _clean(d | ANALYSES[name](d)) if name in ANALYSES else d


def _clean(obj):
    """Strict JSON: tuples become lists, NaN and ±inf become null."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _device(ctx):
    return runtime.pick_device(ctx.device)


def _describe_device(ctx) -> str:
    d = _device(ctx)
    if d.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(d)})"
    return str(d)


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _m(row, k):
    v = row["mean"].get(k)
    return float("nan") if v is None else v


def _c(row, k):
    v = row["ci"].get(k)
    return 0.0 if v is None else v


def plot_frontier(d, path):
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric in zip(axes, ("reward", "gold")):
        for v in dict.fromkeys(r["variant"] for r in d["rows"]):
            rows = sorted((r for r in d["rows"] if r["variant"] == v), key=lambda r: _m(r, "kl"))
            ax.errorbar([_m(r, "kl") for r in rows], [_m(r, metric) for r in rows],
                        xerr=[_c(r, "kl") for r in rows], yerr=[_c(r, metric) for r in rows],
                        fmt="-o", ms=4, capsize=2, color=COLORS.get(v), label=v)
            for r in rows:
                ax.annotate(r["label"].split("=")[-1], (_m(r, "kl"), _m(r, metric)), fontsize=7,
                            xytext=(3, 3), textcoords="offset points", color=COLORS.get(v))
        ref = [r["mean"].get(f"ref_{metric}") for r in d["rows"] if r["mean"].get(f"ref_{metric}") is not None]
        if ref:
            ax.plot([0], [ref[0]], "*", ms=12, color="0.3", label="π_ref")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("KL(π ‖ π_ref), nats per response (test)")
        ax.set_ylabel(f"mean {metric} reward (test)")
        ax.legend(fontsize=8)
    fig.suptitle(f"{d['experiment']}: mean ± 95% CI over {len(d['seeds'])} seeds (labels: τ, β or lr)")
    _save(fig, path)


def plot_k(d, path):
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for v in ("rpo", "dro"):
        rows = sorted((r for r in d["rows"] if r["variant"] == v), key=lambda r: r["k"])
        for metric, ls in (("gold", "-"), ("reward", ":")):
            axes[0].errorbar([r["k"] for r in rows], [_m(r, metric) for r in rows], yerr=[_c(r, metric) for r in rows],
                             fmt=ls + "o", capsize=2, color=COLORS[v], label=f"{v} {metric}")
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
    _save(fig, path)


def plot_heterogeneity(d, path):
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, metric in zip(axes, ("reward", "gold", "kl")):
        for v in ("rpo", "rpo-global", "dro"):
            rows = sorted((r for r in d["rows"] if r["variant"] == v), key=lambda r: r["prior_strength"])
            ax.errorbar([r["prior_strength"] for r in rows], [_m(r, metric) for r in rows],
                        yerr=[_c(r, metric) for r in rows], fmt="-o", capsize=2, color=COLORS[v], label=v)
        ax.set_xlabel("subject-prior strength (0 = all prompts alike)")
        ax.set_ylabel(f"mean {metric} (test)" if metric != "kl" else "KL(π ‖ π_ref) (test)")
        ax.legend(fontsize=8)
    fig.suptitle(f"heterogeneity: per-prompt vs global baseline; mean ± 95% CI over {len(d['seeds'])} seeds")
    _save(fig, path)


def plot_variance(d, path):
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
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
            mean, ci = _smooth([m for m, _ in mc], w), _smooth([c or 0 for _, c in mc], w)
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
    _save(fig, path)


def _smooth(xs, w):
    return [sum(xs[i - w:i]) / w for i in range(w, len(xs) + 1)]


def plot_cost(d, path):
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    names = [r["variant"] for r in d["rows"]]
    mem_key = "peak_mb" if "peak_mb" in d["rows"][0]["mean"] else "peak_rss_mb"
    for ax, key, label in ((axes[0], "ms_per_step", "ms per step (median)"),
                           (axes[1], mem_key, "peak memory (MiB)" + (" — process RSS" if mem_key != "peak_mb" else ""))):
        ax.bar(names, [_m(r, key) for r in d["rows"]], yerr=[_c(r, key) for r in d["rows"]],
               color=[COLORS[n] for n in names], capsize=3)
        ax.set_ylabel(label)
        ax.set_xlabel("objective")
    fig.suptitle(f"cost on {d['device']}")
    _save(fig, path)


def plot_paper(d, path):
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    objs = d["grid"]["objectives"]
    for ax, metric in zip(axes, ("reward", "gold", "kl")):
        for i, preset in enumerate(("default", "paper")):
            rows = {r["objective"]: r for r in d["rows"] if r["preset"] == preset}
            ax.bar([j + (i - 0.5) * 0.38 for j in range(len(objs))], [_m(rows[o], metric) for o in objs], 0.38,
                   yerr=[_c(rows[o], metric) for o in objs], capsize=2, label=preset,
                   color=[COLORS[o] for o in objs], alpha=1.0 if preset == "default" else 0.5,
                   hatch=None if preset == "default" else "//")
        ax.set_xticks(range(len(objs)), objs)
        ax.set_ylabel(f"mean {metric} (test)" if metric != "kl" else "KL(π ‖ π_ref) (test)")
        ax.legend(fontsize=8)
    fig.suptitle(f"paper preset (hatched) vs defaults; mean ± 95% CI over {len(d['seeds'])} seeds")
    _save(fig, path)


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _plt().close(fig)


PLOTS = {"frontier": plot_frontier, "offpolicy": plot_frontier, "k": plot_k, "heterogeneity": plot_heterogeneity,
         "variance": plot_variance, "cost": plot_cost, "paper": plot_paper}


# =============================================================================================
# Markdown tables (printed after each experiment; `writeup` collects them into FINDINGS.md)


def _pm(mean, ci, fmt="+.3f") -> str:
    if mean is None or (isinstance(mean, float) and not math.isfinite(mean)):
        return "n/a"
    return f"{mean:{fmt}}" + (f" ± {ci:.3f}" if ci is not None and math.isfinite(ci) else "")


def _table(header, lines) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
                     ["| " + " | ".join(str(c) for c in ln) + " |" for ln in lines])


def _provenance(d) -> str:
    m = d["machine"]
    return (f"*{d['experiment']}*: `{d['command'] or d['rerun']}` — {d['device']}, {m['cpu']} ({m['cores']} cores), "
            f"torch {m['torch']}; {d['date']}; {d['elapsed_s']:.0f} s for {d['jobs']} jobs; seeds {d['seeds']}"
            f"{' (alignment only: one world/base/dataset)' if d.get('fixed_data') else ''}"
            f"{'; QUICK variant, not a result' if d['quick'] else ''}.")


def _metric_table(rows, extra=(), reference=False) -> str:
    cols = [("reward", "reward"), ("gold", "gold"), ("kl", "KL"), ("win_rate", "win vs ref"),
            ("distinct_2", "distinct-2"), ("toxicity_rate", "toxic"), ("fluency", "fluent")]
    header = ["variant", *[e for e in extra], "setting", *[c[1] for c in cols], "seeds"]
    lines = []
    if reference and rows:  # every row holds the same reference evaluations (per seed)
        r = rows[0]
        lines.append(["π_ref", *["" for _ in extra], "base model",
                      *[_pm(r["mean"].get(f"ref_{k}"), r["ci"].get(f"ref_{k}"), "+.3f" if k in ("reward", "gold")
                            else ".3f") if k not in ("kl", "win_rate") else "—" for k, _ in cols], r["n_seeds"]])
    for r in rows:
        lines.append([r["variant"], *[r.get(e, "") for e in extra], r["label"],
                      *[_pm(r["mean"].get(k), r["ci"].get(k), "+.3f" if k in ("reward", "gold") else ".3f")
                        for k, _ in cols], f"{r['n_seeds'] - r.get('n_diverged', 0)}/{r['n_seeds']}"])
    return _table(header, lines)


def md_frontier(d) -> str:
    s = d["summary"]
    out = [_provenance(d), "", "Test metrics per setting (mean ± 95% CI over seeds); π_ref = the base model:", "",
           _metric_table(d["rows"], reference=True), ""]
    ths = [f"KL ≤ {t}" if t != "inf" else "any KL" for t in s["kl_thresholds"]]
    for metric in ("reward", "gold"):
        lines = [[v, *[_pm(b["value"], b["ci"]) + f" ({b['label']})" if b else "—" for b in best]]
                 for v, best in s[f"best_{metric}_under_kl"].items()]
        lines.append(["**best**", *[w or "—" for w in s[f"winner_{metric}"]]])
        out += [f"Best mean test {metric} among settings with mean KL under each threshold:", "",
                _table(["variant", *ths], lines), "",
                f"On the joint {metric}–KL Pareto front: {', '.join(s[f'pareto_{metric}'])}.", ""]
    sel = s["selected"]
    lines = [[v, r["label"], *[_pm(r["mean"].get(k), r["ci"].get(k)) for k in ("reward", "gold", "kl")],
              *[_pm(*s.get("selected_minus_rpo", {}).get(v, {}).get(k, (None, None)))
                if v != "rpo" else "—" for k in ("reward", "gold", "kl", "distinct_2", "toxicity_rate")]]
             for v, r in sel.items()]
    out += [f"Each variant at the setting chosen on *validation* (max gold, fluency ≥ {MIN_FLUENCY}); "
            "differences to RPO paired by seed (variant − RPO):", "",
            _table(["variant", "setting", "reward", "gold", "KL", "Δreward", "Δgold", "ΔKL", "Δdistinct-2", "Δtoxic"],
                   lines)]
    return "\n".join(out)


def md_k(d) -> str:
    lines = []
    for k in sorted(int(k) for k in d["logz"]):
        rows = {r["variant"]: r for r in d["rows"] if r["k"] == k}
        z = d["logz"][str(k)]
        lines.append([k, d["grid"]["total"] // k, *[_pm(_m(rows[v], m), _c(rows[v], m)) for v in ("rpo", "dro")
                                                     for m in ("gold", "kl")],
                      *[_pm(z["mean"].get(f"{n}_{e}"), z["ci"].get(f"{n}_{e}")) for n in ("rpo_logz", "dro_v")
                        for e in ("abs_err", "bias")]])
    return "\n".join([_provenance(d), "", _table(
        ["K", "prompts", "RPO gold", "RPO KL", "DRO gold", "DRO KL", "RPO log Ẑ |err|", "RPO log Ẑ bias",
         "DRO V/τ |err|", "DRO V/τ bias"], lines), "",
        f"Errors are against log Z(x) from {d['grid']['reference_samples']} fresh π_ref samples per prompt "
        "(itself a mean estimate), in nats, averaged over the training prompts; bias = mean signed error."])


def md_heterogeneity(d) -> str:
    lines = []
    for ps in d["grid"]["prior_strength"]:
        by = {r["variant"]: r for r in d["rows"] if r["prior_strength"] == ps}
        sp, pd = d["spread"][str(ps)], d["paired"][str(ps)]
        lines.append([ps, f"{sp['ratio']:.2f}", *[_pm(_m(by[v], "gold"), _c(by[v], "gold")) for v in
                                                  ("rpo", "rpo-global", "dro")],
                      _pm(*pd["rpo_minus_rpo-global"]["gold"]), _pm(*pd["rpo_minus_dro"]["gold"]),
                      _pm(*pd["rpo_minus_rpo-global"]["reward"]), _pm(*pd["rpo_minus_dro"]["reward"])])
    return "\n".join([_provenance(d), "", _table(
        ["prior strength", "between/within spread", "RPO gold", "RPO-global gold", "DRO gold",
         "RPO − global (gold)", "RPO − DRO (gold)", "RPO − global (reward)", "RPO − DRO (reward)"], lines), "",
        "All rows:", "", _metric_table(d["rows"], extra=("prior_strength",))])


def md_variance(d) -> str:
    lines = [[p["trajectory"], p["step"], p["estimator"], _pm(p["mean"]["trace_cov"], p["ci"]["trace_cov"], ".4g"),
              _pm(p["mean"]["mean_grad_sq"], p["ci"]["mean_grad_sq"], ".4g"),
              _pm(p["mean"]["noise_to_signal"], p["ci"]["noise_to_signal"], ".3g")]
             for p in sorted(d["spread"], key=lambda p: (p["trajectory"], p["step"], p["estimator"]))]
    fails = [[r["variant"], f"{r['setting']['lr']:g}", f"{r['n_diverged']}/{r['n_seeds']}",
              f"{r['n_collapsed']}/{r['n_seeds']}", _pm(r["mean"].get("fluency"), r["ci"].get("fluency"), ".3f"),
              _pm(r["mean"].get("gold"), r["ci"].get("gold"))] for r in d["rows"]]
    fin = {v: [d["curves"][v][k][-1][0] for k in ("loss", "grad_norm")] for v in d["curves"]}
    return "\n".join([_provenance(d), "",
                      f"Spread of the policy gradient over {d['grid']['batches']} minibatches at fixed parameters "
                      "(same minibatches for every baseline; mean ± CI over seeds):", "",
                      _table(["trajectory", "step", "baseline", "trace Cov", "‖mean grad‖²", "trace Cov / ‖mean‖²"],
                             lines), "",
                      "Final training loss / gradient norm (mean over seeds): " +
                      ", ".join(f"{v} {a:.4g} / {b:.4g}" for v, (a, b) in fin.items()) + ".", "",
                      f"Learning-rate stress test (diverged = non-finite loss; collapsed = test fluency < "
                      f"{d['collapse_fluency']}):", "",
                      _table(["objective", "lr", "diverged", "collapsed", "fluency", "gold"], fails)])


def md_cost(d) -> str:
    mem = "peak_mb" if "peak_mb" in d["rows"][0]["mean"] else "peak_rss_mb"
    lines = [[r["variant"], _pm(_m(r, "ms_per_step"), r["ci"].get("ms_per_step"), ".2f"), f"{_m(r, 'ms_iqr'):.2f}",
              _pm(_m(r, mem), r["ci"].get(mem), ".0f"), *([f"{_m(r, 'rss_growth_mb'):.0f}"] if mem != "peak_mb" else []),
              f"{int(_m(r, 'params')):,}"] for r in d["rows"]]
    header = ["objective", "ms/step (median)", "IQR ms", "peak MiB", *(["RSS growth MiB"] if mem != "peak_mb" else []),
              "trained params"]
    return "\n".join([_provenance(d), "", _table(header, lines), "",
                      f"{d['grid']['steps']} steps, first {d['grid']['skip']} skipped, repeats (seeds) "
                      f"{d['grid']['seeds']}; memory: {d['memory']}."])


def md_paper(d) -> str:
    lines = []
    for o in d["grid"]["objectives"]:
        by = {r["preset"]: r for r in d["rows"] if r["objective"] == o}
        pd = d["paper_minus_default"][o]
        lines.append([o, *[_pm(_m(by[p], m), _c(by[p], m)) for m in ("gold", "kl") for p in ("default", "paper")],
                      _pm(*pd["reward"]), _pm(*pd["gold"]), _pm(*pd["kl"]), _pm(*pd["fluency"])])
    return "\n".join([_provenance(d), "", _table(
        ["objective", "gold default", "gold paper", "KL default", "KL paper", "Δreward", "Δgold", "ΔKL", "Δfluency"],
        lines), "", "Δ = paper − default, paired by seed.", "", "All rows:", "",
        _metric_table(d["rows"], extra=("preset",))])


MARKDOWN = {"frontier": md_frontier, "offpolicy": md_frontier, "k": md_k, "heterogeneity": md_heterogeneity,
            "variance": md_variance, "cost": md_cost, "paper": md_paper}


def writeup(out: str, findings: str | None = None) -> str:
    """Markdown tables of every `OUT/NAME.json`; written to OUT/TABLES.md and, when `findings`
    names a file with `<!-- BEGIN NAME -->` / `<!-- END NAME -->` markers, between them."""
    parts = {}
    for name in EXPERIMENTS:
        path = os.path.join(out, f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                parts[name] = MARKDOWN[name](_analyse(name, json.load(f)))
    text = "\n\n".join(f"## {name}\n\n{body}\n\n![{name}]({name}.png)" for name, body in parts.items())
    with open(os.path.join(out, "TABLES.md"), "w") as f:
        f.write("# Experiment tables (generated by `python -m rpo_mini.experiments writeup`)\n\n" + text + "\n")
    if findings and os.path.exists(findings):
        with open(findings) as f:
            doc = f.read()
        rel = os.path.relpath(out, os.path.dirname(os.path.abspath(findings)))
        for name, body in parts.items():
            block = f"{body}\n\n![{name}]({rel}/{name}.png)\n"
            doc = re.sub(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)",
                         lambda m: m.group(1) + block + m.group(2), doc, flags=re.S)
        with open(findings, "w") as f:
            f.write(doc)
    return text


# =============================================================================================
# Command line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rpo_mini.experiments",
                                description="Test the RPO paper's claims on the toy worlds (FINDINGS.md).")
    p.add_argument("name", choices=(*EXPERIMENTS, "all", "writeup"))
    p.add_argument("--quick", action="store_true",
                   help="tiny config, 2 seeds, tiny grids, --fixed-data: a smoke test of the code, not a result")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2,3,4; quick: 0,1)")
    p.add_argument("--device", default="auto", help="auto (cuda → mps → cpu), cpu, cuda, ...")
    p.add_argument("--out", default="findings", help="where NAME.json and NAME.png go")
    p.add_argument("--cache", default=None, help="the stages' cache folder (default out/experiments[-quick])")
    p.add_argument("--workers", type=int, default=1, help="parallel processes for independent jobs")
    p.add_argument("--fixed-data", action="store_true",
                   help="one world/base/dataset (the first seed's); seeds vary alignment and evaluation only")
    p.add_argument("--findings", default="FINDINGS.md", help="writeup: fill the tables between its markers")
    p.add_argument("--plan", action="store_true",
                   help="print each experiment's job count (jobs already cached by an earlier experiment "
                        "of the same run are counted again) and run nothing")
    args = p.parse_args(argv)
    if args.name == "writeup":
        print(writeup(args.out, args.findings))
        return 0
    seeds = [int(s) for s in (args.seeds or ("0,1" if args.quick else "0,1,2,3,4")).split(",") if s.strip()]
    ctx = Ctx(quick=args.quick, seeds=seeds, device=args.device, out=args.out, workers=max(1, args.workers),
              cache=args.cache or ("out/experiments-quick" if args.quick else "out/experiments"),
              fixed_data=args.fixed_data or args.quick, plan=[] if args.plan else None,
              command="python -m rpo_mini.experiments " + " ".join(argv if argv is not None else sys.argv[1:]))
    t0 = time.perf_counter()
    names = EXPERIMENTS if args.name == "all" else (args.name,)
    try:
        total = sum(run_experiment(ctx, n)["jobs"] for n in names)
    finally:
        ctx.close()
    print(f"{'planned' if args.plan else 'done'}: {', '.join(names)}: {total} jobs"
          f"{'' if args.plan else f' in {time.perf_counter() - t0:.1f}s'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
