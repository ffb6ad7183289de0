"""The stages of `python train.py`, each cached under a key of the config that made it.

    world → tokenizer → base model (π_ref) → dataset → aligned policies → evaluation

Each stage reads and writes plain artifacts (a `.tiktoken` file, a checkpoint, a JSONL file,
a JSON of metrics) named `<stage>-<key>`, where the key hashes the stage's own settings and
the key of what it was built from. Changing a pretraining option therefore rebuilds the base
model and everything after it, while `--objectives rpo` alone reuses all of it.
"""

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import time

import torch
from tqdm import tqdm

from . import checkpoint, report, runtime, training
from .align import align
from .collect import collect
from .config import Config, UserError, objectives, seeds, stage_key, to_dict
from .data import DatasetError, read_jsonl, write_jsonl
from .evaluate import sample_and_score, summarize
from .model import GPT, GPTConfig
from .pretrain import pretrain
from .report import write_json
from .tokenizer import load_encoding, save_ranks, train_bpe
from .worlds import make_world


class Stages:
    """Holds the run's device, output folder and the artifacts built so far."""

    def __init__(self, cfg: Config, log=tqdm.write):
        self.cfg = cfg
        self.dist = runtime.setup_distributed(cfg.run.device)
        self.log = log if self.dist.is_main else (lambda *a, **k: None)  # rank 0 speaks for all
        self.device = runtime.pick_device(cfg.run.device)
        if self.device.type == "cuda" and self.dist.world_size > 1:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.dtype = runtime.pick_dtype(self.device, cfg.run.dtype)
        if self.device.type == "cpu" and cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.out = cfg.run.out
        if self.dist.is_main:
            try:  # fail now, not after minutes of training
                for sub in ("data", "checkpoints", "eval", "plots"):
                    os.makedirs(os.path.join(self.out, sub), exist_ok=True)
                probe = os.path.join(self.out, f".write_test.{os.getpid()}")  # per process: no races
                with open(probe, "w") as f:
                    f.write("ok")
                os.remove(probe)
            except OSError as e:
                raise UserError(f"--out {self.out} is not a writable folder ({e.strerror}); "
                                f"choose another with --out") from None
        self.dist.barrier()
        self.world = make_world(cfg.world)
        self.timings = {}

    def path(self, sub: str, name: str) -> str:
        return os.path.join(self.out, sub, name)

    def autocast(self):
        return runtime.autocast(self.device, self.dtype)

    def wrap(self, module):
        """What runs a training forward pass: compiled and/or DDP-wrapped, same parameters."""
        if self.cfg.run.compile:
            module = torch.compile(module)
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return module

    def main_only(self, build, path: str) -> None:
        """Rank 0 builds the artifact at `path` if it is missing; everyone else waits for it."""
        if self.dist.is_main and not os.path.exists(path):
            build()
        self.dist.barrier()

    @contextlib.contextmanager
    def timed(self, name):
        t0 = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    # --- tokenizer ---------------------------------------------------------------------------
    def tokenizer(self):
        self.tok_key = stage_key(self.cfg.world, self.cfg.tokenizer)
        path = self.path("data", f"tokenizer-{self.tok_key}.tiktoken")
        def build():
            with self.timed("tokenizer"):
                texts = [p + r for p, r in self.world.corpus]
                save_ranks(train_bpe(texts, self.cfg.tokenizer.vocab_size), path)
        self.main_only(build, path)
        self.tok_path = path
        self.enc = load_encoding(path)
        return self.enc

    def model_config(self) -> GPTConfig:
        """Vocabulary from the tokenizer; context long enough for any document or prompt + response."""
        enc, cfg = self.enc, self.cfg
        longest_doc = max(len(enc.encode_ordinary(p + r)) for p, r in self.world.corpus) + 1
        prompts = self.world.train_prompts + self.world.val_prompts + self.world.test_prompts
        longest_prompt = max(len(enc.encode_ordinary(p)) for p in prompts)
        block = max(longest_doc, longest_prompt + cfg.collect.max_new_tokens)
        return dataclasses.replace(cfg.model, vocab_size=enc.n_vocab, block_size=block)

    # --- base model --------------------------------------------------------------------------
    def base(self) -> GPT:
        cfg = self.cfg
        mcfg = self.model_config()
        self.base_key = stage_key(self.tok_key, mcfg, cfg.pretrain, cfg.run.seed)
        path = self.path("checkpoints", f"base-{self.base_key}.pt")
        model = GPT(mcfg)
        if os.path.exists(path):
            self.log(f"base model: cached {path}")
            checkpoint.load_state_dict(model, checkpoint.load(path)["model"], path)
        else:
            with self.timed("pretrain"):
                runtime.seed_everything(cfg.run.seed)
                model = GPT(mcfg).to(self.device)
                eot = self.enc.eot_token
                docs = [self.enc.encode_ordinary(p) + self.enc.encode_ordinary(r) + [eot]
                        for p, r in self.world.corpus]
                history = pretrain(model, docs, eot, cfg.pretrain, cfg.run.seed, self.device, self.autocast,
                                   state_path=path + ".state", resume=cfg.run.resume, log=self.log,
                                   train_model=self.wrap(model), dist=self.dist)
                if self.dist.is_main:
                    checkpoint.save(self.checkpoint_dict(model, "base", history=history), path)
                    training.remove(path + ".state")
                self.dist.barrier()
            final = f", final loss {history[-1]['loss']:.3f}" if history else ""
            self.log(f"base model: pretrained {cfg.pretrain.pretrain_steps} steps in "
                     f"{self.timings['pretrain']:.1f}s{final} → {path}")
        self.base_path = path
        return model.to(self.device).eval()

    def checkpoint_dict(self, model, kind: str, **extra) -> dict:
        return {"kind": kind, "model_config": dataclasses.asdict(model.config), "model": model.state_dict(),
                "tokenizer": os.path.abspath(self.tok_path), "world": to_dict(self.cfg.world), **extra}

    # --- dataset -----------------------------------------------------------------------------
    def dataset(self, base: GPT):
        if not hasattr(self, "base_key"):
            raise RuntimeError("call Stages.base() first: the dataset's cache key includes the base model's")
        cfg = self.cfg
        if cfg.collect.dataset:  # the user's own data: keyed by its content, validated on load
            path = cfg.collect.dataset
            if not os.path.exists(path):
                raise DatasetError(f"--dataset {path} does not exist")
            with open(path, "rb") as f:
                self.data_key = stage_key(self.base_key, hashlib.sha256(f.read()).hexdigest())
        else:
            self.data_key = stage_key(self.base_key, cfg.collect)
            path = self.path("data", f"dataset-{self.data_key}.jsonl")

            def build():
                with self.timed("collect"):
                    records = collect(base, self.enc, self.world, cfg.collect, cfg.run.seed, self.autocast)
                    write_jsonl(records, path)
                self.log(f"dataset: {len(records)} samples ({cfg.collect.k} per prompt, "
                         f"{'off-policy' if cfg.collect.off_policy else 'from π_ref'}) in "
                         f"{self.timings['collect']:.1f}s → {path}")
            self.main_only(build, path)
        self.data_path = path
        data = read_jsonl(path, base.config.block_size)
        lone = data.lone_prompts()
        if lone:
            self.log(f"warning: {lone} prompt(s) have a single response; RPO's target for them is 0 "
                     f"(a lone response carries no reward signal)")
        return data

    # --- alignment ---------------------------------------------------------------------------
    def with_align(self, **changes) -> "Stages":
        """The same stages with some alignment settings changed (for the sweep)."""
        sub = copy.copy(self)
        sub.cfg = dataclasses.replace(self.cfg, align=dataclasses.replace(self.cfg.align, **changes))
        return sub

    def policy_key(self, objective: str, seed: int) -> str:
        """Keyed by the *effective* learning rate and τ, however they were set (flag, preset, sweep)."""
        a = {k: v for k, v in to_dict(self.cfg.align).items() if not (k.endswith("lr") or k.endswith("tau"))}
        tau = self.cfg.objective_tau(objective) if objective in ("rpo", "dro") else None
        return stage_key(self.data_key, objective, seed, a, self.cfg.objective_lr(objective), tau)

    def policy(self, objective: str, seed: int, base: GPT, data, probe_prompts=None):
        """The aligned policy for one objective and seed (trained, or loaded from the cache)."""
        cfg = self.cfg
        key = self.policy_key(objective, seed)
        path = self.path("checkpoints", f"{objective}-s{seed}-{key}.pt")
        hist_path = path.replace(".pt", ".json")
        policy = GPT(base.config)
        if os.path.exists(path) and os.path.exists(hist_path):
            checkpoint.load_state_dict(policy, checkpoint.load(path)["model"], path)
            with open(hist_path) as f:
                history = json.load(f)
            self.log(f"{objective} (seed {seed}): cached {path}")
            return policy.to(self.device).eval(), history, path
        probe_prompts = probe_prompts or self.world.val_prompts[:32]
        probe = (lambda pol: self.probe(pol, base, probe_prompts, seed)) if self.dist.is_main else None
        t0 = time.perf_counter()
        tau = cfg.objective_tau(objective) if objective in ("rpo", "dro") else None
        policy, value, history = align(
            objective, base, data, cfg.align, cfg.objective_lr(objective), tau, seed, self.enc.eot_token,
            self.autocast, state_path=path + ".state", resume=cfg.run.resume, probe=probe, log=self.log,
            wrap=self.wrap, dist=self.dist)
        history["seconds"] = time.perf_counter() - t0
        if self.dist.is_main:
            if value is not None:
                checkpoint.save({"kind": "value", "model": value.state_dict()}, path.replace(".pt", ".value.pt"))
            checkpoint.save(self.checkpoint_dict(policy, "policy", objective=objective, seed=seed), path)
            write_json(hist_path, history)
            training.remove(path + ".state")
        self.dist.barrier()
        last = history["train"][-1]
        self.log(f"{objective} (seed {seed}): {cfg.align.steps} steps in {history['seconds']:.1f}s, "
                 f"loss {last['loss']:.4f}, grad norm {last['grad_norm']:.3f} → {path}")
        return policy, history, path

    def probe(self, policy, ref, prompts, seed) -> dict:
        """A quick validation look during training: reward, gold reward and KL on a few prompts."""
        s = sample_and_score(policy, ref, self.enc, self.world, prompts, 2, self.cfg.collect.max_new_tokens,
                             seed + 17, self.autocast)
        m = summarize(s, self.world, self.reward_name)
        return {k: m[k] for k in ("reward", "gold", "kl", "fluency")}

    @property
    def reward_name(self) -> str:
        return self.cfg.collect.reward or self.world.default_reward

    # --- evaluation --------------------------------------------------------------------------
    def evaluate(self, name: str, model: GPT, ref: GPT, seed: int, key: str, prompts=None) -> dict:
        """Samples and scores on the test prompts (cached as JSON next to the policy's key)."""
        e = self.cfg.eval
        prompts = prompts or self.world.test_prompts[:e.eval_prompts or None]
        ekey = stage_key(key, e, seed, prompts)
        path = self.path("eval", f"{name}-s{seed}-{ekey}.json")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        with self.timed("evaluate"):
            s = sample_and_score(model, ref, self.enc, self.world, prompts, e.eval_samples,
                                 self.cfg.collect.max_new_tokens, 1000 + seed, self.autocast)
        write_json(path, s)
        return s


# The tuning grid: every objective gets the same budget of 9 settings (3 learning rates ×
# 3 values of its own knob: τ for RPO and DRO, β for KTO, the response selection for SFT).
SWEEP_LRS = (3e-5, 1e-4, 3e-4)
SWEEP_KNOBS = {"rpo": ("rpo_tau", (0.1, 0.3, 1.0)), "dro": ("dro_tau", (0.1, 0.3, 1.0)),
               "kto": ("beta", (0.03, 0.1, 0.3)), "sft": ("sft_mode", ("best", "above_mean", "all"))}
MIN_FLUENCY = 0.9  # a tuned policy must still speak the world's language


def sweep(st: Stages, base: GPT, data, seed: int = 0) -> dict:
    """Tune each objective on the *validation* prompts; return and write `sweep.json`.

    Chosen per objective: the highest validation gold reward among the settings whose
    samples stay at least MIN_FLUENCY fluent (held-out reward, so gaming the training reward
    does not pay; fluency, so a collapsed policy cannot win)."""
    cfg = st.cfg
    val = st.world.val_prompts[:cfg.eval.eval_prompts or None]
    points, chosen = {}, {}
    for obj in objectives(cfg):
        knob, values = SWEEP_KNOBS[obj]
        for lr in SWEEP_LRS:
            for v in values:
                sub = st.with_align(lr=lr, tau=None, **{knob: v})
                policy, history, _ = sub.policy(obj, seed, base, data)
                s = sub.evaluate(f"{obj}-val", policy, base, seed, sub.policy_key(obj, seed), prompts=val)
                m = summarize(s, st.world, st.reward_name)
                points.setdefault(obj, []).append({"lr": lr, knob: v, **{k: m[k] for k in
                                                   ("reward", "gold", "kl", "fluency", "distinct_2")}})
        ok = [p for p in points[obj] if p["fluency"] >= MIN_FLUENCY] or \
            [max(points[obj], key=lambda p: p["fluency"])]
        chosen[obj] = max(ok, key=lambda p: p["gold"])
        st.log(f"sweep {obj}: chose {chosen[obj]}")
    result = {"chosen": chosen, "points": points, "rule": f"max validation gold reward s.t. fluency >= {MIN_FLUENCY}",
              "grid": {"lr": SWEEP_LRS, **{o: list(SWEEP_KNOBS[o]) for o in points}}}
    if st.dist.is_main:
        write_json(os.path.join(st.out, "sweep.json"), result)
    return result


def apply_sweep(cfg: Config, chosen: dict) -> None:
    """Set each objective's own learning rate and knob to the swept values."""
    for obj, point in chosen.items():
        knob = SWEEP_KNOBS[obj][0]
        setattr(cfg.align, f"{obj}_lr", point["lr"])
        setattr(cfg.align, knob, point[knob])
    cfg.align.lr, cfg.align.tau = None, None


def run(cfg: Config, log=tqdm.write) -> dict:
    """Every stage, then the comparison; returns the metrics dict that is written to metrics.json."""
    t_start = time.perf_counter()
    st = Stages(cfg, log)
    log(f"device {st.device}, dtype {str(st.dtype).replace('torch.', '')}, world {st.world.name}, "
        f"objectives {cfg.run.objectives}, seeds {cfg.run.seeds}, out {cfg.run.out}")
    st.tokenizer()
    if cfg.collect.dataset:  # a user's dataset is checked before minutes of pretraining, not after
        read_jsonl(cfg.collect.dataset, st.model_config().block_size)
    base = st.base()
    data = st.dataset(base)
    if cfg.run.sweep:
        apply_sweep(cfg, sweep(st, base, data)["chosen"])
    runs, histories = {}, {}
    for seed in seeds(cfg):
        ref_s = st.evaluate("reference", base, base, seed, st.base_key) if st.dist.is_main else None
        if ref_s:
            runs.setdefault("reference", []).append(summarize(ref_s, st.world, st.reward_name, ref_s)
                                                    | {"seconds": 0.0, "samples": _examples(ref_s)})
        for obj in objectives(cfg):
            runtime.seed_everything(seed)
            policy, history, path = st.policy(obj, seed, base, data)
            histories.setdefault(obj, []).append(history)
            if st.dist.is_main:  # evaluation and the report are rank 0's job
                s = st.evaluate(obj, policy, base, seed, st.policy_key(obj, seed))
                runs.setdefault(obj, []).append(summarize(s, st.world, st.reward_name, ref_s)
                                                | {"seconds": history["seconds"], "checkpoint": path,
                                                   "samples": _examples(s)})
    if not st.dist.is_main:
        return {}
    metrics = report.aggregate(runs)
    metrics["config"] = {"run": to_dict(cfg.run), "world": to_dict(cfg.world), "tokenizer": to_dict(cfg.tokenizer),
                         "model": dataclasses.asdict(base.config), "pretrain": to_dict(cfg.pretrain),
                         "collect": to_dict(cfg.collect), "align": to_dict(cfg.align), "eval": to_dict(cfg.eval)}
    metrics["artifacts"] = {"tokenizer": st.tok_path, "base": st.base_path, "dataset": st.data_path}
    metrics["timings"] = st.timings | {"total": time.perf_counter() - t_start}
    metrics["device"] = str(st.device) + (f" × {st.dist.world_size} processes" if st.dist.world_size > 1 else "")
    report.write_all(st.out, metrics, histories, data, st)
    return metrics


def _examples(s: dict, n_prompts: int = 4) -> list:
    """The first sample of the first few test prompts: the same prompts for every policy."""
    return [[s["prompts"][i], s["texts"][i]] for i in range(0, min(len(s["texts"]), n_prompts * s["n"]), s["n"])]
