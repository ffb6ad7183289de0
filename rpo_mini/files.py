"""Files that are never half-written, and never trusted unchecked.

Every artifact is written to a temporary file, then renamed: a kill at any moment leaves either
the old file or the new one, never a torn one. The temporary name carries the process id, so
parallel writers (experiment workers) never share it. JSON is strict: NaN and ±inf are written
as null, which every JSON reader accepts.

A cached artifact also gets a record next to it, `<file>.record.json`: the SHA-256 digest and
size of its content and what made it (`seal`). Before a cached file is used, `check` compares the
file with its record. A file cut short, a byte changed, a file emptied, or one whose record is
missing (written by hand, or cut off between the file and its record) fails the check, and the
stage that made it makes it again: a cache that can only serve what it wrote itself.
"""

import contextlib
import hashlib
import json
import math
import os

RECORD = ".record.json"  # the suffix of a file's record


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


def digest(path: str) -> str:
    """SHA-256 of a file's content, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def seal(path: str, **made_by) -> None:
    """Record `path`'s digest and size, and what made it (e.g. stage="dataset", key="…")."""
    write_json(path + RECORD, {"sha256": digest(path), "bytes": os.path.getsize(path), **made_by})


def record(path: str) -> dict | None:
    """A file's record, or None when it has none that can be read."""
    try:
        with open(path + RECORD) as f:
            r = json.load(f)
    except (OSError, ValueError):
        return None
    return r if isinstance(r, dict) and isinstance(r.get("sha256"), str) and isinstance(r.get("bytes"), int) else None


def check(path: str) -> str | None:
    """None when `path` is exactly what its record says was written; else why not, as a phrase
    that completes "<path> …"."""
    r = record(path)
    if r is None:
        return ("has a damaged record" if os.path.exists(path + RECORD) else
                "has no record of what was written (made elsewhere, or cut off before its record)")
    if os.path.getsize(path) != r["bytes"]:
        return f"is {os.path.getsize(path)} bytes where {r['bytes']} were written"
    if digest(path) != r["sha256"]:
        return "does not match the digest recorded when it was written"
    return None


def remove(path: str) -> None:
    """Remove a file and its record (either may be missing)."""
    for p in (path, path + RECORD):
        if os.path.exists(p):
            os.remove(p)
