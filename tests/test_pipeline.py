"""The pipeline: train.py end to end, the stage cache, what alignment changes, the partition."""

import json
import os
import subprocess
import sys

import pytest
import torch

from rpo_mini import align as align_mod
from rpo_mini import losses
from rpo_mini.align import align, prepare
from rpo_mini.sampling import response_logprobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"


def train(*args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=1800)


def test_help_works():
    r = train("--help")
    assert r.returncode == 0 and "--objectives" in r.stdout and "--estimator" in r.stdout


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    r = train("--quick", "--out", str(out), "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_quick_run_writes_every_policy_metric_and_plot(quick_run):
    out, r = quick_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["policies"]) == {"reference", "sft", "kto", "dro", "rpo"}
    for name, row in metrics["policies"].items():
        for key in ("reward", "reward_ci", "gold", "win_rate", "kl", "distinct_1", "distinct_2",
                    "toxicity_rate", "fluency", "seconds"):
            assert key in row, (name, key)
    for rel in metrics["plots"].values():
        assert (out / rel).read_bytes()[:8] == PNG
    assert (out / "report.md").read_text().count("![") == 3
    assert "reference" in r.stdout and "rpo" in r.stdout  # the table is printed
    # the aligned RPO policy beats the reference on this run
    assert metrics["policies"]["rpo"]["reward"] > metrics["policies"]["reference"]["reward"]


def test_cache_reuses_the_base_model_and_rebuilds_when_pretraining_changes(quick_run):
    out, _ = quick_run
    base = [f for f in os.listdir(out / "checkpoints") if f.startswith("base-") and f.endswith(".pt")]
    mtime = os.path.getmtime(out / "checkpoints" / base[0])
    r = train("--quick", "--out", str(out), "--device", "cpu", "--objectives", "rpo")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "base model: cached" in r.stdout and "rpo (seed 0): cached" in r.stdout
    assert os.path.getmtime(out / "checkpoints" / base[0]) == mtime
    r = train("--quick", "--out", str(out), "--device", "cpu", "--objectives", "rpo", "--pretrain_steps", "20")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "base model: pretrained 20 steps" in r.stdout
    assert len([f for f in os.listdir(out / "checkpoints") if f.startswith("base-") and f.endswith(".pt")]) == 2


@pytest.mark.parametrize("objective", ["sft", "kto", "dro", "rpo"])
def test_alignment_changes_every_policy_parameter_and_never_the_reference(tiny, objective):
    st, base, data = tiny
    before = {k: v.clone() for k, v in base.state_dict().items()}
    policy, value, _ = align(objective, base, data, st.cfg.align, lr=1e-3, tau=1.0, seed=0,
                             eot=st.enc.eot_token)
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k]), f"reference parameter {k} changed"
    for k, v in policy.state_dict().items():
        if k == "wpe.weight":  # rows past the longest sequence never receive gradient
            assert not torch.equal(v, before[k])
            continue
        assert not torch.equal(v, before[k]), f"policy parameter {k} did not change"
    if objective == "dro":
        fresh = type(value)(base.config)
        fresh.trunk.load_state_dict(base.state_dict())
        for (k, v), (_, v0) in zip(value.state_dict().items(), fresh.state_dict().items()):
            if k != "trunk.wpe.weight":
                assert not torch.equal(v, v0), f"value parameter {k} did not change"
    else:
        assert value is None


def test_rpo_partition_is_computed_once_and_equals_log_partition_on_the_dataset(tiny, monkeypatch):
    st, base, data = tiny
    calls = []
    real = losses.log_partition

    def spy(*args, **kw):
        calls.append((args, kw))
        return real(*args, **kw)

    monkeypatch.setattr(losses, "log_partition", spy)
    captured = {}
    real_prepare = align_mod.prepare
    monkeypatch.setattr(align_mod, "prepare", lambda *a, **k: captured.setdefault("prep", real_prepare(*a, **k)))
    align("rpo", base, data, st.cfg.align, lr=1e-3, tau=0.5, seed=0, eot=st.enc.eot_token)
    assert len(calls) == 1
    # independent recomputation from the dataset itself
    r = data.rewards
    z = (r - r.mean()) / r.std()
    expected = real(z, data.prompt_ids, 0.5, "mean")
    assert torch.allclose(captured["prep"]["log_z"].double(), expected, atol=1e-5)


def test_prepare_uses_the_reference_logprobs_for_the_ref_estimator(tiny):
    st, base, data = tiny
    import dataclasses
    cfg = dataclasses.replace(st.cfg.align, estimator="ref", rewards_zscore=False)
    ref_logps = response_logprobs(base, data.prompt_tokens, data.response_tokens, st.enc.eot_token)
    prep = prepare("rpo", data, ref_logps, cfg, tau=2.0)
    i = 0
    group = [j for j in range(len(data)) if data.prompt_ids[j] == data.prompt_ids[i]]
    by_hand = torch.logsumexp(torch.tensor([ref_logps[j].item() + data.rewards[j].item() / 2.0 for j in group],
                                           dtype=torch.float64), 0)
    assert abs(prep["log_z"][i].item() - by_hand.item()) < 1e-4
