"""The experiments (`experiments/`): every experiment's --quick variant end to end (one call, two
worker processes), the JSON and PNG it writes, the markdown write-up, and the small analyses
checked against naive computations on hand-made inputs."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from experiments import EXPERIMENTS, frontier, runner, stats, variance
from experiments.tables import writeup
from rpo_mini.align import Alignment, prepare
from rpo_mini.config import AlignConfig
from rpo_mini.data import Dataset, reward_stats
from rpo_mini.evaluate import over_seeds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"


# --- the pure helpers, against naive computations -----------------------------------------------

def test_gradient_spread_matches_the_naive_covariance_trace():
    g = torch.Generator().manual_seed(0)
    grads = torch.randn(9, 40, generator=g, dtype=torch.float64) * 3 + torch.linspace(-2, 2, 40, dtype=torch.float64)
    spread = stats.GradientSpread()
    for row in grads:
        spread.add(row.float())  # float32 in, float64 inside
    s = spread.stats()
    mean = grads.float().double().mean(0)
    naive_trace = ((grads.float().double() - mean) ** 2).sum().item() / (len(grads) - 1)
    assert s["n"] == 9
    assert s["trace_cov"] == pytest.approx(naive_trace, rel=1e-9)
    assert s["trace_cov"] == pytest.approx(torch.cov(grads.float().double().T).trace().item(), rel=1e-9)
    assert s["mean_grad_sq"] == pytest.approx((mean @ mean).item(), rel=1e-9)
    assert s["noise_to_signal"] == pytest.approx(naive_trace / (mean @ mean).item(), rel=1e-9)


def test_gradient_spread_of_identical_vectors_is_zero():
    spread = stats.GradientSpread()
    for _ in range(5):
        spread.add(torch.tensor([1.0, -2.0, 3.0]))
    assert spread.stats()["trace_cov"] == pytest.approx(0.0, abs=1e-12)


def _toy_dataset():
    rewards = torch.tensor([0.1, 2.0, -1.0, 3.0, 0.5, 0.5, -2.0, 1.0], dtype=torch.float64)
    ids = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2])
    n = len(rewards)
    return Dataset([[1]] * n, [[2]] * n, ids, rewards, [{}] * n)


def test_global_baseline_partition_is_logsumexp_over_all_rewards_minus_log_n():
    data, tau = _toy_dataset(), 0.7
    cfg = AlignConfig()
    prep = prepare("rpo", runner.global_baseline(data), torch.zeros(len(data)), cfg, tau)
    mean, std = reward_stats(data.rewards)
    z = (data.rewards - mean) / std
    expected = (torch.logsumexp(z / tau, 0) - math.log(len(z))).item()
    assert torch.allclose(prep["log_z"].double(), torch.full((len(z),), expected, dtype=torch.float64), atol=1e-5)
    # ... while the per-prompt partition differs between prompts (the point of the comparison)
    per_prompt = prepare("rpo", data, torch.zeros(len(data)), cfg, tau)["log_z"]
    assert len(set(round(v, 4) for v in per_prompt.tolist())) == 3
    # and nothing but the grouping changed
    assert torch.equal(runner.global_baseline(data).rewards, data.rewards)


def test_best_under_kl_and_pareto_front_on_hand_made_points():
    pts = [(0.5, 0.1, "a"), (1.5, 0.3, "b"), (4.0, 0.2, "c"), (12.0, 0.9, "d")]
    best = stats.best_under_kl(pts, thresholds=(0.1, 1.0, 5.0, 10.0, None))
    assert [b and b[2] for b in best] == [None, "a", "b", "b", "d"]
    # c is dominated by b (lower KL and higher value); the others are not
    assert stats.pareto_front([(k, v) for k, v, _ in pts]) == [True, True, False, True]
    assert stats.pareto_front([(1.0, 0.5), (1.0, 0.5)]) == [True, True]  # ties dominate nobody


def test_paired_difference_matches_by_seed_and_skips_diverged_runs():
    a = [{"seed": 0, "gold": 1.0}, {"seed": 1, "gold": 2.0}, {"seed": 2, "diverged": True}, {"seed": 3, "gold": 9.0}]
    b = [{"seed": 1, "gold": 1.5}, {"seed": 0, "gold": 0.0}, {"seed": 2, "gold": 5.0}]
    mean, ci = stats.paired_difference(a, b, "gold")
    assert mean == pytest.approx((1.0 + 0.5) / 2)  # seeds 0 and 1 only
    assert ci > 0


def test_select_on_validation_prefers_fluent_settings_then_gold():
    rows = [{"variant": "rpo", "label": "τ=0.1", "mean": {"val_gold": 0.9, "val_fluency": 0.5}},
            {"variant": "rpo", "label": "τ=1", "mean": {"val_gold": 0.4, "val_fluency": 0.95}},
            {"variant": "rpo", "label": "τ=3", "mean": {"val_gold": 0.2, "val_fluency": 0.99}},
            {"variant": "dro", "label": "τ=1", "mean": {"val_gold": 0.1, "val_fluency": 0.2}}]
    chosen = stats.select_on_validation(rows)
    assert chosen["rpo"]["label"] == "τ=1"
    assert chosen["dro"]["label"] == "τ=1"  # nothing fluent: still a choice, the best gold


def test_over_seeds_leaves_out_diverged_runs():
    mean, ci = over_seeds([{"seed": 0, "x": 1.0}, {"seed": 1, "x": 3.0}, {"seed": 2, "diverged": True}])
    assert mean == {"x": 2.0} and ci["x"] > 0


# --- the gradient-spread measurement on the tiny model ------------------------------------------

def test_at_init_dro_gradient_equals_the_no_baseline_gradient(tiny):
    """DRO's value head starts at zero, so at initialisation its target is r/τ: the same as RPO
    with log Ẑ = 0 ("none"), minibatch for minibatch. RPO's own baseline changes the gradient."""
    st, base, data = tiny
    cfg, tau, eot = st.cfg.align, 1.0, st.enc.eot_token
    dro = Alignment("dro", base, data, cfg, cfg.lr_for("dro"), tau, 0, eot, st.autocast)
    rpo = Alignment("rpo", base, data, cfg, cfg.lr_for("rpo"), tau, 0, eot, st.autocast)
    s_dro = variance.minibatch_gradient_stats(dro, 4, seed=3)
    s_rpo = variance.minibatch_gradient_stats(rpo, 4, seed=3)
    rpo.fixed = rpo.fixed | {"log_z": torch.zeros_like(rpo.fixed["log_z"])}  # no baseline
    s_none = variance.minibatch_gradient_stats(rpo, 4, seed=3)
    assert s_dro["n"] == 4 and s_dro["trace_cov"] > 0
    assert s_dro["trace_cov"] == pytest.approx(s_none["trace_cov"], rel=1e-4)
    assert s_dro["mean_grad_sq"] == pytest.approx(s_none["mean_grad_sq"], rel=1e-4)
    assert s_rpo["mean_grad_sq"] != pytest.approx(s_none["mean_grad_sq"], rel=1e-3)
    for a in (dro, rpo):  # leaves no gradient behind
        assert all(p.grad is None for m in a.modules.values() for p in m.parameters())


# --- every experiment's quick variant, end to end -----------------------------------------------

@pytest.fixture(scope="module")
def quick_all(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("experiments")
    out, cache = tmp / "findings", tmp / "cache"
    r = subprocess.run([sys.executable, "-m", "experiments", "all", "--quick", "--device", "cpu",
                        "--workers", "2", "--out", str(out), "--cache", str(cache)],
                       cwd=ROOT, capture_output=True, text=True, timeout=1500,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, cache, r


def _load(out, name):
    d = json.loads((out / f"{name}.json").read_text())  # strict JSON: no NaN, no Infinity
    json.dumps(d, allow_nan=False)
    assert (out / f"{name}.png").read_bytes()[:8] == PNG
    assert (out / f"{name}.png").stat().st_size < 300_000
    for key in ("experiment", "quick", "seeds", "device", "machine", "date", "elapsed_s", "command", "rerun",
                "config", "grid", "jobs"):
        assert key in d, (name, key)
    assert d["experiment"] == name and d["quick"] is True and d["seeds"] == [0, 1]
    assert d["config"]["align"]["steps"] == runner.QUICKER["align"]["steps"]
    return d


def _check_rows(rows, n_seeds=2):
    for row in rows:
        assert row["n_seeds"] == n_seeds and sorted(r["seed"] for r in row["per_seed"]) == list(range(n_seeds))
        for key in ("reward", "gold", "kl", "fluency"):
            values = [r[key] for r in row["per_seed"] if not r.get("diverged")]
            assert row["mean"][key] == pytest.approx(sum(values) / len(values))
            assert row["ci"][key] is not None and row["ci"][key] >= 0


def test_quick_all_runs_every_experiment_in_two_worker_processes(quick_all):
    out, cache, r = quick_all
    assert "done: frontier, offpolicy, k, heterogeneity, variance, cost, paper" in r.stdout
    assert len(os.listdir(cache / "logs")) >= 2  # the jobs really ran in spawned workers
    for name in EXPERIMENTS:
        _load(out, name)


@pytest.mark.parametrize("name", ["frontier", "offpolicy"])
def test_quick_frontiers(quick_all, name):
    d = _load(quick_all[0], name)
    grid = EXPERIMENTS[name].grid["quick"]
    assert d["jobs"] == sum(len(v) for v in grid.values()) * 2
    assert {(r["variant"], r["label"]) for r in d["rows"]} == {
        (v, stats.setting_label(v, {frontier.KNOBS[runner.VARIANTS[v][0]]: x})) for v, xs in grid.items() for x in xs}
    _check_rows(d["rows"])
    s = d["summary"]
    assert set(s["best_reward_under_kl"]) == set(grid) and len(s["winner_gold"]) == len(stats.KL_THRESHOLDS)
    assert s["pareto_gold"] and set(s["selected"]) <= set(grid)
    if name == "offpolicy":
        assert d["config"]["collect"]["off_policy"] is False  # the base config; the jobs turn it on
        assert "rpo-ref" in s["selected"] or "rpo-ref" in s["best_gold_under_kl"]


def test_quick_k(quick_all):
    d = _load(quick_all[0], "k")
    ks = EXPERIMENTS["k"].grid["quick"]["k"]
    assert sorted({r["k"] for r in d["rows"]}) == ks and len(d["rows"]) == 2 * len(ks)
    _check_rows(d["rows"])
    for k in ks:
        z = d["logz"][str(k)]
        assert len(z["per_seed"]) == 2
        for key in ("rpo_logz_abs_err", "dro_v_abs_err"):
            assert z["mean"][key] >= 0
            assert z["mean"][key] >= abs(z["mean"][key.replace("abs_err", "bias")]) - 1e-9  # |mean| ≤ mean |.|


def test_quick_heterogeneity(quick_all):
    d = _load(quick_all[0], "heterogeneity")
    grid = EXPERIMENTS["heterogeneity"].grid["quick"]["prior_strength"]
    assert {(r["variant"], r["prior_strength"]) for r in d["rows"]} == {
        (v, ps) for v in ("rpo", "rpo-global", "dro") for ps in grid}
    _check_rows(d["rows"])
    # a stronger prior makes prompts differ more: between/within spread grows
    ratios = [d["spread"][str(ps)]["ratio"] for ps in grid]
    assert ratios == sorted(ratios) and ratios[0] < ratios[-1]
    # the global-baseline policy is a different policy from the per-prompt one
    by = {(r["variant"], r["prior_strength"]): r for r in d["rows"]}
    assert by[("rpo", 1.0)]["per_seed"] != by[("rpo-global", 1.0)]["per_seed"]


def test_quick_variance(quick_all):
    d = _load(quick_all[0], "variance")
    steps = runner.QUICKER["align"]["steps"]
    got = {(p["trajectory"], p["step"], p["estimator"]) for p in d["spread"]}
    assert got == {(t, s, e) for s in (0, steps // 2, steps) for t, es in (("rpo", ("rpo", "none")),
                                                                          ("dro", ("rpo", "none", "dro"))) for e in es}
    for p in d["spread"]:
        assert p["mean"]["trace_cov"] > 0 and len(p["per_seed"]) == 2
    for v in ("rpo", "dro"):
        assert len(d["curves"][v]["loss"]) == steps and len(d["curves"][v]["grad_norm"]) == steps
    assert {(r["variant"], r["setting"]["lr"]) for r in d["rows"]} == {
        (v, lr) for v in ("rpo", "dro") for lr in EXPERIMENTS["variance"].grid["quick"]["lrs"]}
    for r in d["rows"]:
        assert 0 <= r["n_diverged"] + r["n_collapsed"] <= r["n_seeds"]


def test_quick_cost(quick_all):
    d = _load(quick_all[0], "cost")
    rows = {r["variant"]: r for r in d["rows"]}
    assert set(rows) == {"sft", "kto", "dro", "rpo"}
    for r in rows.values():
        assert r["mean"]["ms_per_step"] > 0 and r["mean"]["peak_rss_mb"] > 0
    # DRO trains a value network next to the policy: twice the parameters, plus a head
    assert rows["dro"]["mean"]["params"] > 1.9 * rows["rpo"]["mean"]["params"]
    assert rows["sft"]["mean"]["params"] == rows["rpo"]["mean"]["params"] == rows["kto"]["mean"]["params"]


def test_quick_paper(quick_all):
    d = _load(quick_all[0], "paper")
    objs = EXPERIMENTS["paper"].grid["quick"]["objectives"]
    assert {(r["objective"], r["preset"]) for r in d["rows"]} == {(o, p) for o in objs for p in ("default", "paper")}
    _check_rows(d["rows"])
    assert set(d["paper_minus_default"]) == set(objs)


def test_writeup_fills_the_marked_sections(quick_all, tmp_path):
    out = quick_all[0]
    doc = tmp_path / "FINDINGS.md"
    doc.write_text("# x\n\n<!-- BEGIN frontier -->\nSTALE-TEXT\n<!-- END frontier -->\n\nkeep me\n"
                   "<!-- BEGIN cost -->\n<!-- END cost -->\n")
    text = writeup(EXPERIMENTS, str(out), str(doc))
    filled = doc.read_text()
    assert "STALE-TEXT" not in filled and "keep me" in filled
    assert filled.count("| variant | setting | reward |") >= 1 and "| objective | ms/step (median) |" in filled
    assert f"{os.path.relpath(out, tmp_path)}/frontier.png" in filled
    assert (out / "TABLES.md").read_text().count("## ") == len(EXPERIMENTS)
    assert all(f"## {n}" in text for n in EXPERIMENTS)
