"""Every flag of the three commands (train.py, python -m experiments, python -m rpo_mini.sample) is
checked before any work starts: a value out of range gives one message that names the flag, exit
code 2, no traceback and nothing written."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from rpo_mini import checkpoint, files, stages, training
from rpo_mini.config import build_parser, parse_config
from rpo_mini.runtime import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, **kw):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, **kw)


def numeric_flags():
    """(flag, type) of every int and float option of train.py, read from its parser."""
    return [(a.option_strings[0], a.type) for a in build_parser()._actions
            if a.option_strings and a.type in (int, float)]


def test_the_walk_reaches_every_numeric_setting():
    flags = {f for f, _ in numeric_flags()}
    assert {"--vocab_size", "--threads", "--pretrain_lr", "--eval_prompts", "--val_fraction", "--lr", "--tau",
            "--k", "--n_embd", "--dropout", "--seed", "--warmup"} <= flags and len(flags) >= 35


@pytest.mark.parametrize("flag, kind", numeric_flags())
def test_every_numeric_flag_refuses_a_negative_value_and_nan_naming_itself(flag, kind):
    for value in ["-1"] + (["nan", "inf"] if kind is float else []):
        with pytest.raises(UserError) as e:
            parse_config(["--quick", flag, value])
        assert str(e.value).startswith(flag + " "), (flag, value, str(e.value))


@pytest.mark.parametrize("args, message", [
    (["--vocab_size", "10"], "--vocab_size must be at least 257"),
    (["--eval_prompts", "-1"], "--eval_prompts must be at least 0"),
    (["--val_fraction", "1.5"], "--val_fraction must be a fraction strictly between 0 and 1"),
    (["--val_fraction", "0.5", "--test_fraction", "0.5"], "leave no training prompts"),
    (["--n_embd", "30", "--n_head", "4"], "--n_embd 30 must divide by --n_head 4"),
    (["--threads", "-1"], "--threads must be at least 0"),
])
def test_train_refuses_before_any_work(args, message, tmp_path):
    r = run("train.py", "--quick", "--out", str(tmp_path / "out"), *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "out").exists()  # refused before the output folder was made


@pytest.mark.parametrize("args, message", [
    (["--seeds", "x"], "--seeds must be comma-separated integers"),
    (["--seeds", "0,0"], "--seeds repeats a seed"),
    (["--seeds", "-1"], "--seeds must be integers ≥ 0"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--device", "quantum"], "'quantum' is not a device"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "--device cuda: CUDA is not available")]))
def test_experiments_refuse_bad_flags_before_any_work(args, message, tmp_path):
    r = run("-m", "experiments", "value", "--quick", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "o"),
            *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "o").exists()


def test_a_quick_experiment_leaves_the_committed_findings_untouched(tmp_path):
    before = {p: p.read_bytes() for p in (pathlib.Path(ROOT) / "findings").iterdir()}
    r = run("-m", "experiments", "value", "--quick", "--device", "cpu", "--cache", str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "value: writing to out/findings-scratch/, not findings/ (--quick" in r.stdout
    after = {p: p.read_bytes() for p in before}
    assert after == before and len(list((pathlib.Path(ROOT) / "findings").iterdir())) == len(before)
    saved = json.loads(open(os.path.join(ROOT, "out", "findings-scratch", "value.json")).read())
    assert saved["quick"] is True


def test_only_a_full_run_of_the_committed_design_writes_findings():
    from experiments.__main__ import FINDINGS, SCRATCH, destination

    committed = json.loads(open(os.path.join(ROOT, "findings", "partition.json")).read())
    design = committed["seeds"], bool(committed.get("fixed_data"))
    assert destination("partition", False, *design) == (FINDINGS, None)
    assert destination("partition", True, *design)[0] == SCRATCH
    assert destination("partition", False, design[0][:-1], design[1])[0] == SCRATCH  # fewer seeds
    assert destination("partition", False, design[0], not design[1])[0] == SCRATCH   # another data design
    assert destination("no-such-experiment", False, [0, 1], False) == (FINDINGS, None)  # nothing committed yet


# --- python -m rpo_mini.sample -------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_checkpoint(tiny, tmp_path_factory):
    st, base, _ = tiny
    path = tmp_path_factory.mktemp("sample") / "base.pt"
    checkpoint.save(stages.checkpoint_dict(base, "base", st.tok, st.world), str(path))
    return path


def sample(*args):
    return run("-m", "rpo_mini.sample", *args)


@pytest.mark.parametrize("args, message", [
    (["-n", "0"], "-n must be at least 1, got 0"),
    (["--max_new_tokens", "0"], "--max_new_tokens must be at least 1, got 0"),
    (["--temperature", "nan"], "--temperature must be a positive number"),
    (["--top_k", "-1"], "--top_k must be at least 0"),
    (["--prompt", ""], "--prompt is empty"),
])
def test_sample_refuses_bad_flags(base_checkpoint, args, message):
    r = sample("--ckpt", str(base_checkpoint), *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_sample_tells_a_file_that_is_not_a_checkpoint_from_a_damaged_one(base_checkpoint, tmp_path):
    report = tmp_path / "metrics.json"
    report.write_text(json.dumps({"policies": {}}))
    r = sample("--ckpt", str(report))
    assert r.returncode == 2 and "is not a checkpoint but a text file" in r.stderr and "delete" not in r.stderr
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(base_checkpoint.read_bytes())
    files.seal(str(damaged))
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte inside the weights: the archive itself stays valid
    damaged.write_bytes(bytes(data))
    r = sample("--ckpt", str(damaged))
    assert r.returncode == 2 and "is damaged" in r.stderr and "Traceback" not in r.stderr


def test_sample_refuses_another_tokenizer(base_checkpoint, tmp_path):
    from rpo_mini.tokenizer import save_ranks, train_bpe

    other = tmp_path / "other.tiktoken"
    save_ranks(train_bpe(["1+2=3", "4+5=9", "10+20=30"], 300), str(other))
    r = sample("--ckpt", str(base_checkpoint), "--tokenizer", str(other))
    assert r.returncode == 2 and "is not the one this model was trained with" in r.stderr
    r = sample("--ckpt", str(base_checkpoint), "-n", "1", "--max_new_tokens", "3")
    assert r.returncode == 0, r.stderr[-2000:]


# --- a NaN made by the last update, and saved progress ------------------------------------------

def test_a_nan_made_by_the_last_update_stops_before_the_policy_is_kept(tiny, tmp_path):
    st, _, _ = tiny
    ctx = dataclasses.replace(st.ctx, out=str(tmp_path))
    cfg = dataclasses.replace(st.cfg.align, steps=1, warmup=0, lr=1e9)
    with pytest.raises(FloatingPointError, match="after its last update"):
        stages.policy(ctx, "rpo", 0, st.base_artifact, st.data_artifact, cfg, st.tok, st.world)
    assert not os.path.exists(tmp_path / "checkpoints") or not os.listdir(tmp_path / "checkpoints")


def test_a_rerun_without_resume_says_how_far_the_saved_progress_got(tiny, tmp_path):
    st, _, _ = tiny
    said = []
    ctx = dataclasses.replace(st.ctx, out=str(tmp_path), log=lambda *a, **k: said.append(" ".join(map(str, a))))
    cfg = dataclasses.replace(st.cfg.align, steps=2)
    key = stages.policy_key(st.data_artifact, "rpo", 0, cfg)
    state = tmp_path / "checkpoints" / f"rpo-s0-{key}.pt.state"
    os.makedirs(state.parent, exist_ok=True)
    model = torch.nn.Linear(1, 1)
    training.save_state(str(state), 1, 2, {"policy": model}, torch.optim.SGD(model.parameters(), lr=0.1),
                        {"history": {}})
    stages.policy(ctx, "rpo", 0, st.base_artifact, st.data_artifact, cfg, st.tok, st.world)
    assert any(f"{state} holds saved progress (at step 1 of 2)" in s and "--resume" in s for s in said), said
    assert not state.exists()  # trained through and tidied up


def test_every_range_accepts_its_bound_and_refuses_just_past_it():
    """The edges of config.CHECKS, read from each rule's own words: "at least n" accepts n and
    refuses n − 1; "a positive number" refuses 0 and accepts a tiny number."""
    import re

    from rpo_mini.config import CHECKS

    edges = 0
    for (section, name), (ok, must) in CHECKS.items():
        if m := re.fullmatch(r"at least (\d+)", must):
            n = int(m.group(1))
            assert ok(n) and not ok(n - 1), (section, name, must)
            edges += 1
        elif must == "a positive number":
            assert ok(1e-12) and not ok(0.0) and not ok(-1e-12), (section, name)
            edges += 1
    assert edges >= 30


def test_sample_refuses_a_checkpoint_that_holds_no_policy(tmp_path):
    """A value network's checkpoint is a complete archive, but not a model sample can load."""
    path = tmp_path / "value.pt"
    checkpoint.save({"kind": "value", "model": {"w": torch.zeros(2)}}, str(path))
    r = sample("--ckpt", str(path))
    assert r.returncode == 2 and "not a base or policy checkpoint" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("flag", ["--n_prompts", "--top_k", "--grad_clip", "--eval_prompts", "--threads", "--seed",
                                  "--warmup", "--pretrain_steps", "--prior_strength", "--dropout", "--wrong_fraction"])
def test_zero_is_a_valid_setting_where_it_means_all_off_or_default(flag):
    """0 = all prompts, no top-k, no clipping, torch's thread count, seed 0, no warm-up, no
    pretraining, no prior, no dropout, no wrong answers: each of these must parse."""
    cfg = parse_config(["--quick", flag, "0"])
    dest = next(a.dest for a in build_parser()._actions if a.option_strings and a.option_strings[0] == flag)
    section, name = dest.split(".")
    assert getattr(getattr(cfg, section), name) == 0
