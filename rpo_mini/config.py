"""Configuration: one dataclass per stage, presets, and a command line built from the fields.

Every field becomes a `--flag` (its help is the field's `help` metadata). Each stage hashes its
own config (plus the keys of its inputs, `stage_key`) to name its artifact, so a stage reruns
exactly when something it depends on changed.
"""

import argparse
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

from .align import DEFAULT_OBJECTIVES, DRO_VALUES, KTO_VARIANTS, OBJECTIVES
from .losses import BINARIZE_THRESHOLDS, ESTIMATORS, SFT_MODES
from .model import GPTConfig
from .runtime import UserError
from .worlds import WORLD_CLASSES, WORLDS, WorldConfig


def _f(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TokenizerConfig:
    vocab_size: int = _f(768, "BPE vocabulary size, at most (bytes + merges + end-of-text); "
                          "training stops early once no pair repeats")


@dataclass
class PretrainConfig:
    pretrain_steps: int = _f(600, "optimizer steps of next-token pretraining (the base model = π_ref)")
    pretrain_batch_size: int = _f(64, "documents per pretraining step")
    pretrain_lr: float = _f(2e-3, "peak learning rate of pretraining")


@dataclass
class CollectConfig:
    k: int = _f(8, "responses sampled per training prompt (RPO estimates log Z from these)")
    n_prompts: int = _f(200, "training prompts used for the dataset (0 = all)")
    temperature: float = _f(1.0, "sampling temperature of collection (1 = π_ref itself)")
    top_k: int = _f(0, "top-k of collection sampling (0 = off)")
    max_new_tokens: int = _f(40, "longest response collected or generated")
    off_policy: bool = _f(False, "draw responses from the world's off-policy generator instead of π_ref")
    reward: str = _f("", "reward that trains (default: the world's default reward)")
    dataset: str = _f("", "train on this JSONL dataset instead of collecting one (see rpo_mini/data.py)")


@dataclass
class AlignConfig:
    steps: int = _f(150, "alignment steps per objective")
    batch_size: int = _f(32, "samples per alignment step")
    lr: float | None = _f(None, "learning rate for every objective (default: each objective's own, below)", type=float)
    # Per-objective defaults: what `python train.py --sweep` chose on the validation prompts
    # (the grid and every point: results/sweep_cpu.md).
    sft_lr: float = _f(3e-5, "SFT learning rate")
    kto_lr: float = _f(3e-4, "KTO learning rate")
    dro_lr: float = _f(1e-4, "DRO learning rate (policy and value network)")
    rpo_lr: float = _f(3e-5, "RPO learning rate")
    rloo_lr: float = _f(1e-4, "RLOO learning rate")
    grpo_lr: float = _f(1e-4, "GRPO learning rate")
    apo_lr: float = _f(1e-4, "A*-PO learning rate")
    tau: float | None = _f(None, "τ for every objective that has one (default: each one's own, below)", type=float)
    rpo_tau: float = _f(0.3, "RPO's KL strength τ")
    dro_tau: float = _f(0.3, "DRO's KL strength τ")
    rloo_tau: float = _f(0.3, "RLOO's KL strength τ (the reward it maximises is r − τ·log π/π_ref)")
    grpo_tau: float = _f(0.3, "GRPO's KL strength τ (the reward it maximises is r − τ·log π/π_ref)")
    apo_tau: float = _f(0.3, "A*-PO's β₂: the KL strength τ of its regression")
    apo_beta1: float = _f(0.3, "A*-PO's β₁: V̂*(x) = β₁·log mean exp(r/β₁) over π_ref's samples (β₁ = β₂: RPO's target)")
    grpo_std: bool = _f(True, "GRPO divides each group's advantages by the group's std (off: Dr. GRPO)")
    online: bool = _f(False, "RPO and DRO train on fresh samples of the current policy every step instead of π_ref's "
                             "dataset (online RPO: log Ẑ(x) from each step's group)")
    group_size: int = _f(4, "fresh samples per prompt each step (RLOO, GRPO, --online RPO and DRO; A*-PO samples "
                            "one): batch_size / group_size prompts per step")
    estimator: str = _f("mean", "RPO partition estimator", choices=ESTIMATORS)
    beta: float = _f(0.3, "KTO's β")
    kto_variant: str = _f("halos", "KTO reference point: halos (mismatched pairs, clamped) or paper (matched batch)",
                          choices=KTO_VARIANTS)
    kto_threshold: str = _f("global", "KTO desirable iff reward ≥ the global or the prompt's mean",
                            choices=BINARIZE_THRESHOLDS)
    sft_mode: str = _f("best", "SFT imitates the best response per prompt, all, or those above the prompt mean",
                       choices=SFT_MODES)
    length_normalize: bool = _f(False, "per-token-mean log-probs instead of sums (the authors' code)")
    rewards_zscore: bool = _f(True, "z-score rewards with the training set's mean and std")
    warmup: int = _f(10, "linear warm-up steps")
    grad_clip: float = _f(1.0, "gradient-norm clip (0 = off)")
    clip_separately: bool = _f(False, "DRO: clip the policy's and the value's gradients each to grad_clip, "
                                      "not jointly")
    dro_value: str = _f("network", "DRO's V(x): a value network of its own (network) or a linear head on the "
                                   "policy's mean-pooled prompt states, trained through the policy (shared: the "
                                   "authors' code)", choices=DRO_VALUES)
    eval_every: int = _f(50, "steps between quick validation probes (reward, KL) during training")
    checkpoint_every: int = _f(50, "steps between training-state checkpoints (for --resume)")

    def lr_for(self, objective: str) -> float:
        """The learning rate `objective` trains with: --lr if given, else its own `<name>_lr`."""
        return self.lr if self.lr is not None else getattr(self, f"{objective}_lr")

    def tau_for(self, objective: str) -> float | None:
        """τ of RPO and DRO (--tau if given, else their own); None for the objectives without one."""
        if not OBJECTIVES[objective].uses_tau:
            return None
        return self.tau if self.tau is not None else getattr(self, f"{objective}_tau")


@dataclass
class EvalConfig:
    eval_prompts: int = _f(100, "test prompts evaluated (0 = all)")
    eval_samples: int = _f(4, "samples per test prompt and policy")


@dataclass
class RunConfig:
    objectives: str = _f(",".join(DEFAULT_OBJECTIVES), f"comma-separated objectives to train, of "
                                                       f"{', '.join(OBJECTIVES)}")
    seeds: str = _f("0", "comma-separated alignment seeds; several → mean ± interval across seeds")
    seed: int = _f(0, "seed of the world, pretraining and collection")
    device: str = _f("auto", "auto (cuda → mps → cpu), cpu, cuda, cuda:N, mps")
    dtype: str = _f("auto", "auto (bf16 on capable CUDA GPUs, else fp32), float32, bfloat16")
    compile: bool = _f(False, "torch.compile the models (slow to start; pays off on GPUs)")
    threads: int = _f(0, "CPU threads for torch (0 = torch's default; 1 is often fastest for tiny models)")
    out: str = _f("out", "output folder: report, metrics, plots, cached stages")
    quick: bool = _f(False, "a tiny configuration for smoke runs (under a minute on a laptop CPU)")
    preset: str = _f("default", "default (follows the math) or paper (the authors' released code)",
                     choices=("default", "paper"))
    resume: bool = _f(False, "continue interrupted training stages from their last checkpoint")
    sweep: bool = _f(False, "tune learning rate and τ/β per objective on validation prompts first")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: GPTConfig = field(default_factory=GPTConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# Flags that differ from their field name (None: no flag). The model's vocabulary comes from the
# tokenizer, its block size and response grammar from the world.
RENAMED = {("world", "name"): "world", ("world", "seed"): None, ("model", "vocab_size"): None,
           ("model", "block_size"): None, ("model", "response_grammar"): None}

# Each world's own defaults, applied before --quick, --preset and the flags. Arithmetic: answers
# are at most 3 digits + end-of-text; 1200 pretraining steps bring the base model to the corpus's
# own accuracy (~76% correct on test prompts, CPU, seed 0) where 600 leave it at ~36%: a reference
# that has learned the corpus, slips and all, is the one alignment should improve. The alignment
# settings are what `python train.py --world arithmetic --sweep` chose (results/sweep_arithmetic_cpu.md);
# the online family's τ (and A*-PO's β₁) are RPO's, so that every objective shares one optimum π*_τ.
WORLD_DEFAULTS = {"arithmetic": {
    "pretrain": {"pretrain_steps": 1200},
    "collect": {"max_new_tokens": 4},
    "align": {"sft_lr": 3e-4, "kto_lr": 3e-5, "dro_lr": 1e-4, "dro_tau": 1.0, "rpo_lr": 1e-4, "rpo_tau": 1.0,
              "rloo_tau": 1.0, "grpo_tau": 1.0, "apo_tau": 1.0, "apo_beta1": 1.0}}}

QUICK = {"world": {"corpus_size": 4000},
         "model": {"n_layer": 2, "n_embd": 64, "n_head": 2},
         "pretrain": {"pretrain_steps": 800, "pretrain_batch_size": 32, "pretrain_lr": 3e-3},
         "collect": {"k": 4, "n_prompts": 48, "max_new_tokens": 32},
         # 30 steps instead of 150: higher learning rates, so the effect still shows.
         "align": {"steps": 30, "batch_size": 16, "eval_every": 15,
                   "sft_lr": 3e-4, "kto_lr": 3e-4, "dro_lr": 3e-4, "rpo_lr": 3e-4},
         "eval": {"eval_prompts": 24, "eval_samples": 2}}

# Notebooks 01-04, on top of QUICK: a base model pretrained long enough (1000 steps) to have
# learned which subjects get good reviews, K = 8 responses per training prompt, 100 alignment
# steps, a larger evaluation, and the alignment settings written out so that the notebooks do not
# change when a preset does: one learning rate, 3e-4, for every objective, τ = 0.3 (RPO, DRO) and
# β = 0.3 (KTO). The per-objective default learning rates were tuned for the full-size run; on this
# 2-layer model, in 100 steps of 16, they leave SFT and RPO too close to π_ref to see them differ.
NOTEBOOK = {"pretrain": {"pretrain_steps": 1000, "pretrain_lr": 3e-3},
            "collect": {"k": 8},
            "align": {"steps": 100, "eval_every": 25,
                      "sft_lr": 3e-4, "kto_lr": 3e-4, "dro_lr": 3e-4, "rpo_lr": 3e-4,
                      "rpo_tau": 0.3, "dro_tau": 0.3, "beta": 0.3},
            "eval": {"eval_prompts": 80, "eval_samples": 4}}

# The authors' released code (three T5 scripts): per-token-mean log-probs, the "ref" estimator with
# τ = 5, DRO τ = 1, KTO with a matched-batch reference point and β = 1, lr 1e-4 for all.
PAPER = {"align": {"length_normalize": True, "estimator": "ref", "rpo_tau": 5.0, "dro_tau": 1.0,
                   "kto_variant": "paper", "beta": 1.0, "lr": 1e-4, "rewards_zscore": True}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Pretrain a tiny GPT on a toy world, collect single-trajectory feedback, "
                    "align it with SFT, KTO, DRO and RPO, and compare them.")
    for section, sub in _sections(Config()):
        group = p.add_argument_group(section)
        for f in dataclasses.fields(sub):
            flag = RENAMED.get((section, f.name), f.name)
            if flag is None:
                continue
            default = getattr(sub, f.name)
            kw = {"default": argparse.SUPPRESS, "help": f.metadata.get("help", f.name) +
                  (f" (default: {default})" if default not in (None, "") else "")}
            if f.type in (bool, "bool"):
                kw["action"] = argparse.BooleanOptionalAction
            else:
                kw["type"] = f.metadata.get("type") or f.type
                kw["metavar"] = f.name.upper()
                if "choices" in f.metadata:
                    kw["choices"] = f.metadata["choices"]
            if section == "world" and f.name == "name":
                kw["choices"] = WORLDS
            group.add_argument(f"--{flag}", dest=f"{section}.{f.name}", **kw)
    return p


def parse_config(argv=None) -> Config:
    """Defaults, then the world's, then --quick, then --preset, then the flags the user typed
    (last word wins)."""
    args = vars(build_parser().parse_args(argv))
    cfg = Config()
    apply(cfg, WORLD_DEFAULTS.get(args.get("world.name", cfg.world.name), {}))
    cfg.run.quick = args.get("run.quick", False)
    cfg.run.preset = args.get("run.preset", "default")
    if cfg.run.quick:
        apply(cfg, QUICK)
    if cfg.run.preset == "paper":
        apply(cfg, PAPER)
    for key, value in args.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    cfg.world.seed = cfg.run.seed
    validate(cfg)
    return cfg


def apply(cfg: Config, overrides: dict) -> Config:
    for section, values in overrides.items():
        for name, value in values.items():
            setattr(getattr(cfg, section), name, value)
    return cfg


# What each numeric setting must be: (section, field) → (test, what it must be). `validate` applies
# every one before any work starts; a test walks the command line and gives every numeric flag a
# value out of range.
def at_least(low):
    return (lambda v: v >= low, f"at least {low}")


_POSITIVE = (lambda v: math.isfinite(v) and v > 0, "a positive number")
_NONNEGATIVE = (lambda v: math.isfinite(v) and v >= 0, "a number ≥ 0")
_FRACTION = (lambda v: 0 < v < 1, "a fraction strictly between 0 and 1")
CHECKS = {
    ("run", "seed"): at_least(0), ("run", "threads"): at_least(0),
    ("world", "corpus_size"): at_least(1), ("world", "prior_strength"): _NONNEGATIVE,
    ("world", "val_fraction"): _FRACTION, ("world", "test_fraction"): _FRACTION,
    ("world", "wrong_fraction"): (lambda v: 0 <= v < 1, "a fraction ≥ 0 and below 1"),
    ("world", "arithmetic_prompts"): at_least(1),
    ("world", "max_operand"): (lambda v: 1 <= v <= 449, "in 1..449 (every answer 1 to 3 digits)"),
    ("tokenizer", "vocab_size"): at_least(257),  # 256 bytes + end-of-text
    ("model", "n_layer"): at_least(1), ("model", "n_head"): at_least(1), ("model", "n_embd"): at_least(1),
    ("model", "dropout"): (lambda v: 0 <= v < 1, "a rate ≥ 0 and below 1"),
    ("pretrain", "pretrain_steps"): at_least(0), ("pretrain", "pretrain_batch_size"): at_least(1),
    ("pretrain", "pretrain_lr"): _POSITIVE,
    ("collect", "k"): at_least(1), ("collect", "n_prompts"): at_least(0), ("collect", "temperature"): _POSITIVE,
    ("collect", "top_k"): at_least(0), ("collect", "max_new_tokens"): at_least(1),
    ("align", "steps"): at_least(1), ("align", "batch_size"): at_least(2),
    ("align", "group_size"): at_least(2),  # a group baseline needs the other samples of the prompt
    **{("align", name): _POSITIVE for name in ("lr", "tau", "beta", "apo_beta1",
                                               *(f"{o}_{k}" for o in OBJECTIVES for k in ("lr", "tau")
                                                 if k == "lr" or OBJECTIVES[o].uses_tau))},
    ("align", "warmup"): at_least(0), ("align", "grad_clip"): _NONNEGATIVE,
    ("align", "eval_every"): at_least(1), ("align", "checkpoint_every"): at_least(1),
    ("eval", "eval_prompts"): at_least(0), ("eval", "eval_samples"): at_least(1),
}


def check(flag: str, value, rule: tuple) -> None:
    """Refuse `value` of `flag` unless it passes `rule` (one of CHECKS' values); None passes."""
    ok, must = rule
    if value is not None and not ok(value):
        raise UserError(f"{flag} must be {must}, got {value}")


def validate(cfg: Config) -> None:
    """Refuse bad settings before any work starts, naming the flag and the fix."""
    for (section, name), rule in CHECKS.items():
        check("--" + (RENAMED.get((section, name)) or name), getattr(getattr(cfg, section), name), rule)
    w = cfg.world
    if w.val_fraction + w.test_fraction >= 1:
        raise UserError(f"--val_fraction {w.val_fraction} and --test_fraction {w.test_fraction} leave no training "
                        "prompts: together they must stay below 1")
    if cfg.model.n_embd % cfg.model.n_head:
        raise UserError(f"--n_embd {cfg.model.n_embd} must divide by --n_head {cfg.model.n_head}")
    objs = objectives(cfg)
    bad = [o for o in objs if o not in OBJECTIVES]
    if bad or not objs:
        raise UserError(f"--objectives: unknown {bad or 'empty list'}; choose from {', '.join(OBJECTIVES)}")
    if len(set(objs)) != len(objs):
        raise UserError(f"--objectives repeats an objective ({cfg.run.objectives}); name each once")
    seeds(cfg)
    c, a = cfg.collect, cfg.align
    if a.estimator == "iw" and "rpo" in objs:
        if not (c.off_policy or c.dataset):
            raise UserError("--estimator iw reweights off-policy samples by π_ref/μ; reference samples come from "
                            "π_ref itself (μ = π_ref, which is --estimator mean): add --off_policy or use another "
                            "estimator")
        if c.off_policy and not c.dataset and WORLD_CLASSES[cfg.world.name].off_policy_logprob is None:
            raise UserError(f"--estimator iw needs μ(y|x) of the off-policy generator, which the {cfg.world.name} "
                            "world does not know (the arithmetic world does): use another estimator")
        if a.length_normalize:
            raise UserError("--estimator iw weights whole responses by π_ref/μ: it needs summed log-probs, "
                            "not --length_normalize")
    if a.online and a.estimator in ("iw", "exact") and "rpo" in objs:
        raise UserError(f"--online --estimator {a.estimator}: online RPO estimates log Ẑ(x) from each step's "
                        "fresh group; use --estimator mean or loo (or ref, uniform)")
    if cfg.collect.k == 1 and "rpo" in objs and not a.online:
        # Refused rather than warned: with one response per prompt log Ẑ = r/τ, every RPO target
        # is exactly 0 and RPO would train on no signal at all.
        raise UserError("--k 1 gives every prompt a lone response, so every RPO target is 0 "
                         "(log Ẑ = r/τ): use --k 2 or more, or drop rpo from --objectives")


def objectives(cfg: Config) -> list[str]:
    return [o.strip() for o in cfg.run.objectives.split(",") if o.strip()]


def seeds(cfg: Config) -> list[int]:
    return parse_seeds(cfg.run.seeds)


def parse_seeds(text: str) -> list[int]:
    """"0,1,2" → [0, 1, 2]; anything else (not integers, negative, none, a seed twice) is refused."""
    try:
        out = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers like 0,1,2; got {text!r}") from None
    if not out:
        raise UserError("--seeds is empty; give at least one seed, like 0 or 0,1,2")
    if min(out) < 0:
        raise UserError(f"--seeds must be integers ≥ 0; got {text!r}")
    if len(set(out)) != len(out):
        # two copies of one seed are one run twice: their interval would be a fake ±0
        raise UserError(f"--seeds repeats a seed ({text}); give distinct seeds, like 0,1,2")
    return out


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def stage_key(*parts) -> str:
    """A short hash of plain values (configs as dicts, upstream keys): the cache folder's name."""
    blob = json.dumps([to_dict(p) if dataclasses.is_dataclass(p) else p for p in parts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _sections(cfg: Config):
    return [(f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg)]
