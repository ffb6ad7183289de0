"""The benchmark scripts run, at toy sizes, and report sane numbers (never a speed assertion)."""

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import common  # noqa: E402
import partition  # noqa: E402
import pipeline  # noqa: E402
import sampling  # noqa: E402
import throughput  # noqa: E402


def test_partition_vectorised_equals_loop_and_writes_json(tmp_path):
    out = partition.main(["--device", "cpu", "--sizes", "1000,4000", "--loop-max", "1000", "--repeats", "1",
                          "--json", str(tmp_path / "p.json")])
    small, big = out["rows"]
    assert small["max_abs_diff"] <= 1e-9 and small["speedup"] > 0 and small["loop_ms"] > 0
    assert "loop_ms" not in big and big["vectorised_ms"] > 0  # above --loop-max the loop is skipped
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["machine"]["device"] == "cpu" and len(saved["rows"]) == 2


def test_partition_loop_matches_log_partition_on_uneven_groups():
    from rpo_mini.losses import log_partition

    ids = torch.tensor([3, 1, 3, 3, 7, 1, 9])
    r = torch.tensor([0.5, -2.0, 1e4, 3.0, 0.0, 1.0, -1.0], dtype=torch.float64)
    assert torch.allclose(partition.log_partition_loop(r, ids, 0.3), log_partition(r, ids, 0.3), rtol=0, atol=1e-9)


def test_sampling_generates_full_length_with_and_without_cache():
    out = sampling.main(["--device", "cpu", "--batch", "2", "--lengths", "4,8", "--repeats", "1", "--warmup", "0",
                         "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--vocab", "256"])
    assert [r["new_tokens"] for r in out["rows"]] == [4, 8]
    for r in out["rows"]:
        assert r["cache_tok_s"] > 0 and r["recompute_tok_s"] > 0 and r["speedup"] > 0


def test_throughput_reports_tokens_and_flops(monkeypatch):
    monkeypatch.setitem(common._gemm_cache, (torch.float32, 2048), 1e11)  # skip the GEMM probe
    out = throughput.main(["--device", "cpu", "--configs", "default", "--variants", "eager:float32,eager:tf32",
                           "--batch", "2", "--steps", "1", "--repeats", "1", "--warmup", "0"])
    ok, cuda_only = out["rows"]
    assert ok["tokens_per_s"] > 0 and ok["tflops"] > 0 and ok["mfu"] is None  # no CPU peak: MFU n/a
    assert out["machine"]["gemm_tflops"] == pytest.approx(0.1)
    assert ok["params_m"] > 0.5 and ok["seq_len"] == 64
    assert "CUDA-only" in cuda_only["error"]


def test_throughput_rejects_a_bad_variant():
    with pytest.raises(SystemExit):
        throughput.parse_variant("eager:fp8")


def test_gpu_peaks_pick_the_specific_card():
    assert common.gpu_peak("NVIDIA H100 PCIe", "bfloat16")[0] == 756e12
    assert common.gpu_peak("NVIDIA H100 80GB HBM3", "bfloat16")[0] == 989e12
    assert common.gpu_peak("NVIDIA H200", "float32")[0] == 67e12
    assert common.gpu_peak("Some Future GPU", "bfloat16")[0] is None


def test_pipeline_parses_stage_timings(monkeypatch, tmp_path):
    """train.py itself is exercised by test_pipeline.py; here only the timing bookkeeping."""
    def fake_run(cmd, **kw):
        out = cmd[cmd.index("--out") + 1]
        metrics = {"timings": {"tokenizer": 1.0, "pretrain": 2.0, "collect": 3.0, "evaluate": 4.0, "total": 15.0},
                   "policies": {"reference": {"seconds": 0.0}, "rpo": {"seconds": 2.5}, "sft": {"seconds": 0.5}},
                   "config": {"model": {}}, "device": "cpu"}
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(metrics, f)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(pipeline.subprocess, "run", fake_run)
    out = pipeline.main(["--device", "cpu", "--runs", "quick", "--keep-metrics", str(tmp_path / "m.json")])
    row = out["rows"][0]
    assert row["align"] == 3.0 and row["other"] == pytest.approx(2.0) and row["wall_s"] > 0
    assert json.loads((tmp_path / "m.json").read_text())["timings"]["total"] == 15.0


def test_gpu_check_script_parses():
    assert subprocess.run(["bash", "-n", os.path.join(ROOT, "bench", "gpu_check.sh")]).returncode == 0
