"""Files that are never half-written: every artifact is written to a temporary file, then renamed.

A kill at any moment leaves either the old file or the new one, never a torn one. The temporary
name carries the process id, so parallel writers (experiment workers) never share it. JSON is
strict: NaN and ±inf are written as null, which every JSON reader accepts.
"""

import contextlib
import json
import math
import os


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w"):
    """`open(path, mode)` for writing, replaced into place only when the block completes."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def strict(obj):
    """Plain JSON values: tuples become lists, NaN and ±inf become None."""
    if isinstance(obj, dict):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str, obj) -> None:
    with atomic_open(path) as f:
        json.dump(strict(obj), f, indent=1, default=float, allow_nan=False)
