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

from experiments import EXPERIMENTS, exact_world, frontier, gap, online, paper, runner, stats, variance
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


def test_log_z_errors_by_hand():
    # two prompts of two samples, tau = 0.5; the true log Z is 1 for prompt 0 and 4 for prompt 1
    z, ids = torch.tensor([0.0, 1.0, 2.0, 2.0]), torch.tensor([0, 0, 1, 1])
    truth = torch.tensor([1.0, 1.0, 4.0, 4.0], dtype=torch.float64)
    ref = torch.tensor([math.log(0.5), math.log(0.25), math.log(0.5), math.log(0.5)])
    e = exact_world.log_z_errors(z, ids, 0.5, truth, ref)
    mean0 = math.log((1 + math.e ** 2) / 2) - 1  # prompt 1's estimates are exactly 4: no error
    assert e["mean_tau0.5_bias"] == pytest.approx(mean0 / 2) and e["mean_tau0.5_abs"] == pytest.approx(mean0 / 2)
    # leave-one-out on prompt 0: each sample sees only the other, 2/0.5 - 1 = +1 and 0/0.5 - 1 = -1
    assert e["loo_tau0.5_bias"] == pytest.approx(0.0, abs=1e-6) and e["loo_tau0.5_abs"] == pytest.approx(0.5)
    ref0 = math.log(0.5 + 0.25 * math.e ** 2) - 1  # a partial sum of Z: below the truth
    assert e["ref_tau0.5_bias"] == pytest.approx(ref0 / 2) and e["ref_tau0.5_abs"] == pytest.approx(-ref0 / 2)


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


def test_front_value_at_reads_the_pareto_front_linearly_and_never_extrapolates():
    points = [(3, 0.4), (1, 0.2), (4, 0.9), (2, 0.5)]  # (3, 0.4) is dominated by (2, 0.5)
    assert stats.front_value_at(points, 3) == pytest.approx(0.5 + (0.9 - 0.5) * (3 - 2) / (4 - 2))  # 0.7, not 0.4
    assert stats.front_value_at(points, 1.5) == pytest.approx(0.2 + (0.5 - 0.2) * 0.5)
    assert stats.front_value_at(points, 1) == pytest.approx(0.2)
    assert stats.front_value_at(points, 4) == pytest.approx(0.9)
    assert stats.front_value_at(points, 0.5) is None and stats.front_value_at(points, 5) is None
    assert stats.front_value_at([(2.0, 0.3)], 2.0) == 0.3 and stats.front_value_at([(2.0, 0.3)], 2.1) is None
    assert stats.front_value_at([], 1.0) is None
    # a point at high KL but lower value than one at lower KL is off the front: the range ends earlier
    assert stats.front_value_at([(1, 0.5), (3, 0.2)], 2) is None
    # a read only between neighbours within a factor of t: (2, 0.5)–(4, 0.9) at 3 is one, (1)–(2) at 1.5 too,
    # but at 3 with max_ratio 1.2 the neighbours 2 and 4 are too far: no read; a point exactly at t always is
    assert stats.front_value_at(points, 3, max_ratio=2.0) == pytest.approx(0.7)
    assert stats.front_value_at(points, 3, max_ratio=1.2) is None and stats.front_value_at(points, 4, max_ratio=1.01) == 0.9
    # a front chosen elsewhere (on validation): (3, 0.4), off the test front, is on it and (4, 0.9) is not
    pts, chosen = [(1, 0.2), (2, 0.5), (3, 0.4), (4, 0.9)], [True, True, True, False]
    assert stats.front_value_at(pts, 2.5, on_front=chosen) == pytest.approx(0.45)
    assert stats.front_value_at(pts, 3.5, on_front=chosen) is None


def _job(variant, setting):
    from types import SimpleNamespace

    return SimpleNamespace(variant=variant, setting=setting, params={})


# per variant and setting, per seed: (kl, gold). At KL t = 1.5, by hand (linear on each seed's front):
#   rpo  seed 0: 0.2 + (0.6 − 0.2)·0.5/1 = 0.4   seed 1: 0.4 + (0.7 − 0.4)·0.5/2 = 0.475   seed 2: 0.1 + 0.2·0.5 = 0.2
#   dro  seed 0: 0.1 + (0.9 − 0.1)·1/2 = 0.5      seed 1: (2, 0.5) is dominated by (1, 0.5): front {1}, None
#        seed 2: 0.3 + (0.6 − 0.3)·0.5/2 = 0.375
MATCHED_RUNS = {("rpo", 0.3): {0: (1.0, 0.2), 1: (1.0, 0.4), 2: (1.0, 0.1)},
                ("rpo", 1.0): {0: (2.0, 0.6), 1: (3.0, 0.7), 2: (2.0, 0.3)},
                ("dro", 0.3): {0: (0.5, 0.1), 1: (1.0, 0.5), 2: (1.0, 0.3)},
                ("dro", 1.0): {0: (2.5, 0.9), 1: (2.0, 0.5), 2: (3.0, 0.6)}}


def _matched_rows():
    jobs, results = [], []
    for (v, tau), by_seed in MATCHED_RUNS.items():
        for seed, (kl, gold) in by_seed.items():
            jobs.append(_job(v, {"rpo_tau" if v == "rpo" else "dro_tau": tau}))
            # validation coordinates equal to the test ones: the front chosen on validation is the test front
            results.append({"seed": seed, "diverged": False, "kl": kl, "gold": gold, "val_kl": kl, "val_gold": gold})
    jobs.append(_job("rpo", {"rpo_tau": 0.1}))  # a diverged run: no point at all
    results.append({"seed": 2, "diverged": True, "error": "nan"})
    return stats.make_rows(jobs, results)


def test_matched_kl_reads_each_seed_s_front_and_pairs_the_differences_by_seed():
    import statistics

    out = stats.matched_kl(_matched_rows(), ["rpo", "dro"], "gold", [1.5, 10.0], max_ratio=None)
    at, beyond = out
    assert at["kl"] == 1.5 and beyond["kl"] == 10.0
    rpo, dro = [0.4, 0.475, 0.2], [0.5, 0.375]
    m, ci, n = at["value"]["rpo"]
    assert (m, n) == (pytest.approx(statistics.fmean(rpo)), 3)
    assert ci == pytest.approx(4.303 * statistics.stdev(rpo) / math.sqrt(3))  # t(0.975, 2)
    m, ci, n = at["value"]["dro"]
    assert (m, n) == (pytest.approx(statistics.fmean(dro)), 2)
    diffs = [0.5 - 0.4, 0.375 - 0.2]  # seeds 0 and 2, where both are defined
    m, ci, n = at["minus_rpo"]["dro"]
    assert (m, n) == (pytest.approx(statistics.fmean(diffs)), 2)
    assert ci == pytest.approx(12.706 * statistics.stdev(diffs) / math.sqrt(2))
    assert set(at["minus_rpo"]) == {"dro"}
    # KL 10 is beyond every seed's front: nothing to compare, never extrapolated
    assert beyond["value"]["rpo"][2] == 0 and beyond["value"]["dro"][2] == 0
    assert beyond["minus_rpo"]["dro"][2] == 0 and math.isnan(beyond["minus_rpo"]["dro"][0])
    # without the reference variant there are no differences
    assert "minus_rpo" not in stats.matched_kl(_matched_rows(), ["dro"], "gold", [1.5])[0]
    # within a factor 1.4 of t = 1.5 ([1.07, 2.1]): rpo seed 1 (neighbours 1 and 3) and dro seed 0 (0.5 and 2.5)
    # are chords across a sparse front, no read; rpo seeds 0 and 2 (1 and 2) are too far below (1 < 1.07): none
    near = stats.matched_kl(_matched_rows(), ["rpo", "dro"], "gold", [1.5], max_ratio=1.4)[0]
    assert near["value"]["rpo"][2] == 0 and near["value"]["dro"][2] == 0
    near = stats.matched_kl(_matched_rows(), ["rpo", "dro"], "gold", [1.5], max_ratio=2.0)[0]
    assert near["value"]["rpo"][2] == 3 and near["value"]["dro"][2] == 1  # within [0.75, 3]: dro seed 2 only


def test_online_contrasts_pair_the_online_rows_with_dro_and_with_each_other():
    """MATCHED_RUNS with rpo's runs as rloo, and rpo-online = rloo + 0.1 everywhere. By hand at KL 2
    (reads within [1, 4]): rloo 0.6, 0.55, 0.3 (seeds 0-2); dro only seed 2, 0.3 + 0.3·1/2 = 0.45
    (seed 0's lower neighbour 0.5 is too far, seed 1's front ends at 1). Tuned (best validation):
    rloo 0.6, 0.7, 0.3; dro 0.9, 0.5 (the first of a tie), 0.6."""
    import statistics

    jobs, results = [], []
    for (v, tau), by_seed in MATCHED_RUNS.items():
        for name, shift in ((("rloo", 0.0), ("rpo-online", 0.1)) if v == "rpo" else ((v, 0.0),)):
            for seed, (kl, gold) in by_seed.items():
                jobs.append(_job(name, {"dro_tau" if name == "dro" else "rpo_tau": tau}))
                g = gold + shift
                results.append({"seed": seed, "diverged": False, "kl": kl, "gold": g, "gated_gold": g,
                                "val_kl": kl, "val_gold": g, "val_gated_gold": g})
    c = frontier.online_contrasts(stats.make_rows(jobs, results), ["dro", "rloo", "rpo-online"])
    at2 = {e["kl"]: e for e in c["dro"]["matched"]["gold"]}[2.0]
    assert at2["rloo"][0] == pytest.approx(0.3 - 0.45) and at2["rloo"][2] == 1
    assert at2["rpo-online"][0] == pytest.approx(0.4 - 0.45) and at2["rpo-online"][2] == 1
    loo = {e["kl"]: e for e in c["rpo-online"]["matched"]["gold"]}[2.0]["rloo"]
    assert loo[0] == pytest.approx(-0.1) and loo[2] == 3 and set(c["rpo-online"]["tuned"]) == {"rloo"}
    assert c["dro"]["tuned"]["rloo"]["gold"][0] == pytest.approx(statistics.fmean([0.6 - 0.9, 0.7 - 0.5, 0.3 - 0.6]))
    assert c["rpo-online"]["tuned"]["rloo"]["gated_gold"][0] == pytest.approx(-0.1)
    assert frontier.online_contrasts(stats.make_rows(jobs, results), ["dro"]) == {}  # no online rows, no contrasts


def test_matched_kl_builds_the_front_on_validation_and_reads_it_on_test():
    """A setting on the test front but off the validation front is not used."""
    from types import SimpleNamespace
    runs = [("rpo", 0.3, 1.0, 0.2, 1.0, 0.2), ("rpo", 1.0, 3.0, 0.4, 3.0, 0.1),   # off the validation front
            ("rpo", 3.0, 4.0, 0.9, 4.0, 0.9)]
    jobs = [SimpleNamespace(variant=v, setting={"rpo_tau": tau}, params={}) for v, tau, *_ in runs]
    results = [{"seed": 0, "kl": kl, "gold": g, "val_kl": vk, "val_gold": vg} for _, _, kl, g, vk, vg in runs]
    out = stats.matched_kl(stats.make_rows(jobs, results), ["rpo"], "gold", [2.0], max_ratio=None)[0]
    assert out["value"]["rpo"][0] == pytest.approx(0.2 + (0.9 - 0.2) * 1 / 3)  # between (1, 0.2) and (4, 0.9)


def test_select_per_seed_picks_each_seed_s_best_validation_setting_ignoring_diverged_runs():
    runs = {("rpo", 0.3): [{"seed": 0, "val_gated_gold": 0.2}, {"seed": 1, "val_gated_gold": 0.6}],
            ("rpo", 1.0): [{"seed": 0, "val_gated_gold": 0.5}, {"seed": 1, "val_gated_gold": 0.1}],
            ("rpo", 3.0): [{"seed": 0, "diverged": True, "val_gated_gold": 9.0},   # diverged: never chosen
                           {"seed": 1, "val_gated_gold": float("nan")}],             # NaN: never chosen
            ("dro", 1.0): [{"seed": 0, "val_gated_gold": -0.3}, {"seed": 1, "diverged": True}]}
    jobs, results = [], []
    for (v, tau), rs in runs.items():
        for r in rs:
            jobs.append(_job(v, {"rpo_tau" if v == "rpo" else "dro_tau": tau}))
            results.append({"diverged": False, "gold": 0.0, **r})
    chosen = stats.select_per_seed(stats.make_rows(jobs, results))
    assert {v: {s: label for s, (label, _) in d.items()} for v, d in chosen.items()} == {
        "rpo": {0: "τ=1", 1: "τ=0.3"}, "dro": {0: "τ=1"}}
    assert chosen["rpo"][0][1]["val_gated_gold"] == 0.5  # the chosen run's own result comes with it
    # another key chooses differently
    results2 = [dict(r, val_gold=-r.get("val_gated_gold", 0.0)) for r in results]
    by_gold = stats.select_per_seed(stats.make_rows(jobs, results2), key="val_gold")
    assert by_gold["rpo"][0][0] == "τ=0.3" and by_gold["rpo"][1][0] == "τ=1"


def test_frontier_settings_are_the_product_of_each_field_s_values():
    got = frontier.settings({"lr": [1, 2], "rpo_tau": [0.1, 0.3, 1.0]})
    want = [{"lr": lr, "rpo_tau": tau} for lr in (1, 2) for tau in (0.1, 0.3, 1.0)]
    assert got == want and len(got) == 6
    assert frontier.settings({"beta": [0.1]}) == [{"beta": 0.1}]
    # every grid names AlignConfig fields only
    fields = set(AlignConfig.__dataclass_fields__)
    for grid in (frontier.GRID, frontier.OFFPOLICY_GRID):
        for size in grid.values():
            for space in size.values():
                assert set(space) <= fields, space


def test_every_setting_of_every_full_grid_has_a_label():
    """Numbers read with :g, strings (SFT's sft_mode) as they are; distinct settings, distinct labels."""
    assert stats.setting_label("sft", {"lr": 3e-05, "sft_mode": "above_mean"}) == "lr=3e-05 mode=above_mean"
    for grid in (frontier.GRID, frontier.OFFPOLICY_GRID):
        for v, space in grid["full"].items():
            labels = [stats.setting_label(v, setting) for setting in frontier.settings(space)]
            assert len(set(labels)) == len(labels), labels


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
    # what its jobs ran, per world: the quick sizes, and a grid's own fields among the varied ones
    for world, c in d["config"].items():
        own = {"gap": gap.GRID, "online": online.GRID}  # the experiments that set their own number of steps
        steps = own[name]["quick"]["steps"] if name in own else runner.QUICKER["align"]["steps"]
        assert c["config"]["align"]["steps"] == steps and c["jobs"] > 0
        assert world == c["config"]["world"]["name"]
        assert c["config"]["pretrain"]["pretrain_steps"] == runner.QUICKER["pretrain"]["pretrain_steps"]
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
    assert f"done: {', '.join(EXPERIMENTS)}:" in r.stdout
    assert len(os.listdir(cache / "logs")) >= 2  # the jobs really ran in spawned workers
    for name in EXPERIMENTS:
        _load(out, name)


@pytest.mark.parametrize("name", ["frontier", "offpolicy"])
def test_quick_frontiers(quick_all, name):
    d = _load(quick_all[0], name)
    grid = EXPERIMENTS[name].grid["quick"]  # {variant: {AlignConfig field: values}}, the settings a product
    on = frontier.ON_POLICY if name == "offpolicy" else ()  # run again on π_ref's own samples
    assert d["jobs"] == sum(len(frontier.settings(space)) for v, space in grid.items() for _ in range(1 + (v in on))) * 2
    for data, variants in ((None, grid), ("on", on)):
        assert {(r["variant"], r["label"]) for r in d["rows"] if r.get("data") == data} == {
            (v, stats.setting_label(v, setting)) for v in variants for setting in frontier.settings(grid[v])}
    _check_rows(d["rows"])
    s = d["summary"]
    assert set(s["best_gold_under_kl"]) == set(grid) and len(s["winner_gold"]) == len(stats.KL_THRESHOLDS)
    assert s["pareto_gold"] and set(s["tuned"]) <= set(grid)
    assert set(s["matched"]) == set(frontier.MATCHED)
    assert [e["kl"] for e in s["matched"]["gold"]] == list(frontier.KL_TARGETS)
    if name == "offpolicy":
        assert d["config"]["reviews"]["varied"]["collect.off_policy"] == [False, True]  # what its jobs ran
        assert "rpo-ref" in s["tuned"] or "rpo-ref" in s["best_gold_under_kl"]
        # the difference of differences, recomputed from the rows by seed
        for e in s["difference_in_differences"]:
            by = {(r["variant"], r.get("data")): {x["seed"]: x for x in r["per_seed"]}
                  for r in d["rows"] if r["label"] == e["setting"]}
            for k in ("gold", "kl"):
                did = [(by["dro", None][sd][k] - by["rpo", None][sd][k]) - (by["dro", "on"][sd][k] - by["rpo", "on"][sd][k])
                       for sd in (0, 1)]
                assert e[k]["did"][0] == pytest.approx(sum(did) / 2) and e[k]["did"][2] == 2
                assert e[k]["did"][0] == pytest.approx(e[k]["off"][0] - e[k]["on"][0])
        assert len(s["difference_in_differences"]) == len(frontier.settings(grid["dro"]))


def _check_exact(row):
    """The exact measures of one row's runs obey their definitions (exact.compare)."""
    for r in row["per_seed"]:
        assert r["exact_kl"] >= -1e-9 and r["frontier_gap"] >= -1e-9 and r["kl_to_matched_optimum"] >= -1e-9
        assert 0 <= r["exact_gold"] <= 1  # the gold reward is "correct": 0 or 1
        # regret = τ · KL(π‖π*_τ) at the τ the policy trained with, its own in reward units (RPO, DRO:
        # the row's τ times the rewards' std, never another objective's); KTO, SFT: the matched τ
        assert r["regret"] == pytest.approx(r["own_tau"] * r["kl_to_own_optimum"], rel=1e-6, abs=1e-12)
        tau = row["setting"].get(runner.tau_field(row["variant"])) if row["variant"][:3] in ("rpo", "dro") else None
        if tau is not None:
            assert r["tau_from"] == "trained" and r["own_tau"] == pytest.approx(tau * r["reward_scale"], rel=1e-12)
        elif row["variant"][:3] in ("kto", "sft"):
            assert r["tau_from"] == "matched" and r["own_tau"] == r["matched_tau"]


def test_quick_optimum(quick_all):
    d = _load(quick_all[0], "optimum")
    grid = EXPERIMENTS["optimum"].grid["quick"]
    assert {(r["variant"], r["label"]) for r in d["rows"]} == {
        (v, stats.setting_label(v, setting)) for v, space in grid.items() for setting in frontier.settings(space)}
    _check_rows(d["rows"])
    for row in d["rows"]:
        _check_exact(row)
    for pts in d["frontier"].values():  # along the exact frontier more KL buys more reward
        pts = sorted(pts, key=lambda p: p["kl"])
        assert all(b["reward"] >= a["reward"] - 1e-9 for a, b in zip(pts, pts[1:]))
    assert set(d["summary"]["tuned"]) == set(grid)
    for entries in d["summary"]["matched"].values():  # exact fronts chosen on validation, read on test
        assert [e["kl"] for e in entries] == list(exact_world.EXACT_KL_TARGETS)
        assert set(entries[0]["value"]) == set(grid) - {"dro-joint"}


def test_quick_partition(quick_all):
    d = _load(quick_all[0], "partition")
    g = EXPERIMENTS["partition"].grid["quick"]
    assert {(r["variant"], r["k"], r["tau"]) for r in d["rows"]} == {
        (v, k, t) for v in g["variants"] for k in g["k"] for t in g["taus"]}
    _check_rows(d["rows"])
    for row in d["rows"]:
        _check_exact(row)
        assert all("regret" in r for r in row["per_seed"])
    for k in g["k"]:
        e = d["log_z_error_summary"][str(k)]
        for est in ("mean", "loo", "ref"):
            for t in g["taus"]:
                assert e[f"{est}_tau{t:g}_abs"][0] >= abs(e[f"{est}_tau{t:g}_bias"][0]) - 1e-9  # |mean| ≤ mean |.|
        assert set(d["minus_dro"][f"{k}/{g['taus'][0]:g}"]) == set(g["variants"]) - {"dro"}


def test_quick_value(quick_all):
    d = _load(quick_all[0], "value")
    assert len(d["per_seed"]) == 2 and d["v_sd_over_seeds"] > 0 and d["log_z_hat_bootstrap_sd"] > 0
    assert d["v_abs_error"] >= abs(d["v_bias"]) and d["log_z_hat_abs_error"] >= abs(d["log_z_hat_bias"])


@pytest.mark.parametrize("name", ["exact_heterogeneity", "exact_offpolicy"])
def test_quick_exact_conditions(quick_all, name):
    d = _load(quick_all[0], name)
    g = EXPERIMENTS[name].grid["quick"]
    conditions = {(r.get("prior_strength"), r["tau"]) for r in d["rows"]}
    assert conditions == {(ps, t) for ps in g.get("prior_strength", [None]) for t in g["taus"]}
    on = {r["variant"] for r in d["rows"] if r.get("data") == "on"}
    assert {r["variant"] for r in d["rows"] if r.get("data") != "on"} == set(g["variants"])
    _check_rows(d["rows"])
    for row in d["rows"]:
        _check_exact(row)
    assert set(d["minus_rpo"]) == {f"{ps}/{t:g}" for ps, t in conditions}
    if name == "exact_offpolicy":  # the reference-sample arm, and the difference of differences paired by seed
        assert on == set(exact_world.ON_POLICY)
        for t in g["taus"]:
            by = {(r["variant"], r.get("data")): {x["seed"]: x["regret"] for x in r["per_seed"]}
                  for r in d["rows"] if r["tau"] == t}
            did = [(by["dro", None][s] - by["rpo", None][s]) - (by["dro", "on"][s] - by["rpo", "on"][s]) for s in (0, 1)]
            assert d["difference_in_differences"][f"{t:g}"]["regret"][0] == pytest.approx(sum(did) / 2)
    else:
        assert not on


def test_quick_heterogeneity(quick_all):
    d = _load(quick_all[0], "heterogeneity")
    grid = EXPERIMENTS["heterogeneity"].grid["quick"]["prior_strength"]
    taus = EXPERIMENTS["heterogeneity"].grid["quick"]["taus"]
    assert {(r["variant"], r["prior_strength"], r["tau"]) for r in d["rows"]} == {
        (v, ps, t) for v in ("rpo", "rpo-global", "dro") for ps in grid for t in taus}
    _check_rows(d["rows"])
    # a stronger prior makes prompts differ more: between/within spread grows
    ratios = [d["spread"][str(ps)]["ratio"] for ps in grid]
    assert ratios == sorted(ratios) and ratios[0] < ratios[-1]
    # the global-baseline policy is a different policy from the per-prompt one
    by = {(r["variant"], r["prior_strength"]): r for r in d["rows"]}
    assert by[("rpo", 1.0)]["per_seed"] != by[("rpo-global", 1.0)]["per_seed"]
    assert set(d["matched"]) == {str(ps) for ps in grid}


def test_quick_variance(quick_all):
    d = _load(quick_all[0], "variance")
    steps = runner.QUICKER["align"]["steps"]
    got = {(p["trajectory"], p["step"], p["estimator"]) for p in d["spread"]}
    assert got == {(t, s, e) for s in (0, steps // 2, steps) for t, es in (("rpo", ("rpo", "none")),
                                                                          ("dro", ("rpo", "none", "dro"))) for e in es}
    for p in d["spread"]:
        assert p["mean"]["trace_cov"] > 0 and len(p["per_seed"]) == 2
        # each method's own loss on its own path also has its minibatch/full-batch agreement, a cosine
        assert ("cosine_to_full" in p["mean"]) == (p["estimator"] == p["trajectory"])
        if p["estimator"] == p["trajectory"]:
            assert -1 <= p["mean"]["cosine_to_full"] <= 1
    for v in ("rpo", "dro"):
        assert len(d["curves"][v]["loss"]) == steps and len(d["curves"][v]["grad_norm"]) == steps
    assert {(r["variant"], r["setting"]["lr"]) for r in d["rows"]} == {
        (v, lr) for v in ("rpo", "dro") for lr in EXPERIMENTS["variance"].grid["quick"]["lrs"]}
    for r in d["rows"]:
        assert 0 <= r["n_diverged"] + r["n_collapsed"] <= r["n_seeds"]
        if r["variant"] == "rpo":  # the "mean" partition's targets keep each prompt's observed mass: exactly 0
            assert r["mean"]["target_inflation"] == pytest.approx(0, abs=1e-4)


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
    arms = [a[0] for a in EXPERIMENTS["paper"].grid["quick"]]
    assert [r["arm"] for r in d["rows"]] == arms
    _check_rows(d["rows"])
    assert set(d["minus_default"]) == {a for a in arms if paper.against(a) in arms and paper.against(a) != a}
    rows = {r["arm"]: {x["seed"]: x for x in r["per_seed"]} for r in d["rows"]}
    for arm, diff in d["minus_default"].items():  # each against its own arm (the preset minus a factor: the preset)
        assert diff["kl"][0] == pytest.approx(sum(rows[arm][sd]["kl"] - rows[paper.against(arm)][sd]["kl"]
                                                  for sd in (0, 1)) / 2)
    assert paper.against("rpo paper preset − per-token means") == "rpo paper preset"
    assert set(d["ref_offset"]) == {"8", "4"} and all(len(v) == 2 for v in d["ref_offset"].values())


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


def test_quick_gap(quick_all):
    """The four parts of each method's test regret add up to it, per replicate; RPO's three
    estimators share one population run; K = ∞ is the population loss."""
    d = _load(quick_all[0], "gap")
    dec = d["decomposition"]
    fresh = gap.GRID["quick"]["fresh"]
    assert set(dec) == set(gap.SAMPLED) | set(fresh)
    for v, row in dec.items():
        assert len(row["per_seed"]) == 2
        for parts in row["per_seed"].values():
            if "optimisation" in parts:  # split: every part that applies (fresh rows have no estimation)
                assert sum(parts[p] for p in gap.PARTS if p in parts) == pytest.approx(parts["total"], abs=1e-12)
            assert parts["generalisation"] + parts["train"] == pytest.approx(parts["total"], abs=1e-12)
        if not row["has_estimation"]:  # offline rows carry a zero; fresh rows have no such part
            assert all(p.get("estimation", 0.0) == 0.0 for p in row["per_seed"].values())
    assert dec["rpo-exact"]["estimation"][0] == 0.0
    # each part from the raw runs, by hand: the last checkpoint of the named run
    end = {(r["variant"], r["k"], r["seed"]): r["trace"][-1] for r in d["runs"]}
    for s, parts in dec["rpo"]["per_seed"].items():
        s = int(s)
        assert parts["estimation"] == end["rpo", 8, s]["train_regret"] - end["rpo-exact", 8, s]["train_regret"]
        assert parts["sampling"] == end["rpo-exact", 8, s]["train_regret"] - end["rpo", "population", s]["train_regret"]
        assert parts["optimisation"] == end["rpo", "population", s]["train_regret"]
        assert parts["generalisation"] == end["rpo", 8, s]["test_regret"] - end["rpo", 8, s]["train_regret"]
    for s, parts in dec["dro"]["per_seed"].items():  # no partition: sampling is against DRO's own population run
        assert parts["sampling"] == end["dro", 8, int(s)]["train_regret"] - end["dro", "population", int(s)]["train_regret"]
    assert dec["rpo"]["optimisation"] == dec["rpo-loo"]["optimisation"] == dec["rpo-exact"]["optimisation"]
    # fresh samples: RLOO's sampling part is against the exact policy gradient's run; A*-PO's limit was not run
    g, n_data = d["grid"], 8 * d["config"]["arithmetic"]["config"]["collect"]["n_prompts"]
    batch = d["config"]["arithmetic"]["config"]["align"]["batch_size"]
    for s, parts in dec["rloo"]["per_seed"].items():
        s = int(s)
        assert parts["sampling"] == end["rloo", "fresh", s]["train_regret"] - end["rloo", "population", s]["train_regret"]
        assert parts["optimisation"] == end["rloo", "population", s]["train_regret"]
        assert parts["generations"] == g["steps"] * batch  # fresh only: RLOO never reads π_ref's dataset
    assert "sampling" not in dec["apo"] and "estimation" not in dec["apo"]["per_seed"]["0"]
    assert all(p["generations"] == n_data + g["steps"] * batch for p in dec["apo"]["per_seed"].values())
    assert all(p["generations"] == n_data for p in dec["rpo"]["per_seed"].values())  # K = 8, read once
    for r in d["runs"]:
        first = r["trace"][0]
        assert first["step"] == 0 and first["train_regret"] >= 0 and first["test_exact_kl"] == pytest.approx(0, abs=1e-9)
        for c in r["trace"]:  # the mass adds up, and regret = τ·KL(π‖π*_τ) ≥ 0
            assert c["test_mass_correct"] + c["test_mass_near_miss"] + c["test_mass_other"] == pytest.approx(1.0)
            assert 0 <= c["train_mass_observed"] <= 1 + 1e-9 and c["test_regret"] >= -1e-12


def test_difference_in_differences_by_hand():
    """(a − b) − (c − e) per seed, over the seeds all four have; a diverged run drops its seed."""
    from experiments.stats import difference_in_differences

    row = lambda seed, v, **kw: {"seed": seed, "x": v, **kw}  # noqa: E731
    a = [row(0, 5.0), row(1, 4.0), row(2, 9.0, diverged=True)]
    b = [row(0, 1.0), row(1, 2.0), row(2, 1.0)]
    c = [row(0, 3.0), row(1, 3.0), row(2, 1.0)]
    e = [row(0, 2.0), row(1, 2.5)]
    mean, half, n = difference_in_differences(a, b, c, e, "x")
    # seed 0: (5 − 1) − (3 − 2) = 3; seed 1: (4 − 2) − (3 − 2.5) = 1.5; seed 2 diverged
    assert n == 2 and mean == pytest.approx(2.25) and half == pytest.approx(12.706 * 0.75)  # sd 0.75·√2, n = 2


def test_quick_online(quick_all):
    """Every variant ran; each checkpoint's generations are the dataset's (for the variants that read
    it) plus the fresh ones so far; the tuned regret is recomputed from the raw runs."""
    d = _load(quick_all[0], "online")
    runs = d["runs"]
    assert {r["variant"] for r in runs} == set(online.VARIANTS)
    for r in runs:
        dataset, fresh = r["generations"]["dataset"], r["generations"]["fresh"]
        last = r["trace"][-1]["step"]
        for c in r["trace"]:
            assert c["generations"] == dataset + fresh * c["step"] // last, (r["variant"], c)
        assert (fresh == 0) == (r["variant"] in ("rpo", "dro")) and (dataset > 0) == (r["variant"] in ("rpo", "dro", "apo"))
    for v in online.VARIANTS:
        by_seed = {}
        for r in (r for r in runs if r["variant"] == v):
            if r["seed"] not in by_seed or r["val_regret"] < by_seed[r["seed"]]["val_regret"]:
                by_seed[r["seed"]] = r
        finals = [r["trace"][-1]["regret"] for r in by_seed.values()]
        assert d["tuned"][v]["regret"][0] == pytest.approx(sum(finals) / len(finals))
