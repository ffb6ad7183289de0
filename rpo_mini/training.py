"""The one training loop pretraining and alignment share, and what it is made of: optimizer,
schedule, data order, gradient norms and clipping, the NaN check, Ctrl-C, resumable state.

Data order is a pure function of (seed, step), so resuming needs only the step count plus
the model and optimizer states: the resumed run sees exactly the batches the uninterrupted
run would have seen.
"""

import math
import os
import signal
from functools import lru_cache

import torch
from tqdm import tqdm

from . import checkpoint, files
from .runtime import Dist


def make_optimizer(params, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices (not on biases, LayerNorms or embeddings' rows)."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    other = [p for p in params if p.dim() < 2]
    fused = {"fused": True} if params and all(p.is_cuda for p in params) else {}  # one kernel, not one per tensor
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95), **fused)


def lr_at(step: int, total: int, peak: float, warmup: int, final_frac: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to `final_frac · peak`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """Indices of the samples of batch `step`: consecutive slices of one shuffle per epoch."""
    pos = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = pos // n, pos % n
    return torch.stack([_epoch_order(n, seed, int(e))[o] for e, o in zip(epochs, offsets)])


def check_finite(loss: torch.Tensor, step: int, what: str) -> None:
    """Never train on through a NaN: stop with the step and the objective named."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{what}: the loss became {loss.item()} at step {step}; stopping "
                                 f"rather than training on. Lower the learning rate or check the rewards.")


def check_parameters(modules: dict, step: int, what: str) -> None:
    """The last update can also make a parameter NaN or infinite (the loss that preceded it was
    finite): checked before parameters are saved, or handed on to be sampled from."""
    for name, m in modules.items():
        if not all(torch.isfinite(p).all() for p in m.parameters()):
            raise FloatingPointError(f"{what}: the {name}'s parameters are no longer finite after step {step}; "
                                     f"stopping before they are saved or used. Lower the learning rate.")


def grad_norm(params) -> torch.Tensor:
    """The L2 norm of all gradients together (before clipping)."""
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def clip_grads(params, max_norm: float) -> None:
    """Scale all gradients together so that their joint norm is at most `max_norm` (0 = off)."""
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)


def clip_groups(modules: dict, separate: bool) -> list:
    """The parameter groups clipping treats as one: every module's together, or each module's apart.

    Why it matters: with two modules (DRO's policy and value network) a joint clip lets the
    value's gradient use up part of the policy's budget; clipped apart, each gets the full clip."""
    if separate:
        return [list(m.parameters()) for m in modules.values()]
    return [[p for m in modules.values() for p in m.parameters()]]


def clip_modules(modules: dict, max_norm: float, separate: bool) -> None:
    """Clip the gradients of all modules jointly, or of each module on its own (`separate`)."""
    for params in clip_groups(modules, separate):
        clip_grads(params, max_norm)


class Interrupted(Exception):
    """Ctrl-C during training: a checkpoint was saved; rerun with --resume to continue."""


class SigintGuard:
    """Turn Ctrl-C into a flag the loop checks between steps, so a step is never half-applied."""

    def __enter__(self):
        self.requested = False
        self._old = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not in the main thread (e.g. a notebook worker): leave Ctrl-C alone
            self._old = None
        return self

    def _handler(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def save_state(path: str, step: int, steps: int, modules: dict, optimizer, extra: dict | None = None) -> None:
    """Write a training-state file and its record (which says how far it got: step of steps).

    The new state and its record are written beside the old ones, and the record is moved into
    place first: a kill at any moment leaves a state with its own record (old or new), except
    between the two moves, where the mismatch is refused by name rather than resumed from."""
    new = path + ".new"
    checkpoint.save({"step": step, "optimizer": optimizer.state_dict(),
                     **{name: m.state_dict() for name, m in modules.items()}, **(extra or {})}, new)
    files.seal(new, stage="training state", step=step, steps=steps)
    os.replace(new + files.RECORD, path + files.RECORD)
    os.replace(new, path)


def load_state(path: str, modules: dict, optimizer) -> tuple[int, dict]:
    """Restore modules and optimizer from a training-state file; return (step, the whole dict).
    A file that is not what was written is refused (CheckpointError), never resumed from."""
    why = files.check(path)
    if why:
        raise checkpoint.CheckpointError(f"saved progress {path} {why}: delete it to start that stage over")
    state = checkpoint.load(path)
    for name, m in modules.items():
        checkpoint.load_state_dict(m, state[name], path)
    optimizer.load_state_dict(state["optimizer"])
    return state["step"], state


class Loop:
    """One training run: its modules and optimizer, how far it has got, and its history.

    `run(loss_at, after_step)` trains from the current step up to `until` (default: the end):

        loss_at(step)              -> (loss, info)   the minibatch loss of that step
        after_step(step, info, norms, lr)             bookkeeping once the step is applied
                                                      (norms: each module's gradient norm
                                                      before clipping)

    Around that it does what every loop here must: the learning-rate schedule, stopping on a
    non-finite loss, clipping (all modules together, or each apart), the progress bar, saving
    resumable state every `save_every` steps and on Ctrl-C (then raising `Interrupted`, never half-applying a step)."""

    def __init__(self, name: str, modules: dict, optimizer, steps: int, peak_lr: float, warmup: int,
                 grad_clip: float, history=None, state_path: str | None = None, save_every: int = 0,
                 dist: Dist = Dist(), clip_separately: bool = False):
        self.name, self.modules, self.optimizer = name, modules, optimizer
        self.steps, self.peak_lr, self.warmup, self.grad_clip = steps, peak_lr, warmup, grad_clip
        self.clip_separately = clip_separately
        self.clip_groups = clip_groups(modules, clip_separately)  # built once, not every step
        self.state_path, self.save_every, self.dist = state_path, save_every, dist
        self.step = 0
        self.history = history  # whatever the caller records in after_step; saved with the state

    def resume(self) -> bool:
        """Continue from the state file, if there is one; True when it did."""
        if not (self.state_path and os.path.exists(self.state_path)):
            return False
        self.step, state = load_state(self.state_path, self.modules, self.optimizer)
        self.history = state["history"]
        return True

    def save(self) -> None:
        save_state(self.state_path, self.step, self.steps, self.modules, self.optimizer, {"history": self.history})

    def run(self, loss_at, after_step, until: int | None = None) -> None:
        until = self.steps if until is None else min(until, self.steps)
        bar = tqdm(total=self.steps, initial=self.step, desc=self.name, unit="step", leave=False, disable=None)
        with SigintGuard() as guard:
            while self.step < until:
                lr = lr_at(self.step, self.steps, self.peak_lr, self.warmup)
                set_lr(self.optimizer, lr)
                loss, info = loss_at(self.step)
                check_finite(loss, self.step, self.name)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norms = {name: grad_norm(m.parameters()) for name, m in self.modules.items()}
                for params in self.clip_groups:
                    clip_grads(params, self.grad_clip)
                self.optimizer.step()
                self.step += 1
                after_step(self.step, info, norms, lr)
                bar.update(1)
                periodic = self.save_every and self.step % self.save_every == 0 and self.step < self.steps
                if self.state_path and self.dist.is_main and (guard.requested or periodic):
                    check_parameters(self.modules, self.step, self.name)
                    self.save()
                if guard.requested:
                    raise Interrupted(f"{self.name} interrupted at step {self.step}; state saved to {self.state_path}")
        bar.close()
        check_parameters(self.modules, self.step, self.name)
