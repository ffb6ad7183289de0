"""Running the experiments: settings, jobs, worker processes, the tasks they share, and saving.

An experiment is a grid of jobs. A job is one task (a "module:function" string, so that a
spawned worker can import it) on one `Config`, for one seed and one variant. Every task builds
or loads what it needs through the library's cached stages (`rpo_mini.stages`) under
`--cache`, so reruns reuse worlds, tokenizers, base models, datasets, policies and evaluations.

    Ctx            what one invocation shares: quick or full, seeds, device, folders, workers
    train_job      the job that trains and evaluates one (variant, setting, seed)
    run_jobs       first one `prepare` job per base model (its datasets, its reference
                   samples), then the jobs themselves, in-process or in a spawn pool
    run_experiment runs one `Experiment`, saves OUT/NAME.json and NAME.png, prints its tables
"""

import copy
import dataclasses
import datetime
import importlib
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from rpo_mini import checkpoint, exact, losses, runtime, stages
from rpo_mini.align import prepare as align_prepare
from rpo_mini.config import PAPER, QUICK, WORLD_DEFAULTS, CollectConfig, Config, apply, stage_key, to_dict
from rpo_mini.data import collate_prompts, reward_scale
from rpo_mini.evaluate import summarize
from rpo_mini.files import strict, write_json
from rpo_mini.model import ValueModel
from rpo_mini.sampling import response_logprobs
from rpo_mini.stages import Artifact
from rpo_mini.worlds import make_world

# A variant = an objective + alignment settings + how its data is presented.
VARIANTS = {
    "sft": ("sft", {}), "kto": ("kto", {}), "dro": ("dro", {}), "rpo": ("rpo", {}),
    "rpo-loo": ("rpo", {"estimator": "loo"}),      # leave-one-out partition
    "rpo-ref": ("rpo", {"estimator": "ref"}),      # the authors' estimator, Σ_j π_ref(y_j|x) e^{r_j/τ}
    "rpo-iw": ("rpo", {"estimator": "iw"}),        # importance-weighted by π_ref/μ (off-policy, μ known)
    "rpo-exact": ("rpo", {"estimator": "exact"}),  # the enumerated log Z(x) (exact world only)
    "rpo-global": ("rpo", {}),                     # one baseline for all prompts (prompt ids zeroed)
    "dro-joint": ("dro", {"clip_separately": False}),  # policy and value clipped together
    "dro-shared": ("dro", {"dro_value": "shared"}),    # the authors' DRO: a value head on the policy
    **{f"{o}-paper": (o, PAPER["align"]) for o in ("sft", "kto", "dro", "rpo")},
    # the online family: each step samples the policy being trained (`--online` for RPO and DRO)
    "apo": ("apo", {}),                            # A*-PO: V̂* once from π_ref's dataset, 1 fresh sample/prompt
    "rpo-online": ("rpo", {"online": True}),       # log Ẑ from each step's fresh group
    "rpo-online-loo": ("rpo", {"online": True, "estimator": "loo"}),
    "rloo": ("rloo", {}), "grpo": ("grpo", {}),
    "dr-grpo": ("grpo", {"grpo_std": False}),      # GRPO without the std: r − group mean
    "dro-online": ("dro", {"online": True}),       # the valued contrast, on fresh groups
}

# Changes to the defaults, for every experiment (the protocol of FINDINGS.md): DRO's policy and
# value gradients clipped apart; no validation probe during training (the selection evaluates
# each final policy on every validation prompt instead, `train`). Reviews: max_new_tokens 48
# (default 40) sizes the model's context for the off-policy generator's longer reviews (up to
# ~47 tokens with the prompt; collection cuts longer ones), so that on- and off-policy data
# share one base model per seed.
PROTOCOL = {"align": {"clip_separately": True, "eval_every": 10 ** 9}}
FULL = {"reviews": {"collect": {"max_new_tokens": 48}}, "arithmetic": {}}
# On top of config.QUICK: smaller still, so that `all --quick` runs in minutes on a 2-core CPU.
QUICKER = {"pretrain": {"pretrain_steps": 100}, "collect": {"n_prompts": 32, "max_new_tokens": 48},
           "align": {"steps": 12}, "eval": {"eval_prompts": 12}}

METRICS = ("reward", "gold", "gated_gold", "kl", "win_rate", "distinct_1", "distinct_2", "toxicity_rate", "fluency", "length")


@dataclass(frozen=True)
class Experiment:
    """One experiment: its grid, how it runs, and how its saved result is analysed and shown."""
    name: str
    grid: dict                       # {"full": ..., "quick": ...}
    run: Callable                    # (ctx, grid) -> {"grid", "jobs", ...}: the raw results
    plot: Callable                   # (d, path): NAME.png from the saved result
    markdown: Callable               # d -> its tables, as markdown
    analyse: Callable | None = None  # d -> what is computed from the saved result alone (again by writeup)

    def analysed(self, d: dict) -> dict:
        return strict(d | self.analyse(d)) if self.analyse else d


# =============================================================================================
# The run context and the jobs


@dataclass
class Ctx:
    """What every experiment of one invocation shares."""
    quick: bool = False
    seeds: list = field(default_factory=lambda: [0, 1, 2, 3, 4])
    device: str = "auto"
    cache: str = "out/experiments"
    workers: int = 1
    fixed_data: bool = False
    command: str = ""
    plan: list | None = None  # --plan: count the jobs, run nothing
    ran: list = field(default_factory=list)  # every job run_jobs ran: what the saved JSON says ran
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

    def base_cfg(self, world_name: str = "reviews") -> Config:
        """The defaults of the world (its own first, as train.py applies them), then the protocol."""
        cfg = Config()
        cfg.world.name = world_name
        defaults = WORLD_DEFAULTS.get(world_name, {})
        apply(apply(apply(cfg, defaults), FULL[world_name]), PROTOCOL)
        if self.quick:
            apply(apply(cfg, QUICK), QUICKER)
            apply(cfg, {s: v for s, v in defaults.items() if s == "collect"})
            cfg.run.quick = True
        cfg.run.out, cfg.run.device = self.cache, self.device
        return cfg

    def cfg(self, seed: int, world_name: str = "reviews", **sections) -> Config:
        """The config of one replicate in one world: `sections` = {"align": {...}, "collect": {...}, ...}."""
        cfg = apply(self.base_cfg(world_name), sections)
        cfg.run.seed = cfg.world.seed = self.seeds[0] if self.fixed_data else seed
        return cfg


@dataclass
class Job:
    task: str                      # "module:function" of the task, e.g. "experiments.runner:train"
    cfg: Config
    seed: int = 0                  # the alignment (and evaluation) seed
    variant: str = ""
    setting: dict = field(default_factory=dict)  # what defines this point of the grid
    params: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.task.rsplit(":", 1)[-1]


def train_job(ctx, variant: str, seed: int, setting: dict | None = None, sections: dict | None = None,
              world: str = "reviews", **params) -> Job:
    """Train + evaluate one (variant, setting, seed): `setting` holds AlignConfig changes."""
    setting = setting or {}
    sections = copy.deepcopy(sections or {})
    sections["align"] = {**VARIANTS[variant][1], **sections.get("align", {}), **setting}
    return Job(f"{__name__}:train", ctx.cfg(seed, world, **sections), seed, variant, setting, params)


def tau_field(variant: str) -> str:
    """The AlignConfig field of a variant's τ: `dro_tau` for DRO's variants, `rpo_tau` for RPO's."""
    return f"{VARIANTS[variant][0]}_tau"


def base_key(cfg: Config) -> str:
    """The key of one base model and where it lives: what its world, tokenizer, shape (the
    context length follows max_new_tokens) and pretraining are, and the run's cache folder,
    device and dtype. Jobs with one key share a `prepare` job and, in a process, one copy."""
    return stage_key(cfg.world, cfg.tokenizer, cfg.model, cfg.pretrain, cfg.run.seed, cfg.collect.max_new_tokens,
                     cfg.run.out, cfg.run.device, cfg.run.dtype)


class Planned(Exception):
    """--plan: the jobs were counted, not run."""


def run_jobs(ctx: Ctx, jobs: list, fresh: bool = False) -> list:
    """Run jobs in order (in-process) or in a spawn pool; results in the order of `jobs`.

    Shared artifacts are built first (`prepare_jobs`), one job per base model, so that no two
    processes ever write the same file. fresh=True gives every job its own new process, one at
    a time (clean timings and peak-memory readings for `cost`)."""
    prep = prepare_jobs(jobs)
    if ctx.plan is not None:
        ctx.plan.append({"jobs": len(jobs), "base_models": len(prep),
                         "tasks": {t: sum(j.kind == t for j in jobs) for t in dict.fromkeys(j.kind for j in jobs)}})
        raise Planned
    ctx.ran.extend(jobs)
    for phase, todo in (("prepare", prep), ("run", jobs)):
        if not todo:
            continue
        t0 = time.perf_counter()
        results = _map(ctx, todo, fresh=fresh and phase == "run")
        print(f"  {phase}: {len(todo)} job(s) in {time.perf_counter() - t0:.1f}s", flush=True)
    return results


def prepare_jobs(jobs) -> list:
    """One `prepare` job per base model: its datasets and its reference evaluations."""
    groups = {}
    for job in jobs:
        c = job.cfg
        g = groups.setdefault(base_key(c), Job(f"{__name__}:prepare", c, c.run.seed, "data",
                                               params={"collects": [], "seeds": []}))
        if to_dict(c.collect) not in g.params["collects"]:
            g.params["collects"].append(to_dict(c.collect))
        if job.seed not in g.params["seeds"]:
            g.params["seeds"].append(job.seed)
    return list(groups.values())


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
    bits = [f"[{n + 1:>3}/{total}] {job.kind:<10} {job.variant:<10}",
            " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in job.setting.items()),
            f"seed {job.seed}"]
    if "reward" in result:
        bits.append(f"reward {result['reward']:+.3f} gold {result['gold']:+.3f} kl {result['kl']:.2f}")
    if result.get("diverged"):
        bits.append("DIVERGED")
    print("  ".join(b for b in bits if b) + f"  ({result.get('seconds', 0.0):.1f}s)", flush=True)
    return result


# =============================================================================================
# Worker side: every task builds (or loads) what it needs through the cached stages


def _init_worker(threads, cache):
    torch.set_num_threads(threads)
    # Progress bars of N processes would interleave; a file is no terminal, so tqdm stays quiet.
    os.makedirs(os.path.join(cache, "logs"), exist_ok=True)
    sys.stderr = open(os.path.join(cache, "logs", f"worker-{os.getpid()}.log"), "a", buffering=1)


def _indexed(item):
    i, job = item
    return i, run_job(job)


def quiet(*args, **kwargs):
    pass


def run_job(job: Job) -> dict:
    module, name = job.task.split(":")
    t0 = time.perf_counter()
    result = getattr(importlib.import_module(module), name)(job)
    result["seconds"] = result.get("seconds", time.perf_counter() - t0)
    return result


@dataclass(frozen=True)
class JobMaterials(stages.Materials):
    """What a task starts from: the library's materials (run context, world, tokenizer, base
    model π_ref, dataset) of one job's config, and that config."""
    cfg: Config = None

    @property
    def enc(self):
        return self.tok.value

    @property
    def reward(self) -> str:
        return self.cfg.collect.reward or self.world.default_reward

    def reference_samples(self, seed: int) -> dict:
        """π_ref's samples on the test prompts (cached by the evaluation stage)."""
        return stages.evaluate(self.ctx, "reference", self.base, self.base.value, seed, self.world, self.tok,
                               self.cfg.eval, self.cfg.collect.max_new_tokens)


_BASES, _DATASETS = {}, {}  # per process: base_key → (ctx, world, tok, base); + collect → dataset


def materials(cfg: Config) -> JobMaterials:
    """cfg's world, tokenizer, base model and dataset, built or loaded once per process."""
    key = base_key(cfg)
    if key not in _BASES:
        ctx = stages.context(cfg.run, log=quiet)
        world = make_world(cfg.world)
        tok = stages.tokenizer(ctx, world, cfg.tokenizer)
        mcfg = stages.model_config(world, tok.value, cfg.model, cfg.collect.max_new_tokens)
        _BASES[key] = ctx, world, tok, stages.base_model(ctx, world, tok, mcfg, cfg.pretrain, cfg.run.seed)
    ctx, world, tok, base = _BASES[key]
    data_key = stage_key(key, cfg.collect)
    if data_key not in _DATASETS:
        _DATASETS[data_key] = stages.dataset(ctx, world, tok, base, cfg.collect, cfg.run.seed)
    return JobMaterials(ctx, world, tok, base, _DATASETS[data_key], cfg)


def prepare(job: Job) -> dict:
    """Build a base model's datasets (one per collection setting) and its reference samples."""
    for c in job.params["collects"]:
        m = materials(dataclasses.replace(job.cfg, collect=CollectConfig(**c)))
    for seed in job.params["seeds"]:
        m.reference_samples(seed)
    return {}


def train(job: Job) -> dict:
    """Align (cached); evaluate on every validation prompt (what settings are chosen on) and on the
    test prompts (what is reported), each against the reference's samples; in an exact world,
    the exact measures on the test prompts too (`exact_measures`)."""
    m, cfg = materials(job.cfg), job.cfg
    objective, data = VARIANTS[job.variant][0], m.data
    if job.variant == "rpo-global":  # a data variant of its own key, so its policies are cached apart
        data = Artifact(global_baseline(data.value), stage_key(data.key, "global-baseline"), data.path)
    oracle = None
    if cfg.align.estimator == "exact" and objective == "rpo":  # log Z(x) on the training prompts
        oracle = stages.oracle(m.ctx, m.world, m.tok, m.base, sorted({r["prompt"] for r in data.value.records}),
                               m.reward)
    try:
        policy, history = stages.policy(m.ctx, objective, job.seed, m.base, data, cfg.align, m.tok, m.world,
                                        oracle=oracle, fresh=stages.fresh_sampling(m.world, m.tok, cfg.collect))
    except FloatingPointError as e:  # a non-finite loss: alignment refuses to train on
        return {"seed": job.seed, "diverged": True, "error": str(e)}
    n_new = cfg.collect.max_new_tokens
    ref_s = m.reference_samples(job.seed)
    s = stages.evaluate(m.ctx, objective, policy, m.base.value, job.seed, m.world, m.tok, cfg.eval, n_new)
    got, ref = summarize(s, m.world, m.reward, ref_s), summarize(ref_s, m.world, m.reward)
    val = summarize(stages.evaluate(m.ctx, f"{objective}-val", policy, m.base.value, job.seed, m.world, m.tok,
                                    cfg.eval, n_new, prompts=m.world.val_prompts), m.world, m.reward)
    out = {"seed": job.seed, "diverged": False, **{k: got[k] for k in METRICS if k in got},
           **{f"ref_{k}": ref[k] for k in METRICS if k in ref and k not in ("kl", "win_rate")},
           **{f"val_{k}": val[k] for k in VAL_METRICS},
           "final_loss": history["train"][-1]["loss"], "train_seconds": history.get("seconds", 0.0)}
    if m.world.responses() is not None:  # at the τ this policy trained with (KTO, SFT: the matched τ)
        scale = reward_scale(data.value.rewards, cfg.align.rewards_zscore)
        tau = scale.raw_tau(cfg.align.tau_for(objective))
        val = exact_measures(m, val_oracle(m), policy.value, tau)
        out |= {"reward_scale": scale.scale} | exact_measures(m, test_oracle(m), policy.value, tau) | \
            {f"val_{k}": val[k] for k in VAL_EXACT}
    if job.params.get("values") and cfg.align.dro_value == "network":  # DRO: V(x)/τ on the training prompts
        out["values"] = dro_values(m, policy.path, cfg.align.tau_for("dro"))
    if job.params.get("inflation"):
        out |= inflation(m, data.value, policy.value, objective, cfg.align, out.get("values"))
    return out


def inflation(m: JobMaterials, data, policy, objective: str, cfg, values=None) -> dict:
    """How much total mass the objective's targets ask the observed responses of each prompt to
    gain, and how much the trained policy gave them: mean over samples of
    log (1/K) Σ_{j in I_x} e^{t_j} for the targets t (RPO: r/τ − log Ẑ(x); DRO: (r − V(x))/τ,
    `values` = V(x)/τ per training prompt) and for the policy's log-ratios on those responses."""
    eot = m.enc.eot_token
    ref = response_logprobs(m.base.value, data.prompt_tokens, data.response_tokens, eot, cfg.length_normalize,
                            autocast=m.ctx.autocast).double()
    pol = response_logprobs(policy, data.prompt_tokens, data.response_tokens, eot, cfg.length_normalize,
                            autocast=m.ctx.autocast).double()
    tau = cfg.tau_for(objective)
    fixed = align_prepare(objective if objective == "rpo" else "dro", data, ref.float(), cfg, tau)
    z = fixed["rewards"].double()
    if objective == "rpo":
        targets = z / tau - fixed["log_z"].double()
    else:
        targets = z / tau - torch.tensor(values, dtype=torch.float64)[data.prompt_ids]

    def mass(t):
        return float(losses.log_partition(t, data.prompt_ids, 1.0, "mean").mean())
    return {"target_inflation": mass(targets), "fit_inflation": mass(pol - ref)}


VAL_METRICS = ("reward", "gold", "gated_gold", "kl", "fluency")
VAL_EXACT = ("exact_reward", "exact_gold", "exact_kl", "regret")  # exact measures on validation: fronts, selection
_ORACLES = {}  # per process: (base key, reward, split) → the exact world's oracle on those prompts


def test_oracle(m: JobMaterials):
    """The oracle (π_ref's and the rewards' tables) on the evaluated test prompts, once per base model."""
    return oracle_on(m, "test", m.world.test_prompts[:m.cfg.eval.eval_prompts or None])


def val_oracle(m: JobMaterials):
    """The oracle on as many validation prompts as test prompts are evaluated."""
    return oracle_on(m, "val", m.world.val_prompts[:m.cfg.eval.eval_prompts or None])


def oracle_on(m: JobMaterials, name: str, prompts: list):
    """The oracle on `prompts`, built once per process for each base model, reward and `name`."""
    key = (m.base.key, m.reward, name)
    if key not in _ORACLES:
        _ORACLES[key] = stages.oracle(m.ctx, m.world, m.tok, m.base, prompts, m.reward)
    return _ORACLES[key]


def exact_measures(m: JobMaterials, oracle, policy, tau: float | None) -> dict:
    """The exact measures of one policy on the oracle's prompts (`exact.compare`): at the τ whose
    optimum has the policy's KL and at `tau`, the τ it trained with (raw reward units; None: the
    matched τ)."""
    return exact.compare(oracle, oracle.table(policy, m.ctx.autocast), tau)


def global_baseline(data):
    """The dataset with every sample in one prompt group, for RPO's partition only: log Ẑ becomes
    logsumexp over ALL rewards/τ − log N, one baseline shared by every prompt."""
    return dataclasses.replace(data, prompt_ids=torch.zeros_like(data.prompt_ids))


def dro_values(m: JobMaterials, policy_path: str, tau: float) -> list:
    """V(x)/τ of the DRO policy's value network (saved next to it) on the training prompts."""
    vpath = policy_path.replace(".pt", ".value.pt")
    value = ValueModel(m.base.value.config)
    checkpoint.load_state_dict(value, checkpoint.load(vpath)["model"], vpath)
    value = value.to(m.ctx.device).eval()
    prompts = m.world.train_prompts[:m.cfg.collect.n_prompts or None]
    tokens, last = collate_prompts([m.enc.encode_ordinary(p) for p in prompts], m.enc.eot_token)
    with torch.no_grad(), m.ctx.autocast():
        v = value(tokens.to(m.ctx.device), last.to(m.ctx.device)).float()
    return (v / tau).cpu().tolist()


# =============================================================================================
# Running one experiment and saving it


def run_experiment(ctx: Ctx, exp: Experiment, out: str) -> dict:
    """Run `exp`, write OUT/NAME.json (settings, machine, date, raw values, analysis) and
    OUT/NAME.png, print its tables; with --plan, count its jobs only."""
    name, grid = exp.name, exp.grid["quick" if ctx.quick else "full"]
    if ctx.plan is not None:
        try:
            exp.run(ctx, grid)
        except Planned:
            p = ctx.plan[-1]
            print(f"{name:<14} {p['jobs']:>4} jobs {p['tasks']} over {p['base_models']} base model(s)")
            return p
    print(f"== {name} ({'quick' if ctx.quick else 'full'}, seeds {ctx.seeds}, workers {ctx.workers})", flush=True)
    t0 = time.perf_counter()
    ctx.ran = []
    result = exp.run(ctx, grid)
    opts = f"{' --quick' if ctx.quick else ''} --seeds {','.join(map(str, ctx.seeds))}" \
           f"{' --fixed-data' if ctx.fixed_data else ''} --workers {ctx.workers}"
    d = {"experiment": name, "quick": ctx.quick, "seeds": ctx.seeds, "fixed_data": ctx.fixed_data,
         "workers": ctx.workers, "device": describe_device(ctx.device), "machine": machine(),
         "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "elapsed_s": time.perf_counter() - t0, "command": ctx.command,
         "rerun": f"python -m experiments {name}{opts}",
         "config": ran_configs(ctx.ran), **result}
    d = exp.analysed(strict(d))  # the analysis sees what writeup will read back: strict JSON
    write_json(os.path.join(out, f"{name}.json"), d)
    exp.plot(d, os.path.join(out, f"{name}.png"))
    print(exp.markdown(d), flush=True)
    print(f"== {name}: {d['jobs']} jobs in {d['elapsed_s']:.1f}s → {out}/{name}.json, {name}.png\n", flush=True)
    return d


CONFIG_SECTIONS = ("world", "tokenizer", "model", "pretrain", "collect", "align", "eval")


def ran_configs(jobs: list) -> dict:
    """The configuration the jobs actually ran, per world: {world: {"config": every field all its
    jobs share, by section; "varied": {"section.field": the values its jobs used}; "jobs": n}}.
    (The seeds are the JSON's own `seeds`; a job's setting is in its row.)"""
    by_world = {}
    for job in jobs:
        flat = {f"{s}.{k}": v for s in CONFIG_SECTIONS for k, v in to_dict(getattr(job.cfg, s)).items()
                if (s, k) != ("world", "seed")}
        by_world.setdefault(job.cfg.world.name, []).append(flat)
    out = {}
    for world, flats in by_world.items():
        config, varied = {}, {}
        for key in flats[0]:
            values = list({json.dumps(f[key], sort_keys=True): f[key] for f in flats}.values())
            if len(values) == 1:
                section, name = key.split(".", 1)
                config.setdefault(section, {})[name] = values[0]
            else:
                varied[key] = sorted(values, key=lambda v: (v is None, json.dumps(v, sort_keys=True)))
        out[world] = {"config": config, "varied": varied, "jobs": len(flats)}
    return out


def describe_device(name: str) -> str:
    d = runtime.pick_device(name)
    if d.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(d)})"
    return str(d)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
