"""Pretraining: next-token prediction on the world's corpus. The result is π_ref.

Each document (prompt + response + end-of-text) is one row, right-padded; the loss covers
every real next token, the final end-of-text included, so the model learns where reviews
stop. Rows start at position 0 exactly as prompts do at sampling time.
"""

import os
import time

import torch
from tqdm import tqdm

from . import training
from .config import PretrainConfig
from .model import GPT
from .runtime import Dist


def document_batch(docs: list, idx: torch.Tensor, eot: int):
    """tokens (B, T) and targets (B, T), target -1 where there is nothing to predict."""
    rows = [docs[i] for i in idx.tolist()]
    T = max(len(r) for r in rows) - 1
    tokens = torch.full((len(rows), T), eot, dtype=torch.long)
    targets = torch.full((len(rows), T), -1, dtype=torch.long)
    for b, r in enumerate(rows):
        tokens[b, :len(r) - 1] = torch.tensor(r[:-1])
        targets[b, :len(r) - 1] = torch.tensor(r[1:])
    return tokens, targets


def pretrain(model: GPT, docs: list, eot: int, cfg: PretrainConfig, seed: int, device, autocast,
             state_path: str, resume: bool = False, log=print, train_model=None, dist=Dist()) -> list[dict]:
    """Train `model` in place on token documents; returns the loss history.

    `train_model` is what runs the forward pass (a compiled or DDP-wrapped `model`); under
    torchrun each rank takes its share of every batch and only rank 0 writes state files."""
    train_model = train_model or model
    opt = training.make_optimizer(model.parameters(), cfg.pretrain_lr, weight_decay=0.1)
    step, history = 0, []
    if resume and os.path.exists(state_path):
        step, state = training.load_state(state_path, {"model": model}, opt)
        history = state["history"]
        log(f"pretrain: resumed at step {step}")
    model.train()
    tokens_seen, t0 = 0, time.perf_counter()
    bar = tqdm(total=cfg.pretrain_steps, initial=step, desc="pretrain", unit="step", leave=False, disable=None)
    with training.SigintGuard() as guard:
        while step < cfg.pretrain_steps:
            lr = training.lr_at(step, cfg.pretrain_steps, cfg.pretrain_lr, warmup=max(1, cfg.pretrain_steps // 20))
            training.set_lr(opt, lr)
            idx = dist.shard(training.batch_indices(step, cfg.pretrain_batch_size, len(docs), seed))
            tokens, targets = document_batch(docs, idx, eot)
            tokens_seen += int((targets >= 0).sum())  # counted on the CPU: no device sync
            tokens, targets = tokens.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with autocast():
                _, loss = train_model(tokens, targets)
            training.check_finite(loss, step, "pretraining")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = training.grad_norm_and_clip(model.parameters(), 1.0)
            opt.step()
            step += 1
            if step % 25 == 0 or step == cfg.pretrain_steps:
                rate = tokens_seen / (time.perf_counter() - t0)
                history.append({"step": step, "loss": loss.item(), "grad_norm": gnorm.item(), "lr": lr})
                bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{rate:,.0f}")
                if step % 100 == 0:
                    log(f"pretrain step {step:>5}/{cfg.pretrain_steps}  loss {loss.item():.3f}  "
                        f"grad norm {gnorm.item():.2f}  lr {lr:.2e}  {rate:,.0f} tok/s")
            bar.update(1)
            if dist.is_main and (guard.requested or (step % 100 == 0 and step < cfg.pretrain_steps)):
                training.save_state(state_path, step, {"model": model}, opt, {"history": history})
            if guard.requested:
                raise training.Interrupted(f"pretraining interrupted at step {step}; state saved to {state_path}")
    bar.close()
    model.eval()
    return history
