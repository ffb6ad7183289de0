"""The glue, by hand: cache keys, the sweep's settings, the report's aggregation, the config's
accessors and presets, strict and atomic files."""

import dataclasses
import json
import math

import pytest
import torch

from rpo_mini import report, stages
from rpo_mini.align import OBJECTIVES, Fresh, align
from rpo_mini.config import PAPER, QUICK, AlignConfig, Config, parse_config
from rpo_mini.files import atomic_open, write_json
from rpo_mini.stages import Artifact


def test_lr_and_tau_of_each_objective():
    a = AlignConfig(sft_lr=1.0, kto_lr=2.0, dro_lr=3.0, rpo_lr=4.0, rpo_tau=0.5, dro_tau=0.7)
    assert [a.lr_for(o) for o in ("sft", "kto", "dro", "rpo")] == [1.0, 2.0, 3.0, 4.0]
    assert [a.tau_for(o) for o in ("sft", "kto", "dro", "rpo")] == [None, None, 0.7, 0.5]
    b = dataclasses.replace(a, lr=9.0, tau=0.1)  # --lr and --tau override every objective's own
    assert [b.lr_for(o) for o in ("sft", "rpo")] == [9.0, 9.0] and [b.tau_for(o) for o in ("kto", "dro")] == [None, 0.1]


def test_quick_then_preset_then_flags():
    cfg = parse_config(["--quick", "--preset", "paper", "--rpo_tau", "2", "--seed", "4"])
    assert cfg.model.n_layer == QUICK["model"]["n_layer"] and cfg.align.steps == QUICK["align"]["steps"]
    assert cfg.align.estimator == PAPER["align"]["estimator"] and cfg.align.length_normalize is True
    assert cfg.align.rpo_tau == 2.0 and cfg.align.lr == PAPER["align"]["lr"]  # the typed flag wins
    assert cfg.world.seed == 4  # the world follows --seed


def test_a_policy_is_keyed_by_its_own_learning_rate_and_tau_only():
    data = Artifact(None, "data123", "")
    a = AlignConfig()
    key = lambda o, **c: stages.policy_key(data, o, 0, dataclasses.replace(a, **c))  # noqa: E731
    assert key("dro") == key("dro", rpo_lr=1.0, rpo_tau=9.0, sft_lr=1.0)  # others' settings don't matter
    assert key("dro") != key("dro", dro_lr=1.0) and key("dro") != key("dro", dro_tau=9.0)
    assert key("dro") == key("dro", lr=a.dro_lr)  # the same effective lr, however it was set
    assert key("sft") == key("sft", tau=5.0)  # τ does not apply to SFT
    assert key("rpo") != key("rpo", estimator="ref") and key("rpo") != stages.policy_key(data, "rpo", 1, a)
    assert key("rpo") != stages.policy_key(Artifact(None, "other", ""), "rpo", 0, a)


def _stage_keys(cfg: Config) -> dict:
    """Every stage's key from one Config, the keys of its inputs held fixed."""
    up = "upstream-key"
    keys = {"tokenizer": stages.tokenizer_key(cfg.world, cfg.tokenizer),
            "base model": stages.base_key(up, cfg.model, cfg.pretrain, cfg.run.seed, torch.float32),
            "dataset": stages.dataset_key(up, cfg.collect),
            "evaluation": stages.evaluation_key(up, cfg.eval, 0, ["a prompt"], cfg.collect.max_new_tokens)}
    fresh = Fresh(None, None, cfg.collect.reward, cfg.collect.max_new_tokens)
    return keys | {f"policy {o}": stages.policy_key(Artifact(None, up, ""), o, 0, cfg.align, fresh) for o in OBJECTIVES}


def _expected_reads(stage: str) -> set:
    """What each stage is handed, written out here: (section, field) pairs."""
    every = lambda section: {(section, f.name) for f in dataclasses.fields(getattr(Config(), section))}  # noqa: E731
    if stage.startswith("policy"):
        o = OBJECTIVES[stage.split()[1]]
        own = {"sft": {"sft_mode"}, "kto": {"beta", "kto_variant", "kto_threshold"}, "dro": {"dro_value", "online"},
               "rpo": {"estimator", "online"}, "rloo": {"group_size"}, "grpo": {"group_size", "grpo_std"},
               "apo": {"apo_beta1"}}[o.name]
        rates = {"lr", f"{o.name}_lr"} | ({"tau", f"{o.name}_tau"} if o.uses_tau else set())
        common = {"steps", "batch_size", "warmup", "grad_clip", "clip_separately", "length_normalize",
                  "rewards_zscore", "eval_every"}
        scored = {("collect", "reward"), ("collect", "max_new_tokens")} if o.fresh == "always" else set()
        return {("align", f) for f in common | own | rates} | scored
    return {"tokenizer": every("world") | every("tokenizer"),
            "base model": every("model") | every("pretrain") | {("run", "seed")},
            "dataset": every("collect"),
            "evaluation": every("eval") | {("collect", "max_new_tokens")}}[stage]


def _changed(value, f):
    """Another valid value of a field."""
    if "choices" in f.metadata:
        return next(c for c in f.metadata["choices"] if c != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if value is None:
        return 0.5
    if isinstance(value, tuple):
        return value + (1,)
    return value + "-changed" if value else "changed"


def test_every_stage_key_covers_exactly_what_the_stage_reads():
    base = Config()
    before = _stage_keys(base)
    for section, sub in ((f.name, getattr(base, f.name)) for f in dataclasses.fields(Config)):
        for f in dataclasses.fields(sub):
            cfg = dataclasses.replace(base, **{section: dataclasses.replace(sub, **{f.name: _changed(
                getattr(sub, f.name), f)})})
            after = _stage_keys(cfg)
            for stage in before:
                reads = (section, f.name) in _expected_reads(stage)
                assert (after[stage] != before[stage]) == reads, (stage, section, f.name, reads)


def _recording(obj, seen: set):
    """A copy of a config dataclass that adds the name of every field read to `seen`."""
    names = {f.name for f in dataclasses.fields(obj)}

    class Recording(type(obj)):
        def __getattribute__(self, name):
            if name in names:
                seen.add(name)
            return object.__getattribute__(self, name)

    copy = object.__new__(Recording)
    copy.__dict__.update(obj.__dict__)
    return copy


@pytest.mark.parametrize("objective,online", [(o, False) for o in OBJECTIVES] + [("rpo", True), ("dro", True)])
def test_training_reads_exactly_the_settings_its_policy_key_covers(tiny, objective, online):
    """Measured, not declared: every AlignConfig field an objective's training touches is one its
    key covers (checkpoint_every aside: it only says when the state is saved)."""
    st, base, data = tiny
    seen = set()
    cfg = _recording(dataclasses.replace(st.cfg.align, steps=2, online=online), seen)
    align(objective, base, data, cfg, 1e-4, 0.3 if OBJECTIVES[objective].uses_tau else None, 0, st.enc.eot_token,
          probe=lambda policy: {}, fresh=Fresh(st.world, st.enc, st.world.default_reward, 8))
    covered = {f for s, f in _expected_reads(f"policy {objective}") if s == "align"}
    covered = covered - {"lr", "tau", f"{objective}_lr", f"{objective}_tau"} | ({"group_size"} if online else set())
    assert seen - {"checkpoint_every"} == covered
    assert set(OBJECTIVES[objective].reads(cfg)) == covered


def test_the_sweep_sets_each_objective_s_own_learning_rate_and_knob():
    a = AlignConfig(lr=1.0, tau=2.0)
    chosen = {"rpo": {"lr": 3e-4, "rpo_tau": 1.0}, "kto": {"lr": 1e-4, "beta": 0.03}, "sft": {"lr": 3e-5, "sft_mode": "all"}}
    b = stages.with_sweep(a, chosen)
    assert (b.lr, b.tau) == (None, None)
    assert (b.rpo_lr, b.rpo_tau, b.kto_lr, b.beta, b.sft_lr, b.sft_mode) == (3e-4, 1.0, 1e-4, 0.03, 3e-5, "all")
    assert b.dro_lr == a.dro_lr and a.lr == 1.0  # untouched, and the input is not mutated


def test_report_aggregates_over_seeds_by_hand():
    runs = {"rpo": [{"reward": 1.0, "reward_ci": 0.5, "seconds": 2.0, "checkpoint": "a.pt", "samples": [["x", "y"]],
                     "generations": 1600},
                    {"reward": 2.0, "reward_ci": 0.4, "seconds": 4.0, "checkpoint": "b.pt", "samples": [],
                     "generations": 1600}],
            "reference": [{"reward": 0.3, "reward_ci": 0.2, "samples": []}]}
    p = report.aggregate(runs)["policies"]
    assert p["rpo"]["reward"] == 1.5 and p["rpo"]["reward_ci"] == pytest.approx(12.706 * math.sqrt(0.5) / math.sqrt(2))
    assert p["rpo"]["reward_per_seed"] == [1.0, 2.0] and p["rpo"]["checkpoints"] == ["a.pt", "b.pt"]
    assert p["rpo"]["samples"] == [["x", "y"]] and p["rpo"]["n_seeds"] == 2 and p["rpo"]["seconds"] == 3.0
    assert (p["reference"]["reward"], p["reference"]["reward_ci"]) == (0.3, 0.2)  # one seed: its own interval
    text = report.table({"policies": p})
    assert "+1.500 ±6.353" in text and "reference" in text.splitlines()[3]
    assert text.splitlines()[0].split()[-1] == "generated" and text.splitlines()[2].split()[-1] == "1,600"


def test_json_is_strict_and_writes_are_atomic(tmp_path):
    path = tmp_path / "m.json"
    write_json(str(path), {"a": float("nan"), "b": [1.0, float("inf")], "c": (1, 2)})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None], "c": [1, 2]}
    with pytest.raises(RuntimeError):
        with atomic_open(str(path)) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert json.loads(path.read_text())["c"] == [1, 2]  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # and no temporary file left behind


def test_the_sweep_trains_the_whole_grid_and_chooses_by_the_documented_rule(tiny, tmp_path):
    st, _, _ = tiny
    ctx = dataclasses.replace(st.ctx, out=str(tmp_path))
    for sub in ("checkpoints", "eval"):
        (tmp_path / sub).mkdir()
    cfg = dataclasses.replace(st.cfg, eval=dataclasses.replace(st.cfg.eval, eval_prompts=6))
    result = stages.sweep(ctx, st.world, st.tok, st.base_artifact, st.data_artifact, cfg, ["kto"])
    points = result["points"]["kto"]
    assert [(p["lr"], p["beta"]) for p in points] == [(lr, b) for lr in stages.SWEEP_LRS for b in (0.03, 0.1, 0.3)]
    assert len([f for f in (tmp_path / "checkpoints").iterdir() if f.suffix == ".pt"]) == 9  # one policy each
    fluent = [p for p in points if p["fluency"] >= 0.9] or [max(points, key=lambda p: p["fluency"])]
    assert result["chosen"]["kto"] == max(fluent, key=lambda p: p["gold"])
    assert json.loads((tmp_path / "sweep.json").read_text())["chosen"] == json.loads(json.dumps(result["chosen"]))


def test_evaluation_samples_the_configured_prompts_and_is_cached(tiny, tmp_path, monkeypatch):
    st, base, _ = tiny
    ctx = dataclasses.replace(st.ctx, out=str(tmp_path))
    (tmp_path / "eval").mkdir()
    ecfg = dataclasses.replace(st.cfg.eval, eval_prompts=3, eval_samples=2)
    s = stages.evaluate(ctx, "reference", st.base_artifact, base, 0, st.world, st.tok, ecfg, 8)
    assert s["prompts"] == [p for p in st.world.test_prompts[:3] for _ in range(2)] and s["n"] == 2
    assert all(len(st.enc.encode_ordinary(t)) <= 8 for t in s["texts"])
    monkeypatch.setattr(stages, "sample_and_score", lambda *a, **k: pytest.fail("sampled again"))
    assert stages.evaluate(ctx, "reference", st.base_artifact, base, 0, st.world, st.tok, ecfg, 8) == json.loads(json.dumps(s))


def test_probes_run_every_eval_every_steps_and_at_the_end(tiny):
    from rpo_mini.align import Alignment

    st, base, data = tiny
    cfg = dataclasses.replace(st.cfg.align, steps=5, eval_every=2)
    a = Alignment("rpo", base, data, cfg, lr=1e-4, tau=1.0, seed=0, eot=st.enc.eot_token)
    calls = []
    history = a.train(probe=lambda policy: calls.append(policy.training) or {"n": len(calls)}, log=lambda *x: None)
    assert [p["step"] for p in history["probe"]] == [0, 2, 4, 5] and calls == [False] * 4  # probed in eval mode
