"""Reliability: clear errors for bad input, lossless resume, safe loading, reproducibility, torchrun."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from rpo_mini import checkpoint, losses, stages
from rpo_mini.align import align
from rpo_mini.data import Dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small but complete run: every stage, two objectives, about 15 s on a 2-core CPU.
SMALL = ["--quick", "--device", "cpu", "--pretrain_steps", "60", "--n_prompts", "24", "--objectives", "rpo,dro",
         "--steps", "30", "--checkpoint_every", "5", "--eval_every", "10"]
VOLATILE = ("seconds", "timings", "checkpoint", "checkpoints", "artifacts", "config", "plots")


def train(*args, **kw):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], capture_output=True,
                          text=True, timeout=1800, **kw)


def stable(metrics: dict) -> dict:
    """metrics.json without what legitimately differs between runs (times, paths)."""
    drop = lambda d: {k: drop(v) if isinstance(v, dict) else v for k, v in d.items()
                      if not any(k.startswith(x) for x in VOLATILE)}
    return drop(metrics)


# --- bad input: one clear message, a non-zero exit, no traceback ---------------------------------

@pytest.mark.parametrize("args, message", [
    (["--world", "chess"], "invalid choice: 'chess'"),
    (["--objectives", "rpo,ppo"], "--objectives: unknown ['ppo']"),
    (["--estimator", "median"], "invalid choice: 'median'"),
    (["--device", "quantum"], "'quantum' is not a device"),
    (["--tau", "0"], "--tau must be a positive number, got 0.0"),
    (["--tau", "-1"], "--tau must be a positive number, got -1.0"),
    (["--beta", "nan"], "--beta must be a positive number"),
    (["--seeds", "0,one"], "--seeds must be comma-separated integers"),
    (["--k", "1"], "--k 1 gives every prompt a lone response"),
    (["--seeds", "0,0"], "--seeds repeats a seed"),
    (["--seeds", ","], "--seeds is empty"),
    (["--objectives", "rpo,rpo"], "--objectives repeats an objective"),
    (["--temperature", "-1"], "--temperature must be a positive number, got -1.0"),
    (["--temperature", "0"], "--temperature must be a positive number, got 0.0"),
    (["--top_k", "-3"], "--top_k must be at least 0, got -3"),
    (["--reward", "charm"], "--reward 'charm' is not a reward of the reviews world"),
])
def test_bad_flags_fail_early_with_one_clear_message(args, message, tmp_path):
    r = train("--quick", "--out", str(tmp_path / "out"), *args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "checkpoints").exists() or not os.listdir(tmp_path / "out" / "checkpoints")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(tmp_path):
    r = train("--quick", "--out", str(tmp_path), "--device", "cuda")
    assert r.returncode == 2 and "CUDA is not available" in r.stderr and "Traceback" not in r.stderr


def test_output_folder_that_is_not_writable(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    r = train("--quick", "--out", str(blocker / "out"))
    assert r.returncode == 2 and "is not a writable folder" in r.stderr and "Traceback" not in r.stderr


def _record(**kw):
    r = {"prompt_id": 0, "prompt": "the soup at the harbor cafe was", "response": " good .",
         "prompt_tokens": [1, 2], "response_tokens": [3, 4], "reward": 1.0, "rewards": {}, "ref_logp": -1.0,
         "fluent": True}
    return r | kw


@pytest.mark.parametrize("bad, message", [
    ({"reward": None}, "reward None is not a finite number"),
    ({"reward": float("nan")}, "reward nan is not a finite number"),
    ({"reward": float("-inf")}, "reward -inf is not a finite number"),
    ({"response_tokens": []}, "empty response"),
    ({"prompt_tokens": list(range(500))}, "longer than the model's context window"),
])
def test_a_bad_dataset_file_is_refused_before_training(tmp_path, bad, message):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(_record()) + "\n" + json.dumps(_record(**bad)) + "\n")
    r = train("--quick", "--out", str(tmp_path / "out"), "--dataset", str(path))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "mine.jsonl:2: " in r.stderr and message in r.stderr and "Traceback" not in r.stderr
    assert not os.listdir(tmp_path / "out" / "checkpoints")  # refused before pretraining


def test_a_dataset_file_with_a_missing_field(tmp_path):
    rec = _record()
    del rec["prompt_tokens"]
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    r = train("--quick", "--out", str(tmp_path / "out"), "--dataset", str(path))
    assert r.returncode == 2 and "mine.jsonl:1: missing field(s) prompt_tokens" in r.stderr


# --- checkpoints: weights only, clear errors --------------------------------------------------

class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Evil.marker}",))


def test_a_crafted_pickle_is_refused_without_running_it(tmp_path):
    Evil.marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="refused unread"):
        checkpoint.load(str(path))
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(str(tmp_path / "evil.pkl"))
    assert not os.path.exists(Evil.marker)


def test_truncated_corrupted_and_mismatched_checkpoints_give_clear_messages(tiny, tmp_path):
    st, base, _ = tiny
    good = tmp_path / "base.pt"
    checkpoint.save(stages.checkpoint_dict(base, "base", st.tok, st.world), str(good))
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:len(data) // 2])
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 100)
    for name in ("cut.pt", "junk.pt"):
        with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupted"):
            checkpoint.load(str(tmp_path / name))
    # a checkpoint of another model shape, through the sampling CLI
    ck = checkpoint.load(str(good))
    ck["model_config"]["n_embd"] = 2 * ck["model_config"]["n_embd"]
    checkpoint.save(ck, str(tmp_path / "other.pt"))
    r = subprocess.run([sys.executable, "-m", "rpo_mini.sample", "--ckpt", str(tmp_path / "other.pt")],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "different model configuration" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "rpo_mini.sample", "--ckpt", str(tmp_path / "cut.pt")],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "truncated or corrupted" in r.stderr
    r = subprocess.run([sys.executable, "-m", "rpo_mini.sample", "--ckpt", str(good), "-n", "2"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and r.stdout.count("fluent") >= 2


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "c.pt")
    checkpoint.save({"x": torch.ones(3)}, path)

    def boom(obj, f, *a, **k):
        fh = open(f, "wb") if isinstance(f, str) else f  # a path or a file: half of it gets written
        fh.write(b"partial")
        fh.flush()
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({"x": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(path)["x"], torch.ones(3))


# --- numerical robustness ----------------------------------------------------------------------

def test_a_nan_loss_stops_the_run_naming_step_and_objective(tiny, monkeypatch):
    st, base, data = tiny
    real, calls = losses.rpo_loss, []

    def flaky(*a, **k):
        calls.append(1)
        loss, m = real(*a, **k)
        return (loss * float("nan"), m) if len(calls) == 3 else (loss, m)

    monkeypatch.setattr(losses, "rpo_loss", flaky)
    with pytest.raises(FloatingPointError, match=r"rpo: the loss became nan at step 2"):
        align("rpo", base, data, st.cfg.align, lr=1e-3, tau=1.0, seed=0, eot=st.enc.eot_token)


def _with_rewards(data, rewards):
    return Dataset(data.prompt_tokens, data.response_tokens, data.prompt_ids,
                   torch.as_tensor(rewards, dtype=torch.float64), data.records)


@pytest.mark.parametrize("tau, scale, zscore", [(1e-3, 1.0, True), (1e3, 1.0, True), (1.0, 1e4, False)])
def test_extreme_but_valid_settings_train_finitely(tiny, tau, scale, zscore):
    st, base, data = tiny
    import dataclasses
    cfg = dataclasses.replace(st.cfg.align, rewards_zscore=zscore)
    d = _with_rewards(data, data.rewards * scale)
    for obj in ("rpo", "dro"):
        policy, _, hist = align(obj, base, d, cfg, lr=1e-4, tau=tau, seed=0, eot=st.enc.eot_token)
        assert all(torch.isfinite(p).all() for p in policy.parameters())
        assert all(map(lambda r: r["loss"] == r["loss"] and abs(r["loss"]) < float("inf"), hist["train"]))


def test_all_rewards_of_a_prompt_equal(tiny):
    st, base, data = tiny
    same = torch.tensor([float(i) for i in data.prompt_ids.tolist()])  # constant within each prompt
    d = _with_rewards(data, same)
    policy, _, hist = align("rpo", base, d, st.cfg.align, lr=1e-4, tau=1.0, seed=0, eot=st.enc.eot_token)
    # every RPO target is 0 (r/τ − log Ẑ with Ẑ = exp(r/τ)): a zero-signal, finite run
    assert all(abs(r["target"]) < 1e-5 for r in hist["train"])


# --- reproducibility, kill-and-resume, Ctrl-C ----------------------------------------------------

@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    r = train(*SMALL, "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _dataset_file(out):
    return next((out / "data").glob("dataset-*.jsonl"))


def _copy_upstream(src, dst):
    """The tokenizer, base model and dataset of a finished run, so a new run only aligns."""
    for sub in ("data", "checkpoints"):
        os.makedirs(dst / sub, exist_ok=True)
    for f in (src / "data").iterdir():
        shutil.copy(f, dst / "data" / f.name)
    for f in (src / "checkpoints").glob("base-*"):
        shutil.copy(f, dst / "checkpoints" / f.name)


def test_same_seed_same_dataset_and_metrics_and_other_seeds_differ(reference_run, tmp_path):
    r = train(*SMALL, "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert _dataset_file(tmp_path).read_bytes() == _dataset_file(reference_run).read_bytes()
    a = json.loads((reference_run / "metrics.json").read_text())
    b = json.loads((tmp_path / "metrics.json").read_text())
    assert stable(a) == stable(b)
    other = tmp_path / "other"
    _copy_upstream(reference_run, other)
    r = train(*SMALL, "--out", str(other), "--seeds", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    c = json.loads((other / "metrics.json").read_text())
    assert c["policies"]["rpo"]["reward"] != a["policies"]["rpo"]["reward"]


def _start(out, *extra):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *SMALL, "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_state(out, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if list((out / "checkpoints").glob("*.state")):
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    raise TimeoutError("no training state appeared")


def test_killed_mid_alignment_then_resumed_gives_the_uninterrupted_metrics(reference_run, tmp_path):
    _copy_upstream(reference_run, tmp_path)
    proc = _start(tmp_path)
    _wait_for_state(tmp_path, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "metrics.json").exists()
    r = train(*SMALL, "--out", str(tmp_path), "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed at step" in r.stdout
    a = json.loads((reference_run / "metrics.json").read_text())
    b = json.loads((tmp_path / "metrics.json").read_text())
    assert stable(a) == stable(b)


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(reference_run, tmp_path):
    _copy_upstream(reference_run, tmp_path)
    proc = _start(tmp_path)
    _wait_for_state(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "interrupted at step" in err and "--resume" in err and "Traceback" not in err
    states = list((tmp_path / "checkpoints").glob("*.state"))
    assert states and checkpoint.load(str(states[0]))["step"] > 0


# --- torchrun ------------------------------------------------------------------------------------

def test_torchrun_two_cpu_processes_match_a_single_process_run(reference_run, tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        os.path.join(ROOT, "train.py"), *SMALL, "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.count("rpo (seed 0):") == 1  # only rank 0 prints
    multi = json.loads((tmp_path / "metrics.json").read_text())
    single = json.loads((reference_run / "metrics.json").read_text())
    assert "2 processes" in multi["device"]
    for name in ("reference", "rpo", "dro"):
        for key in ("reward", "gold", "fluency"):
            assert abs(multi["policies"][name][key] - single["policies"][name][key]) < 0.25, (name, key)
