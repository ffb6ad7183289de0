"""The stages of `python train.py`, one function each: inputs in, an `Artifact` out.

    world → tokenizer → base model (π_ref) → dataset → aligned policies → evaluation

Every stage writes one plain artifact (a `.tiktoken` file, a checkpoint, a JSONL file, a JSON
of samples) named `<stage>-<key>`, where the key hashes the stage's own settings and the keys
of its inputs. Changing a pretraining option therefore rebuilds the base model and everything
after it, while `--objectives rpo` alone reuses all of it. A stage gets everything it needs as
arguments and hands back `Artifact(value, key, path)`: no stage reads what another left behind.

The run context (`Context`) holds only what every stage shares and no stage produces: device,
precision, the process group under torchrun, the output folder, the log and the timings.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm import tqdm

from . import checkpoint, exact, files, runtime
from .align import OBJECTIVES, Fresh, align
from .collect import collect
from .config import AlignConfig, stage_key, to_dict
from .data import DatasetError, read_jsonl, write_jsonl
from .evaluate import MIN_FLUENCY, sample_and_score, summarize
from .files import write_json
from .model import GPT, GPTConfig
from .pretrain import pretrain
from .runtime import UserError
from .tokenizer import load_encoding, save_ranks, train_bpe
from .worlds import make_world


@dataclass(frozen=True)
class Artifact:
    """What a stage hands on: the value itself, its cache key, and the file it lives in."""
    value: object
    key: str
    path: str


@dataclass
class Context:
    device: torch.device
    dtype: torch.dtype
    dist: runtime.Dist
    out: str
    log: Callable = print
    compile: bool = False
    resume: bool = False
    timings: dict = field(default_factory=dict)

    def path(self, sub: str, name: str) -> str:
        return os.path.join(self.out, sub, name)

    def autocast(self):
        return runtime.autocast(self.device, self.dtype)

    def wrap(self, module):
        """What runs a training forward pass: compiled and/or DDP-wrapped, same parameters."""
        if self.compile:
            module = torch.compile(module)
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return module

    @contextlib.contextmanager
    def timed(self, name: str):
        t0 = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


def context(run, log=tqdm.write) -> Context:
    """Device, dtype, processes and a writable output folder, from a `RunConfig`."""
    dist = runtime.setup_distributed(run.device)
    device = runtime.pick_device(run.device)
    if device.type == "cuda" and dist.world_size > 1:
        device = torch.device("cuda", dist.local_rank)
    if device.type == "cpu" and run.threads:
        torch.set_num_threads(run.threads)
    if dist.is_main:
        try:  # fail now, not after minutes of training
            for sub in ("data", "checkpoints", "eval", "plots"):
                os.makedirs(os.path.join(run.out, sub), exist_ok=True)
            probe = os.path.join(run.out, f".write_test.{os.getpid()}")  # per process: no races
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as e:
            raise UserError(f"--out {run.out} is not a writable folder ({e.strerror}); "
                            f"choose another with --out") from None
    dist.barrier()
    quiet = lambda *a, **k: None  # noqa: E731  (rank 0 speaks for all)
    return Context(device, runtime.pick_dtype(device, run.dtype), dist, run.out,
                   log if dist.is_main else quiet, run.compile, run.resume)


def cached(ctx: Context, paths: list[str], build, load, everyone_builds: bool = False, alone: bool = False,
           **made_by):
    """The one caching helper: (value, built?) — loaded from `paths[0]` when every file in `paths`
    exists and matches the record of what was written (`files.check`); else built by `build()`,
    which writes them, and each file is then sealed with its digest and `made_by` (the stage and
    its key). Each file that fails its check is named in a one-line notice, and the stage is built
    again.

    Who builds: rank 0 alone, the others waiting to load; every rank with `everyone_builds`
    (training under torchrun, each rank taking its share, rank 0 writing); this process alone,
    without waiting for the others, with `alone` (a stage only rank 0 runs, e.g. evaluation)."""
    if all(os.path.exists(p) for p in paths):
        failed = [(p, why) for p in paths if (why := files.check(p))]
        if not failed:
            return load(paths[0]), False
        for p, why in failed:
            ctx.log(f"cache: {p} {why}; making it again")
    value = build() if everyone_builds or alone or ctx.dist.is_main else None
    if alone or ctx.dist.is_main:
        for p in paths:
            files.seal(p, **made_by)
    if not alone:
        ctx.dist.barrier()
    return (value if value is not None else load(paths[0])), True


def say_saved_progress(ctx: Context, state_path: str, name: str) -> None:
    """A training stage run without --resume that finds saved progress says so, and how far it
    got, before it starts over."""
    if ctx.resume or not os.path.exists(state_path):
        return
    r = files.record(state_path) or {}
    at = f"step {r['step']} of {r['steps']}" if "step" in r and "steps" in r else "an unknown step"
    ctx.log(f"{name}: {state_path} holds saved progress (at {at}); starting over. "
            f"Rerun with --resume to continue from it instead.")


# --- what each stage's key is made of ------------------------------------------------------------
# Each key covers what its stage reads: the keys of its inputs and its own settings. A test walks
# every field of the Config: changing one a stage reads changes that stage's key, changing any
# other leaves it as it was.

def tokenizer_key(world_cfg, cfg) -> str:
    """The world (its corpus is built from every WorldConfig field) and the TokenizerConfig."""
    return stage_key(world_cfg, cfg)


def base_key(tok_key: str, mcfg: GPTConfig, cfg, seed: int, dtype: torch.dtype) -> str:
    """The tokenizer, the model's shape, the PretrainConfig, the seed and the precision trained in."""
    return stage_key(tok_key, mcfg, cfg, seed, str(dtype))


def dataset_key(base_key: str, cfg) -> str:
    """The base model and the CollectConfig."""
    return stage_key(base_key, cfg)


def evaluation_key(model_key: str, cfg, seed: int, prompts: list[str], max_new_tokens: int) -> str:
    """The model, the EvalConfig, the seed, the prompts and the longest response sampled."""
    return stage_key(model_key, cfg, seed, prompts, max_new_tokens)


# --- tokenizer and model shape -------------------------------------------------------------------

def tokenizer(ctx: Context, world, cfg) -> Artifact:
    """A byte-level BPE trained on the world's corpus (cfg: TokenizerConfig) → tiktoken.Encoding."""
    key = tokenizer_key(world.cfg, cfg)
    path = ctx.path("data", f"tokenizer-{key}.tiktoken")

    def build():
        with ctx.timed("tokenizer"):
            save_ranks(train_bpe([p + r for p, r in world.corpus], cfg.vocab_size), path)

    enc, _ = cached(ctx, [path], build, load_encoding, stage="tokenizer", key=key)
    return Artifact(enc, key, path)


def model_config(world, enc, cfg: GPTConfig, max_new_tokens: int) -> GPTConfig:
    """Vocabulary from the tokenizer; context long enough for any document or prompt + response;
    the world's response grammar (an exact world restricts decoding to its response alphabet)."""
    longest_doc = max(len(enc.encode_ordinary(p + r)) for p, r in world.corpus) + 1
    prompts = world.train_prompts + world.val_prompts + world.test_prompts
    longest_prompt = max(len(enc.encode_ordinary(p)) for p in prompts)
    block = max(longest_doc, longest_prompt + max_new_tokens)
    grammar = world.response_grammar(enc)
    if grammar and max_new_tokens < len(grammar):
        raise UserError(f"--max_new_tokens {max_new_tokens} is too short for the {world.name} world, whose "
                        f"responses take up to {len(grammar)} tokens (end-of-text included)")
    return dataclasses.replace(cfg, vocab_size=enc.n_vocab, block_size=block,
                               response_grammar=grammar)


def checkpoint_dict(model: GPT, kind: str, tok: Artifact, world, **extra) -> dict:
    """What a model checkpoint carries besides its weights: enough for `python -m rpo_mini.sample`."""
    return {"kind": kind, "model_config": dataclasses.asdict(model.config), "model": model.state_dict(),
            "tokenizer": os.path.abspath(tok.path), "tokenizer_sha256": files.digest(tok.path),
            "world": to_dict(world.cfg), **extra}


def load_model(config: GPTConfig, path: str) -> GPT:
    model = GPT(config)
    checkpoint.load_state_dict(model, checkpoint.load(path)["model"], path)
    return model


# --- base model ----------------------------------------------------------------------------------

def base_model(ctx: Context, world, tok: Artifact, mcfg: GPTConfig, cfg, seed: int) -> Artifact:
    """Next-token pretraining on the corpus (cfg: PretrainConfig): the base model, π_ref."""
    key = base_key(tok.key, mcfg, cfg, seed, ctx.dtype)
    path = ctx.path("checkpoints", f"base-{key}.pt")
    enc = tok.value

    def build():
        say_saved_progress(ctx, path + ".state", "base model")
        with ctx.timed("pretrain"):
            runtime.seed_everything(seed)
            model = GPT(mcfg).to(ctx.device)
            docs = [enc.encode_ordinary(p) + enc.encode_ordinary(r) + [enc.eot_token] for p, r in world.corpus]
            history = pretrain(model, docs, enc.eot_token, cfg, seed, ctx.device, ctx.autocast,
                               state_path=path + ".state", resume=ctx.resume, log=ctx.log,
                               train_model=ctx.wrap(model), dist=ctx.dist)
            if ctx.dist.is_main:
                checkpoint.save(checkpoint_dict(model, "base", tok, world, history=history), path)
                files.remove(path + ".state")
        final = f", final loss {history[-1]['loss']:.3f}" if history else ""
        ctx.log(f"base model: pretrained {cfg.pretrain_steps} steps in {ctx.timings['pretrain']:.1f}s"
                f"{final} → {path}")
        return model

    model, built = cached(ctx, [path], build, lambda p: load_model(mcfg, p), everyone_builds=True,
                          stage="base model", key=key)
    if not built:
        ctx.log(f"base model: cached {path}")
    return Artifact(model.to(ctx.device).eval(), key, path)


# --- dataset -------------------------------------------------------------------------------------

def dataset(ctx: Context, world, tok: Artifact, base: Artifact, cfg, seed: int) -> Artifact:
    """K responses per training prompt from π_ref, scored (cfg: CollectConfig) — or the user's
    own JSONL file (`--dataset`), keyed by its content and validated on load."""
    block_size = base.value.config.block_size
    if cfg.dataset:
        path = cfg.dataset
        if not os.path.exists(path):
            raise DatasetError(f"--dataset {path} does not exist")
        with open(path, "rb") as f:
            key = stage_key(base.key, hashlib.sha256(f.read()).hexdigest())
    else:
        key = dataset_key(base.key, cfg)
        path = ctx.path("data", f"dataset-{key}.jsonl")

        def build():
            with ctx.timed("collect"):
                records = collect(base.value, tok.value, world, cfg, seed, ctx.autocast)
                write_jsonl(records, path)
            ctx.log(f"dataset: {len(records)} samples ({cfg.k} per prompt, "
                    f"{'off-policy' if cfg.off_policy else 'from π_ref'}) in {ctx.timings['collect']:.1f}s → {path}")

        cached(ctx, [path], build, lambda p: None, stage="dataset", key=key)
    data = read_jsonl(path, block_size, base.value.config.response_grammar)
    lone = data.lone_prompts()
    if lone:
        ctx.log(f"warning: {lone} prompt(s) have a single response; RPO's target for them is 0 "
                f"(a lone response carries no reward signal)")
    return Artifact(data, key, path)


# --- aligned policies ----------------------------------------------------------------------------

def policy_key(data: Artifact, objective: str, seed: int, cfg: AlignConfig, fresh: Fresh | None = None) -> str:
    """Keyed by what the objective's training reads: the settings every objective trains with, its
    own, and its *effective* learning rate and τ, however they were set (flag, preset, sweep); on
    fresh samples also the reward they are scored with and the longest response sampled."""
    o = OBJECTIVES[objective]
    read = {k: getattr(cfg, k) for k in o.reads(cfg)}
    sampled = [fresh.reward, fresh.max_new_tokens] if o.trains_fresh(cfg) and fresh else None
    return stage_key(data.key, objective, seed, read, cfg.lr_for(objective), cfg.tau_for(objective),
                     *([sampled] if sampled else []))


def fresh_sampling(world, tok: Artifact, collect_cfg) -> Fresh:
    """Fresh samples are scored like the dataset's: the same reward, the same longest response."""
    return Fresh(world, tok.value, collect_cfg.reward or world.default_reward, collect_cfg.max_new_tokens)


def validation_probe(ctx: Context, world, tok: Artifact, ref: GPT, prompts: list[str], max_new_tokens: int,
                     reward: str, seed: int):
    """probe(policy) -> reward, gold reward and KL with their 95% intervals, and fluency, on a few
    validation prompts, during training."""
    def probe(policy) -> dict:
        s = sample_and_score(policy, ref, tok.value, world, prompts, 2, max_new_tokens, seed + 17, ctx.autocast)
        m = summarize(s, world, reward)
        return {k: m[k] for k in ("reward", "reward_ci", "gold", "gold_ci", "kl", "kl_ci", "fluency")}
    return probe if ctx.dist.is_main else None


def policy(ctx: Context, objective: str, seed: int, base: Artifact, data: Artifact, cfg: AlignConfig,
           tok: Artifact, world, probe=None, oracle=None, fresh: Fresh | None = None) -> tuple[Artifact, dict]:
    """The aligned policy for one objective and seed, trained or loaded; and its training history.

    A variant of the data (e.g. one prompt group for all samples) is a different `data`
    artifact with a key of its own, so its policies are cached apart. `oracle` (`stages.oracle` on
    the dataset's prompts) gives RPO's "exact" estimator the enumerated log Z(x). `fresh`
    (`fresh_sampling`): how the objectives that train on fresh samples sample and score them."""
    key = policy_key(data, objective, seed, cfg, fresh)
    path = ctx.path("checkpoints", f"{objective}-s{seed}-{key}.pt")
    hist_path, value_path = path.replace(".pt", ".json"), path.replace(".pt", ".value.pt")
    paths = [path, hist_path] + ([value_path] if OBJECTIVES[objective].value_network else [])

    def build():
        say_saved_progress(ctx, path + ".state", f"{objective} (seed {seed})")
        runtime.seed_everything(seed)
        t0 = time.perf_counter()
        model, value, history = align(
            objective, base.value, data.value, cfg, cfg.lr_for(objective), cfg.tau_for(objective), seed,
            tok.value.eot_token, ctx.autocast, state_path=path + ".state", resume=ctx.resume, probe=probe,
            log=ctx.log, wrap=ctx.wrap, dist=ctx.dist, oracle=oracle, fresh=fresh)
        history["seconds"] = time.perf_counter() - t0
        if ctx.dist.is_main:
            if value is not None:
                checkpoint.save({"kind": "value", "model": value.state_dict()}, value_path)
            checkpoint.save(checkpoint_dict(model, "policy", tok, world, objective=objective, seed=seed), path)
            write_json(hist_path, history)
            files.remove(path + ".state")
        last = history["train"][-1]
        ctx.log(f"{objective} (seed {seed}): {cfg.steps} steps in {history['seconds']:.1f}s, "
                f"loss {last['loss']:.4f}, grad norm {last['grad_norm']:.3f} → {path}")
        return model, history

    def load(p):
        with open(hist_path) as f:
            return load_model(base.value.config, p), json.load(f)

    (model, history), built = cached(ctx, paths, build, load, everyone_builds=True, stage=objective, key=key)
    if not built:
        ctx.log(f"{objective} (seed {seed}): cached {path}")
    return Artifact(model.to(ctx.device).eval(), key, path), history


# --- the exact world's ground truth -------------------------------------------------------------

def oracle(ctx: Context, world, tok: Artifact, base: Artifact, prompts: list[str], reward: str) -> exact.Oracle | None:
    """In an exact world, π_ref's log-prob and the rewards of every response to every prompt in
    `prompts` (`exact.Oracle`; its measures take the τ they are made at); None elsewhere."""
    if world.responses() is None:
        return None
    with ctx.timed("exact"):
        return exact.oracle(base.value, tok.value, world, prompts, reward, ctx.autocast)


# --- evaluation ----------------------------------------------------------------------------------

def evaluate(ctx: Context, name: str, model: Artifact, ref: GPT, seed: int, world, tok: Artifact, cfg,
             max_new_tokens: int, prompts: list[str] | None = None) -> dict:
    """Samples of `model` on the test prompts (or `prompts`), scored, with their log-ratio to
    `ref` (cfg: EvalConfig); cached as JSON under the model's key."""
    prompts = prompts or world.test_prompts[:cfg.eval_prompts or None]
    key = evaluation_key(model.key, cfg, seed, prompts, max_new_tokens)
    path = ctx.path("eval", f"{name}-s{seed}-{key}.json")

    def build():
        with ctx.timed("evaluate"):
            s = sample_and_score(model.value, ref, tok.value, world, prompts, cfg.eval_samples, max_new_tokens,
                                 1000 + seed, ctx.autocast)
        write_json(path, s)
        return s

    def load(p):
        with open(p) as f:
            return json.load(f)

    return cached(ctx, [path], build, load, alone=True, stage=f"evaluation {name}", key=key)[0]


# --- the sweep -----------------------------------------------------------------------------------

# Every objective gets the same budget of 9 settings: 3 learning rates × 3 values of its own
# knob (τ for RPO and DRO, β for KTO, the response selection for SFT; `Objective.knob`).
SWEEP_LRS = (3e-5, 1e-4, 3e-4)


def sweep(ctx: Context, world, tok: Artifact, base: Artifact, data: Artifact, cfg, objectives: list[str],
          seed: int = 0) -> dict:
    """Tune each objective on the *validation* prompts (cfg: the whole Config); writes sweep.json.

    Chosen per objective: the highest validation gold reward among the settings whose samples
    stay at least MIN_FLUENCY fluent (held-out reward, so gaming the training reward does not
    pay; fluency, so a collapsed policy cannot win)."""
    val = world.val_prompts[:cfg.eval.eval_prompts or None]
    reward = cfg.collect.reward or world.default_reward
    probe = validation_probe(ctx, world, tok, base.value, world.val_prompts[:32], cfg.collect.max_new_tokens,
                             reward, seed)
    points, chosen = {}, {}
    for obj in objectives:
        knob = OBJECTIVES[obj].knob
        for lr in SWEEP_LRS:
            for v in OBJECTIVES[obj].knob_values:
                acfg = dataclasses.replace(cfg.align, lr=lr, tau=None, **{knob: v})
                pol, _ = policy(ctx, obj, seed, base, data, acfg, tok, world, probe)
                s = evaluate(ctx, f"{obj}-val", pol, base.value, seed, world, tok, cfg.eval,
                             cfg.collect.max_new_tokens, prompts=val)
                m = summarize(s, world, reward)
                points.setdefault(obj, []).append({"lr": lr, knob: v, **{k: m[k] for k in
                                                   ("reward", "gold", "kl", "fluency", "distinct_2")}})
        ok = [p for p in points[obj] if p["fluency"] >= MIN_FLUENCY] or \
            [max(points[obj], key=lambda p: p["fluency"])]
        chosen[obj] = max(ok, key=lambda p: p["gold"])
        ctx.log(f"sweep {obj}: chose {chosen[obj]}")
    result = {"chosen": chosen, "points": points, "rule": f"max validation gold reward s.t. fluency >= {MIN_FLUENCY}",
              "grid": {"lr": SWEEP_LRS, **{o: {OBJECTIVES[o].knob: OBJECTIVES[o].knob_values} for o in points}}}
    if ctx.dist.is_main:
        write_json(os.path.join(ctx.out, "sweep.json"), result)
    return result


def with_sweep(cfg: AlignConfig, chosen: dict) -> AlignConfig:
    """The alignment settings with each objective's own learning rate and knob set to the swept ones."""
    changes = {}
    for obj, point in chosen.items():
        changes[f"{obj}_lr"] = point["lr"]
        changes[OBJECTIVES[obj].knob] = point[OBJECTIVES[obj].knob]
    return dataclasses.replace(cfg, lr=None, tau=None, **changes)


# --- the upstream stages in one call -------------------------------------------------------------

@dataclass(frozen=True)
class Materials:
    """What every alignment starts from: the run context, the world, and three artifacts."""
    ctx: Context
    world: object
    tok: Artifact    # .value: the tiktoken.Encoding
    base: Artifact   # .value: the base model, π_ref
    data: Artifact   # .value: the single-trajectory Dataset


def materials(cfg, log=lambda *a, **k: None) -> Materials:
    """Steps 1–4 of train.py (world, tokenizer, base model, dataset) for a whole Config, in one
    call: for notebooks, tests and experiments, which start where train.py's alignment starts."""
    ctx = context(cfg.run, log)
    world = make_world(cfg.world)
    tok = tokenizer(ctx, world, cfg.tokenizer)
    base = base_model(ctx, world, tok, model_config(world, tok.value, cfg.model, cfg.collect.max_new_tokens),
                      cfg.pretrain, cfg.run.seed)
    return Materials(ctx, world, tok, base, dataset(ctx, world, tok, base, cfg.collect, cfg.run.seed))
