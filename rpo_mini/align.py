"""Alignment: one loop for all four objectives (SFT, KTO, DRO, RPO) on the same dataset.

Before the loop, everything that does not change during training is computed once:
the reference model's log-probs of every sample (π_ref is frozen), the (z-scored) rewards,
and per objective its fixed inputs — RPO's partition log Ẑ(x), KTO's desirability labels,
SFT's selected responses. The loop then only runs the policy (and DRO's value network).
"""

import contextlib
import copy
import os
import time

import torch
from tqdm import tqdm

from . import losses, training
from .collect import response_logprobs
from .config import OBJECTIVES, AlignConfig
from .data import Dataset, collate, collate_prompts, reward_stats
from .model import GPT, ValueModel
from .runtime import Dist


def prepare(objective: str, data: Dataset, ref_logps: torch.Tensor, cfg: AlignConfig, tau: float) -> dict:
    """The per-sample tensors an objective trains on, fixed for the whole run."""
    rewards = data.rewards.clone()
    if cfg.rewards_zscore:
        mean, std = reward_stats(rewards)
        rewards = (rewards - mean) / std
    prep = {"rewards": rewards.float(), "ref_logps": ref_logps.float(), "index": torch.arange(len(data))}
    if objective == "rpo":
        if cfg.estimator == "uniform":  # QRPO: quantile rewards make Z exact
            rewards = losses.quantile_rewards(rewards, data.prompt_ids)
            prep["rewards"] = rewards.float()
        # The partition: computed once, here, over the whole dataset, and never again.
        prep["log_z"] = losses.log_partition(rewards, data.prompt_ids, tau, cfg.estimator,
                                             ref_logps=ref_logps.double()).float()
    elif objective == "kto":
        prep["desirable"] = losses.binarize_rewards(rewards, data.prompt_ids, cfg.kto_threshold)
    elif objective == "sft":
        prep["index"] = torch.nonzero(losses.sft_select(rewards, data.prompt_ids, cfg.sft_mode)).squeeze(1)
    return prep


def align(objective: str, base: GPT, data: Dataset, cfg: AlignConfig, lr: float, tau: float, seed: int,
          eot: int, autocast=contextlib.nullcontext, state_path: str | None = None, resume=False,
          probe=None, log=print, wrap=lambda m: m, dist=Dist()):
    """Fine-tune a copy of `base` with one objective. Returns (policy, value_model, history).

    probe(policy) -> dict is called every `cfg.eval_every` steps (validation reward, KL...).
    wrap(module) returns what runs the forward pass (torch.compile, DDP), same parameters.
    Under torchrun each rank trains on its share of every batch; only rank 0 writes state."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
    device = next(base.parameters()).device
    torch.manual_seed(seed)
    ref = base.eval().requires_grad_(False)
    policy = copy.deepcopy(base).requires_grad_(True).train()
    ref_logps = response_logprobs(ref, data.prompt_tokens, data.response_tokens, eot,
                                  cfg.length_normalize, autocast=autocast)
    prep = prepare(objective, data, ref_logps, cfg, tau)
    if "log_z" in prep and dist.world_size > 1:  # one partition for all ranks: rank 0's, from the full dataset
        log_z = prep["log_z"].to(device)
        torch.distributed.broadcast(log_z, src=0)
        prep["log_z"] = log_z
    prep = {k: v.to(device) if k != "index" else v for k, v in prep.items()}  # on the device once, not per step
    modules = {"policy": policy}
    if objective == "dro":
        value = ValueModel(base.config).to(device)
        value.trunk.load_state_dict(base.state_dict())
        modules["value"] = value.train()
    params = [p for m in modules.values() for p in m.parameters()]
    opt = training.make_optimizer(params, lr)
    run = {name: wrap(m) for name, m in modules.items()} | {"ref": ref, "policy_nograd": policy}

    step, history = 0, {"train": [], "probe": []}
    if resume and state_path and os.path.exists(state_path):
        step, state = training.load_state(state_path, modules, opt)
        history = state["history"]
        log(f"{objective}: resumed at step {step}")
    index = prep["index"]
    t0, n_tok = time.perf_counter(), 0
    bar = tqdm(total=cfg.steps, initial=step, desc=objective, unit="step", leave=False, disable=None)
    with training.SigintGuard() as guard:
        while step < cfg.steps:
            if probe and step % cfg.eval_every == 0 and not any(p["step"] == step for p in history["probe"]):
                policy.eval()
                history["probe"].append({"step": step, **probe(policy)})
                policy.train()
            cur_lr = training.lr_at(step, cfg.steps, lr, cfg.warmup)
            training.set_lr(opt, cur_lr)
            idx = index[dist.shard(training.batch_indices(step, min(cfg.batch_size, len(index)), len(index), seed))]
            loss, metrics = objective_step(objective, run, data, prep, idx, cfg, tau, eot, device, autocast)
            training.check_finite(loss, step, objective)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norms = {name: training.grad_norm(m.parameters()) for name, m in modules.items()}
            training.clip_grads(params, cfg.grad_clip)
            opt.step()
            step += 1
            n_tok += sum(len(data.response_tokens[i]) + len(data.prompt_tokens[i]) for i in idx.tolist())
            # The policy's gradient norm alone, so DRO's (which also trains a value net) compares with RPO's.
            gnorm = norms["policy"]
            history["train"].append({"step": step, **metrics, "grad_norm": gnorm.item(), "lr": cur_lr}
                                    | ({"value_grad_norm": norms["value"].item()} if "value" in norms else {}))
            bar.update(1)
            if step % 25 == 0 or step == cfg.steps:
                rate = n_tok / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{rate:,.0f}")
                probe_txt = "".join(f"  val {k} {v:+.3f}" for k, v in history["probe"][-1].items()
                                    if k in ("reward", "kl")) if history["probe"] else ""
                log(f"{objective} step {step:>4}/{cfg.steps}  loss {metrics['loss']:.4f}  grad norm "
                    f"{gnorm.item():.3f}  lr {cur_lr:.2e}{probe_txt}  {rate:,.0f} tok/s")
            periodic = step % cfg.checkpoint_every == 0 and step < cfg.steps
            if state_path and dist.is_main and (guard.requested or periodic):
                training.save_state(state_path, step, modules, opt, {"history": history})
            if guard.requested:
                raise training.Interrupted(f"{objective} interrupted at step {step}; state saved to {state_path}")
    bar.close()
    if probe:
        policy.eval()
        history["probe"].append({"step": step, **probe(policy)})
    policy.eval()
    return policy, modules.get("value"), history


def objective_step(objective, run, data, prep, idx, cfg, tau, eot, device, autocast):
    """One minibatch: the policy's log-probs, then the objective's loss and metrics."""
    prompts = [data.prompt_tokens[i] for i in idx.tolist()]
    responses = [data.response_tokens[i] for i in idx.tolist()]
    tokens, mask, last_prompt = collate(prompts, responses, eot)
    tokens, mask = tokens.to(device, non_blocking=True), mask.to(device, non_blocking=True)
    with autocast():
        logits = run["policy"](tokens)
    logps = losses.sequence_logprobs(logits, tokens, mask, cfg.length_normalize)
    if not torch.isfinite(logps).all():  # let the loop stop with the step and objective named
        return logps.sum(), {}
    idx_dev = idx.to(device)
    rewards, ref_logps = prep["rewards"][idx_dev], prep["ref_logps"][idx_dev]

    if objective == "sft":
        n_tok = None if cfg.length_normalize else mask[:, 1:].sum(1)
        return losses.sft_loss(logps, n_tok)
    if objective == "rpo":
        return losses.rpo_loss(logps, ref_logps, rewards, prep["log_z"][idx_dev], tau)
    if objective == "dro":
        p_tokens, last = collate_prompts(prompts, eot)
        with autocast():
            values = run["value"](p_tokens.to(device), last.to(device)).float()
        return losses.dro_loss(logps, ref_logps, rewards, values, tau)
    # KTO: the reference point z0 comes from the policy on mismatched pairs (x_i, y_{i+1}),
    # without gradient (TRL/HALOs); the authors' variant uses the matched batch instead.
    desirable = prep["desirable"][idx_dev]
    if cfg.kto_variant == "paper":
        kl_pol, kl_ref, clamp = logps.detach(), ref_logps, False
    else:
        perm = losses.kto_mismatched(len(idx)).tolist()
        mm_resp = [responses[j] for j in perm]
        mm_tokens, mm_mask, _ = collate(prompts, mm_resp, eot)
        mm_tokens, mm_mask = mm_tokens.to(device), mm_mask.to(device)
        with torch.no_grad(), autocast():  # the mismatched pairs are not in the dataset: two extra forwards
            kl_pol = losses.sequence_logprobs(run["policy_nograd"](mm_tokens), mm_tokens, mm_mask, cfg.length_normalize)
            kl_ref = losses.sequence_logprobs(run["ref"](mm_tokens), mm_tokens, mm_mask, cfg.length_normalize)
        clamp = True
    return losses.kto_loss(logps, ref_logps, desirable, kl_pol, kl_ref, beta=cfg.beta, clamp_z0=clamp)
