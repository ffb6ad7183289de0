"""Device, precision, seeding, (under torchrun) the process group, and the user-error type."""

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch


class UserError(ValueError):
    """Bad input from the user (flags, files): train.py prints the message, no traceback, exit 2."""


def pick_device(name: str = "auto") -> torch.device:
    """"auto" picks cuda → mps → cpu; an explicit device that is not available is an error."""
    if torch.cuda.is_available():
        # cuDNN attention builds a plan per new tensor shape (~0.15 s each); our shapes change
        # with every padded batch and every sampling step (measured: 45 s → 31 s pipeline, H200).
        torch.backends.cuda.enable_cudnn_sdp(False)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (use --device auto or cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps: MPS is not available on this machine (use --device auto or cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None


def pick_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """bf16 autocast on CUDA GPUs that support it, fp32 elsewhere (CPU bf16 is slow and lossy)."""
    if name == "auto":
        name = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise UserError(f"--dtype {name!r} is unknown; use one of auto, {', '.join(dtypes)}")
    return dtypes[name]


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for the forward pass; a no-op for float32. Weights stay float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Dist:
    """Where this process stands in a torchrun job (rank 0 of 1 when run plainly)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch (every world_size-th sample)."""
        return indices[self.rank::self.world_size]

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


def setup_distributed(device_name: str) -> Dist:
    """Join the process group torchrun set up: nccl on CUDA, gloo on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    use_cuda = torch.cuda.is_available() and not device_name.startswith(("cpu", "mps"))
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    d = Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if use_cuda:
        torch.cuda.set_device(d.local_rank)
    else:  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", d.world_size))))
    return d
