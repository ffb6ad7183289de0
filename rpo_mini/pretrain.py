"""Pretraining: next-token prediction on the world's corpus. The result is π_ref.

Each document (prompt + response + end-of-text) is one row, right-padded; the loss covers
every real next token, the final end-of-text included, so the model learns where reviews
stop. Rows start at position 0 exactly as prompts do at sampling time.
"""

import time

import torch

from . import training
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


def pretrain(model: GPT, docs: list, eot: int, cfg, seed: int, device, autocast,
             state_path: str | None = None, resume: bool = False, log=print, train_model=None,
             dist=Dist()) -> list[dict]:
    """Train `model` in place on token documents (cfg: a PretrainConfig); returns the loss history.

    `train_model` is what runs the forward pass (a compiled or DDP-wrapped `model`); under
    torchrun each rank takes its share of every batch and only rank 0 writes state files."""
    train_model = train_model or model
    opt = training.make_optimizer(model.parameters(), cfg.pretrain_lr, weight_decay=0.1)
    loop = training.Loop("pretraining", {"model": model}, opt, cfg.pretrain_steps, cfg.pretrain_lr,
                         warmup=max(1, cfg.pretrain_steps // 20), grad_clip=1.0, history=[],
                         state_path=state_path, save_every=100, dist=dist)
    if resume and loop.resume():
        log(f"pretraining: resumed at step {loop.step}")
    model.train()
    seen = {"tokens": 0, "t0": time.perf_counter()}

    def loss_at(step):
        idx = dist.shard(training.batch_indices(step, cfg.pretrain_batch_size, len(docs), seed))
        tokens, targets = document_batch(docs, idx, eot)
        seen["tokens"] += int((targets >= 0).sum())  # counted on the CPU: no device sync
        tokens, targets = tokens.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast():
            _, loss = train_model(tokens, targets)
        return loss, loss

    def after_step(step, loss, norms, lr):
        if step % 25 == 0 or step == cfg.pretrain_steps:
            gnorm = norms["model"].item()
            loop.history.append({"step": step, "loss": loss.item(), "grad_norm": gnorm, "lr": lr})
            if step % 100 == 0:
                rate = seen["tokens"] / (time.perf_counter() - seen["t0"])
                log(f"pretrain step {step:>5}/{cfg.pretrain_steps}  loss {loss.item():.3f}  "
                    f"grad norm {gnorm:.2f}  lr {lr:.2e}  {rate:,.0f} tok/s")

    loop.run(loss_at, after_step)
    model.eval()
    return loop.history
