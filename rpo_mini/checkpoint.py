"""Checkpoints: atomic writes, weights-only loads, clear errors.

A checkpoint is a dict of tensors and plain values (numbers, strings, lists, dicts), so it
loads with `torch.load(..., weights_only=True)`: a crafted pickle is refused, never run.
"""

import codecs
import os
import pickle
import zipfile

import torch

from . import files
from .files import atomic_open
from .runtime import UserError


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message says which file and why."""


def save(obj: dict, path: str) -> None:
    """Write to a temporary file, then rename: a kill at any moment leaves the old file intact."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def load(path: str, map_location="cpu") -> dict:
    """The checkpoint at `path`. Refused with a message that says which: a file that is not there,
    one that is not a checkpoint at all (text: a report, a JSON file), and a damaged one (not
    what its record says was written, or not a complete archive)."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if files.record(path) is not None and (why := files.check(path)):
        raise CheckpointError(f"checkpoint {path} is damaged: it {why}; delete it and rerun the stage that "
                              f"makes it")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut one loses its directory
        if _is_text(path):
            raise CheckpointError(f"{path} is not a checkpoint but a text file (a report, JSON or log?): pass a "
                                  f".pt file that train.py wrote under OUT/checkpoints")
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted (not a complete checkpoint "
                              f"archive); delete it and rerun the stage that makes it")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"checkpoint {path} holds more than tensors and plain values and was "
                              f"refused unread (weights-only load): {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'no detail'}); delete it "
                              f"and rerun the stage that makes it") from None


def _is_text(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    try:  # incremental: a character cut at the 4096th byte is not an error
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return bool(head) and b"\0" not in head


def load_state_dict(module: torch.nn.Module, state: dict, path: str = "checkpoint") -> None:
    """`module.load_state_dict`, with a readable message when the shapes or names differ."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [
            f"missing {missing[:3]}" if missing else "",
            f"unexpected {unexpected[:3]}" if unexpected else "",
            f"shape (file vs model) {wrong[:3]}" if wrong else ""]))
        raise CheckpointError(f"{path} was made for a different model configuration ({detail})")
    module.load_state_dict(state)
