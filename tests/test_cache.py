"""The stage cache: every cached file is checked against the record written with it, so a file cut
short, changed or emptied is never used; it is named and made again, and the run's numbers do not
move."""

import json
import os
import random
import shutil

import pytest

from rpo_mini import files, training
from rpo_mini.checkpoint import CheckpointError

from tests.test_reliability import SMALL, stable, train

# Every kind of file the stages cache, found in a finished run by its pattern.
KINDS = {"tokenizer": "data/tokenizer-*.tiktoken", "dataset": "data/dataset-*.jsonl",
         "base model": "checkpoints/base-*.pt", "policy": "checkpoints/rpo-s0-*[0-9a-f].pt",
         "history": "checkpoints/dro-s0-*.json", "value network": "checkpoints/dro-s0-*.value.pt",
         "evaluation": "eval/rpo-s0-*.json", "reference evaluation": "eval/reference-s0-*.json"}


def cut_at_a_line(path):
    """Keep the first tenth of the lines (a binary file: the first half of its bytes)."""
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:max(1, len(lines) // 10)]) if len(lines) > 20 else data[:len(data) // 2])


def random_bytes_inside(path):
    """Overwrite 16 bytes in the middle: the size and, for a checkpoint, its zip directory stay valid."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 16] = bytes(random.Random(0).randrange(256) for _ in range(16))
    path.write_bytes(bytes(data))


def emptied(path):
    path.write_bytes(b"")


CORRUPTIONS = [cut_at_a_line, random_bytes_inside, emptied]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cache-ref")
    r = train(*SMALL, "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _one(out, pattern):
    found = [p for p in out.glob(pattern) if not p.name.endswith(files.RECORD)]
    assert len(found) == 1, (pattern, found)
    return found[0]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_every_cached_file_that_changed_is_named_and_made_again(finished_run, tmp_path, corrupt):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    damaged = {kind: _one(out, pattern) for kind, pattern in KINDS.items()}
    for kind, path in damaged.items():
        assert files.check(str(path)) is None, kind  # as written
        corrupt(path)
        assert files.check(str(path)) is not None, kind  # any change is seen
    r = train(*SMALL, "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    for kind, path in damaged.items():
        assert f"cache: {path} " in r.stdout, kind  # named, one line each
        assert files.check(str(path)) is None, kind  # made again, with a new record
    a = json.loads((finished_run / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert stable(a) == stable(b)  # made again exactly as before


def test_a_file_without_its_record_is_not_trusted(finished_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    dataset = _one(out, KINDS["dataset"])
    lines = dataset.read_text().splitlines(keepends=True)
    dataset.write_text("".join(lines[:20]))  # a smaller dataset, put there by hand...
    os.remove(str(dataset) + files.RECORD)   # ...with no record
    r = train(*SMALL, "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"cache: {dataset} has no record" in r.stdout
    assert len(dataset.read_text().splitlines()) == len(lines)


def test_check_compares_size_and_digest(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("one\ntwo\n")
    assert "no record" in files.check(str(p))
    files.seal(str(p), stage="test")
    assert files.check(str(p)) is None and files.record(str(p))["stage"] == "test"
    p.write_text("one\ntwx\n")  # same size, other bytes
    assert "digest" in files.check(str(p))
    p.write_text("one\n")
    assert "4 bytes where 8 were written" in files.check(str(p))
    (tmp_path / ("a.txt" + files.RECORD)).write_text("{not json")
    assert files.check(str(p)) == "has a damaged record"


def test_saved_progress_that_changed_is_refused_not_resumed(tmp_path):
    import torch

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    path = str(tmp_path / "x.state")
    training.save_state(path, 3, 10, {"policy": model}, opt, {"history": []})
    assert files.record(path)["step"] == 3 and files.record(path)["steps"] == 10
    assert training.load_state(path, {"policy": model}, opt)[0] == 3
    random_bytes_inside(tmp_path / "x.state")
    with pytest.raises(CheckpointError, match="saved progress .* delete it"):
        training.load_state(path, {"policy": model}, opt)
