"""Alignment: the registry of objectives, and one prepared alignment that trains any of them.

A step's batch comes from one of two sources. *The dataset*: π_ref's K responses per prompt,
sampled once (collect.py); before the first step everything that does not change during
training is computed once — the reference model's log-probs of every sample (π_ref is frozen),
the (z-scored) rewards, and per objective its fixed inputs (RPO's partition log Ẑ(x), KTO's
desirability labels, SFT's selected responses) — and each step only runs the policy (and DRO's
value network). *Fresh samples*: every step, `group_size` responses to each of batch_size /
group_size training prompts from the policy being trained (one each for A*-PO), scored, and the
same per-sample inputs computed on that group — RLOO's and GRPO's baselines, online RPO's
log Ẑ(x). Either way the objective's `prepare` runs on a group of scored samples, its per-prompt
quantities grouped by prompt id, and its loss on the batch.

Adding an objective: its loss in `losses.py`, then one `Objective` entry in `OBJECTIVES` below
(and its learning-rate field, `<name>_lr`, in `config.AlignConfig`).
"""

import contextlib
import copy
import time
from dataclasses import dataclass
from typing import Callable

import torch

from . import losses, training
from .data import Dataset, collate, collate_prompts, reward_scale
from .model import GPT, PooledValueHead, ValueModel
from .runtime import Dist, UserError
from .sampling import response_logprobs, rollout

KTO_VARIANTS = ("halos", "paper")  # reference point: mismatched pairs, clamped (TRL/HALOs) | matched batch
DRO_VALUES = ("network", "shared")  # V(x): a value network of its own | a head on the policy's pooled states


@dataclass
class Batch:
    """One minibatch, as every objective's loss sees it."""
    prompts: list          # B token lists
    responses: list        # B token lists, end-of-text last
    mask: torch.Tensor     # (B, T) response mask of the collated rows
    logps: torch.Tensor    # (B,) log π_θ(y|x), with gradient
    f: dict                # the objective's per-sample inputs of these B samples (`prepare`), on the device


@dataclass(frozen=True)
class Fresh:
    """What training on fresh samples needs to sample and score them."""
    world: object          # scores and judges fluency (worlds.py)
    enc: object            # the tokenizer
    reward: str            # the training reward's name
    max_new_tokens: int    # the longest response sampled


@dataclass(frozen=True)
class Objective:
    """What the rest of the project needs to know about one objective."""
    name: str
    color: str             # its colour in every plot
    knob: str              # the AlignConfig field of its own strength, swept next to the learning rate
    knob_values: tuple     # the sweep's values of that knob
    uses_tau: bool         # it maximises the KL-regularised reward at a τ of its own (SFT and KTO have none)
    value_network: bool    # trains a value network V_φ(x) next to the policy
    prepare: Callable      # (rewards, data, ref_logps, cfg, tau, exact_log_z, once) -> dict of per-sample tensors
    loss: Callable         # (alignment, batch) -> (loss, metrics)
    settings: tuple = ()   # the AlignConfig fields it reads besides TRAINING_SETTINGS, its lr and its τ
    fresh: str = "never"   # trains on fresh samples of the policy: "never", "always", or "online" (when --online)
    once: Callable | None = None  # (rewards, data, cfg) -> per-prompt tensors from π_ref's dataset, before training
    one_per_prompt: bool = False  # fresh samples: one per prompt (A*-PO), not a group of --group_size

    def trains_fresh(self, cfg) -> bool:
        return self.fresh == "always" or (self.fresh == "online" and cfg.online)

    def reads(self, cfg) -> tuple:
        """The AlignConfig fields its training reads besides its lr and τ (its policy's cache key)."""
        online = ("online",) if self.fresh == "online" else ()
        group = ("group_size",) if self.trains_fresh(cfg) and not self.one_per_prompt else ()
        return TRAINING_SETTINGS + self.settings + online + group


# The AlignConfig fields every objective's training reads (its policy's cache key covers them, its
# own settings, its learning rate and τ, and nothing else). checkpoint_every, when the training state
# is saved, is read too but never changes what is trained, so it is left out of the key.
TRAINING_SETTINGS = ("steps", "batch_size", "warmup", "grad_clip", "clip_separately", "length_normalize",
                     "rewards_zscore", "eval_every")


# --- each objective's fixed inputs and minibatch loss ----------------------------------------

def _rpo_prepare(rewards, data, ref_logps, cfg, tau, exact_log_z, once):
    # The partition: computed once, here, over the whole dataset, and never again.
    behavior = data.behavior_logps
    if cfg.estimator == "iw" and behavior is None:
        raise UserError('--estimator iw needs the log-probability of each response under the generator that '
                        'wrote it ("behavior_logp"): off-policy data in the arithmetic world has it, π_ref\'s own '
                        'samples and the reviews world\'s off-policy generator do not')
    # (under "uniform", QRPO, the rewards become their quantiles, which make Z a closed form)
    rewards, log_z = losses.rpo_inputs(rewards, data.prompt_ids, tau, cfg.estimator, ref_logps=ref_logps.double(),
                                       exact_log_z=exact_log_z, behavior_logps=behavior)
    return {"rewards": rewards.float(), "log_z": log_z.float()}


def _rpo_loss(a, b):
    return losses.rpo_loss(b.logps, b.f["ref_logps"], b.f["rewards"], b.f["log_z"], a.tau)


def _dro_loss(a, b):
    p_tokens, last = collate_prompts(b.prompts, a.eot)
    p_tokens, last = p_tokens.to(a.device), last.to(a.device)
    with a.autocast():
        if a.cfg.dro_value == "shared":  # the policy's own prompt states, gradient flowing into the policy
            values = a.value(a.policy.hidden_states(p_tokens), last).float()
        else:
            values = a.forward["value"](p_tokens, last).float()
    return losses.dro_loss(b.logps, b.f["ref_logps"], b.f["rewards"], values, a.tau)


def _kto_prepare(rewards, data, ref_logps, cfg, tau, exact_log_z, once):
    return {"desirable": losses.binarize_rewards(rewards, data.prompt_ids, cfg.kto_threshold)}


def _kto_loss(a, b):
    """The reference point z0 comes from the policy on mismatched pairs (x_i, y_{i+1}), without
    gradient (TRL/HALOs); the authors' variant uses the matched batch instead."""
    cfg, ref_logps = a.cfg, b.f["ref_logps"]
    if cfg.kto_variant == "paper":
        kl_pol, kl_ref, clamp = b.logps.detach(), ref_logps, False
    else:
        perm = losses.kto_mismatched(len(b.prompts)).tolist()
        mm_tokens, mm_mask, _ = collate(b.prompts, [b.responses[j] for j in perm], a.eot)
        mm_tokens, mm_mask = mm_tokens.to(a.device), mm_mask.to(a.device)
        with torch.no_grad(), a.autocast():  # the mismatched pairs are not in the dataset: two extra forwards
            kl_pol = losses.sequence_logprobs(a.policy(mm_tokens), mm_tokens, mm_mask, cfg.length_normalize,
                                              a.policy.grammar)
            kl_ref = losses.sequence_logprobs(a.ref(mm_tokens), mm_tokens, mm_mask, cfg.length_normalize,
                                              a.ref.grammar)
        clamp = True
    return losses.kto_loss(b.logps, ref_logps, b.f["desirable"], kl_pol, kl_ref,
                           beta=cfg.beta, clamp_z0=clamp)


def _sft_prepare(rewards, data, ref_logps, cfg, tau, exact_log_z, once):
    return {"index": torch.nonzero(losses.sft_select(rewards, data.prompt_ids, cfg.sft_mode)).squeeze(1)}


def _sft_loss(a, b):
    n_tok = None if a.cfg.length_normalize else b.mask[:, 1:].sum(1)
    return losses.sft_loss(b.logps, n_tok)


def _nothing(rewards, data, ref_logps, cfg, tau, exact_log_z, once):
    return {}


def _groups_prepare(rewards, data, ref_logps, cfg, tau, exact_log_z, once):
    return {"prompt_ids": data.prompt_ids}


def _rloo_loss(a, b):
    return losses.pg_loss(b.logps, b.f["ref_logps"], b.f["rewards"], b.f["prompt_ids"], a.tau, "rloo")


def _grpo_loss(a, b):
    kind = "grpo" if a.cfg.grpo_std else "dr_grpo"
    return losses.pg_loss(b.logps, b.f["ref_logps"], b.f["rewards"], b.f["prompt_ids"], a.tau, kind)


def _apo_once(rewards, data, cfg):
    """V̂*(x) from π_ref's N samples of each prompt (the dataset), once: (number of prompts,)."""
    per_sample = losses.apo_values(rewards, data.prompt_ids, cfg.apo_beta1)
    table = torch.zeros(int(data.prompt_ids.max()) + 1, dtype=per_sample.dtype)
    return {"values": table.index_copy(0, data.prompt_ids, per_sample)}


def _apo_prepare(rewards, data, ref_logps, cfg, tau, exact_log_z, once):
    return {"values": once["values"][data.prompt_ids].float()}


def _apo_loss(a, b):
    return losses.apo_loss(b.logps, b.f["ref_logps"], b.f["rewards"], b.f["values"], a.tau)


OBJECTIVES = {o.name: o for o in (
    Objective("sft", "tab:green", "sft_mode", ("best", "above_mean", "all"), False, False, _sft_prepare, _sft_loss,
              ("sft_mode",)),
    Objective("kto", "tab:orange", "beta", (0.03, 0.1, 0.3), False, False, _kto_prepare, _kto_loss,
              ("beta", "kto_variant", "kto_threshold")),
    Objective("dro", "tab:purple", "dro_tau", (0.1, 0.3, 1.0), True, True, _nothing, _dro_loss, ("dro_value",),
              fresh="online"),
    Objective("rpo", "tab:blue", "rpo_tau", (0.1, 0.3, 1.0), True, False, _rpo_prepare, _rpo_loss, ("estimator",),
              fresh="online"),
    Objective("rloo", "tab:brown", "rloo_tau", (0.1, 0.3, 1.0), True, False, _groups_prepare, _rloo_loss,
              fresh="always"),
    Objective("grpo", "tab:pink", "grpo_tau", (0.1, 0.3, 1.0), True, False, _groups_prepare, _grpo_loss,
              ("grpo_std",), fresh="always"),
    Objective("apo", "tab:olive", "apo_tau", (0.1, 0.3, 1.0), True, False, _apo_prepare, _apo_loss,
              ("apo_beta1",), fresh="always", once=_apo_once, one_per_prompt=True),
)}
DEFAULT_OBJECTIVES = ("sft", "kto", "dro", "rpo")  # what `python train.py` trains: the offline four


def get(objective: str) -> Objective:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
    return OBJECTIVES[objective]


def prepare(objective: str, data: Dataset, ref_logps: torch.Tensor, cfg, tau: float | None, oracle=None,
            scale=None, once=None) -> dict:
    """The per-sample tensors an objective trains on (cfg: AlignConfig): for the dataset, fixed for
    the whole run; for fresh samples, this step's.

    Always: the (z-scored) rewards, log π_ref of every sample, and the indices of the samples
    it trains on; plus the objective's own (`Objective.prepare`). `scale`: the z-scoring (default:
    the data's own; fresh samples are scored in the dataset's units). `oracle` (an exact world's
    `exact.Oracle` over the data's prompts) supplies the enumerated log Z_τ(x), in the same
    z-scored units, for RPO's "exact" estimator. `once`: the objective's per-prompt tensors from
    π_ref's dataset (`Objective.once`), indexed by prompt id."""
    scale = scale or reward_scale(data.rewards, cfg.rewards_zscore)
    rewards = scale(data.rewards)
    exact_log_z = None
    if oracle is not None and tau is not None:
        prompts = [r["prompt"] for r in data.records]
        exact_log_z = oracle.per_sample(oracle.log_z(tau, scale), prompts)
    fixed = {"rewards": rewards.float(), "ref_logps": ref_logps.float(), "index": torch.arange(len(data))}
    return fixed | get(objective).prepare(rewards, data, ref_logps, cfg, tau, exact_log_z, once)


# --- the prepared alignment ------------------------------------------------------------------

class Alignment:
    """A copy of `base` being fine-tuned with one objective: policy, value network (DRO), frozen
    reference, fixed per-sample tensors, optimizer, and the training loop over them.

    `loss(idx)` is the objective's loss on any minibatch (experiments call it at fixed
    parameters); `train()` runs the shared loop. `wrap(module)` returns what runs a training
    forward pass (torch.compile, DDP), same parameters. Under torchrun each rank trains on its
    share of every batch (with fresh samples: its share of the prompts, each prompt's group on
    one rank); only rank 0 writes state. `fresh` (`Fresh`): how to sample and score, for the
    objectives that train on fresh samples."""

    def __init__(self, objective: str, base: GPT, data: Dataset, cfg, lr: float, tau: float | None,
                 seed: int, eot: int, autocast=contextlib.nullcontext, wrap=lambda m: m, dist: Dist = Dist(),
                 oracle=None, fresh: Fresh | None = None):
        self.objective, self.data, self.cfg, self.tau = get(objective), data, cfg, tau
        self.seed, self.eot, self.autocast, self.dist = seed, eot, autocast, dist
        self.device = next(base.parameters()).device
        self.oracle, self.fresh = oracle, None
        torch.manual_seed(seed)
        self.ref = base.eval().requires_grad_(False)
        self.policy = copy.deepcopy(base).requires_grad_(True).train()
        self.scale = reward_scale(data.rewards, cfg.rewards_zscore)
        self.once = self.objective.once(self.scale(data.rewards), data, cfg) if self.objective.once else None
        if self.objective.trains_fresh(cfg):
            if fresh is None:
                raise ValueError(f"{objective} trains on fresh samples: pass fresh=Fresh(world, enc, reward, "
                                 f"max_new_tokens)")
            self.fresh = fresh
            self.group = 1 if self.objective.one_per_prompt else cfg.group_size
            # the dataset's prompts, by prompt id: (id, text) — fresh samples answer the same prompts
            self.prompts = sorted({int(i): r["prompt"] for i, r in zip(data.prompt_ids.tolist(), data.records)}.items())
            self.prompts_per_step = min(max(1, cfg.batch_size // self.group), len(self.prompts))
            fixed = {}
        else:
            ref_logps = response_logprobs(self.ref, data.prompt_tokens, data.response_tokens, eot,
                                          cfg.length_normalize, autocast=autocast)
            fixed = prepare(objective, data, ref_logps, cfg, tau, oracle, self.scale, self.once)
        if "log_z" in fixed and dist.world_size > 1:  # one partition for all ranks: rank 0's, from the full dataset
            log_z = fixed["log_z"].to(self.device)
            torch.distributed.broadcast(log_z, src=0)
            fixed["log_z"] = log_z
        # on the device once, not per step (the sample indices stay on the CPU for the data order)
        self.fixed = {k: v.to(self.device) if k != "index" else v for k, v in fixed.items()}
        self.modules = {"policy": self.policy}
        self.value = None
        if self.objective.value_network and cfg.dro_value == "shared":
            self.value = PooledValueHead(base.config.n_embd).to(self.device)
            self.modules["value"] = self.value.train()
        elif self.objective.value_network:
            self.value = ValueModel(base.config).to(self.device)
            self.value.trunk.load_state_dict(base.state_dict())
            self.modules["value"] = self.value.train()
        params = [p for m in self.modules.values() for p in m.parameters()]
        self.optimizer = training.make_optimizer(params, lr)
        self.forward = {name: wrap(m) for name, m in self.modules.items()}
        self.loop = training.Loop(objective, self.modules, self.optimizer, cfg.steps, lr, cfg.warmup,
                                  cfg.grad_clip, history={"train": [], "probe": []},
                                  save_every=cfg.checkpoint_every, dist=dist, clip_separately=cfg.clip_separately)

    @property
    def history(self) -> dict:
        return self.loop.history

    def batch(self, step: int) -> torch.Tensor:
        """The sample indices of step `step` (this rank's share)."""
        index = self.fixed["index"]
        order = training.batch_indices(step, min(self.cfg.batch_size, len(index)), len(index), self.seed)
        return index[self.dist.shard(order)]

    def loss(self, idx: torch.Tensor):
        """The objective's loss and metrics on the dataset's samples `idx` (CPU long tensor)."""
        return self.loss_on(*self._dataset_batch(idx))

    def loss_on(self, prompts: list, responses: list, f: dict):
        """The objective's loss and metrics on any samples: token lists and their per-sample inputs."""
        tokens, mask, _ = collate(prompts, responses, self.eot)
        tokens, mask = tokens.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)
        with self.autocast():
            logits = self.forward["policy"](tokens)
        logps = losses.sequence_logprobs(logits, tokens, mask, self.cfg.length_normalize, self.policy.grammar)
        if not torch.isfinite(logps).all():  # let the loop stop with the step and objective named
            return logps.sum(), {}
        return self.objective.loss(self, Batch(prompts, responses, mask, logps, f))

    def sample(self, step: int):
        """Step `step`'s fresh samples: `group` responses from the *current* policy to each of this
        rank's batch_size / group prompts (whole groups per rank), scored and prepared.

        Returns (prompts, responses, per-sample inputs on the device, step statistics). The sampler's
        generator is seeded by (seed, step, rank), so a resumed run samples what it would have."""
        order = training.batch_indices(step, self.prompts_per_step, len(self.prompts), self.seed)
        ids, texts = zip(*[self.prompts[i] for i in self.dist.shard(order).tolist()])
        g = torch.Generator(device=self.device).manual_seed(((self.seed * 1_000_003 + step) * 101 + self.dist.rank))
        self.policy.eval()  # no dropout while sampling: the samples are the policy's own
        r = rollout(self.policy, self.fresh.enc, self.fresh.world, list(texts), self.group,
                    self.fresh.max_new_tokens, g, autocast=self.autocast)
        self.policy.train()
        ref_logps = response_logprobs(self.ref, r.prompt_tokens, r.response_tokens, self.eot,
                                      self.cfg.length_normalize, autocast=self.autocast)
        raw = torch.tensor([sc[self.fresh.reward] for sc in r.scores], dtype=torch.float64)
        prompt_ids = torch.tensor([ids[i] for i in r.prompt_ids], dtype=torch.long)
        group = Dataset(r.prompt_tokens, r.response_tokens, prompt_ids, raw,
                        [{"prompt_id": ids[i], "prompt": p} for i, p in zip(r.prompt_ids, r.prompts)])
        f = prepare(self.objective.name, group, ref_logps, self.cfg, self.tau, self.oracle, self.scale, self.once)
        stats = {"reward": float(raw.mean()), "fluency": sum(r.fluent) / len(r.fluent),
                 "entropy": -sum(r.logps) / len(r.logps), "generations": len(r.logps) * self.dist.world_size,
                 "sampled_tokens": sum(len(t) for t in r.response_tokens)}
        if self.group > 1:
            stats["zero_variance_groups"] = losses.zero_variance_groups(raw, prompt_ids)
        f = {k: v.to(self.device) for k, v in f.items() if k != "index"}
        return r.prompt_tokens, r.response_tokens, f, stats

    def train(self, probe=None, state_path: str | None = None, resume: bool = False, log=print,
              until: int | None = None) -> dict:
        """Train up to step `until` (default: cfg.steps); returns the history.

        probe(policy) -> dict (validation reward, KL...) is recorded every `cfg.eval_every`
        steps and once more at the end."""
        cfg, name, loop = self.cfg, self.objective.name, self.loop
        loop.state_path = state_path
        self.policy.train()
        if resume and loop.resume():
            log(f"{name}: resumed at step {loop.step}")
        t0, tokens = time.perf_counter(), [0]

        def loss_at(step):
            if probe and step % cfg.eval_every == 0 and not any(p["step"] == step for p in self.history["probe"]):
                self._probe(probe, step)
            prompts, responses, f, stats = self.step_batch(step)
            tokens[0] += sum(len(p) + len(r) for p, r in zip(prompts, responses))
            loss, metrics = self.loss_on(prompts, responses, f)
            return loss, metrics | stats

        def after_step(step, metrics, norms, lr):
            # The policy's gradient norm alone, so DRO's (which also trains a value net) compares with RPO's.
            gnorm = norms["policy"].item()
            self.history["train"].append({"step": step, **metrics, "grad_norm": gnorm, "lr": lr}
                                         | ({"value_grad_norm": norms["value"].item()} if "value" in norms else {}))
            if step % 25 == 0 or step == cfg.steps:
                rate = tokens[0] / (time.perf_counter() - t0)
                probe_txt = "".join(f"  val {k} {v:+.3f}" for k, v in self.history["probe"][-1].items()
                                    if k in ("reward", "kl")) if self.history["probe"] else ""
                log(f"{name} step {step:>4}/{cfg.steps}  loss {metrics['loss']:.4f}  grad norm "
                    f"{gnorm:.3f}  lr {lr:.2e}{probe_txt}  {rate:,.0f} tok/s")

        loop.run(loss_at, after_step, until)
        if loop.step == cfg.steps:  # the last update can make the next loss non-finite: stop before the policy is kept
            with torch.no_grad():
                prompts, responses, f, _ = self.step_batch(loop.step - 1)
                training.check_finite(self.loss_on(prompts, responses, f)[0], loop.step,
                                      f"{name} after its last update")
        if probe and loop.step == cfg.steps:
            self._probe(probe, loop.step)
        self.policy.eval()
        # the budget: responses sampled and scored — π_ref's dataset (if it trains or estimates on it), fresh ones
        fresh = self.prompts_per_step * self.group * loop.step if self.fresh else 0  # the steps taken so far
        self.history["generations"] = {"dataset": 0 if self.fresh and not self.once else len(self.data),
                                       "fresh": fresh}
        return self.history

    def step_batch(self, step: int):
        """Step `step`'s (prompts, responses, per-sample inputs, statistics): fresh or from the dataset."""
        if self.fresh:
            return self.sample(step)
        prompts, responses, f = self._dataset_batch(self.batch(step))
        return prompts, responses, f, {}

    def _dataset_batch(self, idx):
        on_device = idx.to(self.device)
        return ([self.data.prompt_tokens[i] for i in idx.tolist()], [self.data.response_tokens[i] for i in idx.tolist()],
                {k: v[on_device] for k, v in self.fixed.items() if k != "index"})

    def _probe(self, probe, step):
        self.policy.eval()
        self.history["probe"].append({"step": step, **probe(self.policy)})
        self.policy.train()


def align(objective: str, base: GPT, data: Dataset, cfg, lr: float, tau: float | None, seed: int, eot: int,
          autocast=contextlib.nullcontext, state_path: str | None = None, resume=False, probe=None, log=print,
          wrap=lambda m: m, dist=Dist(), oracle=None, fresh: Fresh | None = None):
    """Fine-tune a copy of `base` with one objective. Returns (policy, value_model or None, history)."""
    a = Alignment(objective, base, data, cfg, lr, tau, seed, eot, autocast, wrap, dist, oracle, fresh)
    history = a.train(probe, state_path, resume, log)
    return a.policy, a.value, history
