"""Evaluation metrics on hand-worked examples."""

import math
from types import SimpleNamespace

import pytest

from rpo_mini.evaluate import distinct_n, mean_ci, summarize


def test_mean_ci_by_hand():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert math.isclose(half, 4.303 * 1.0 / math.sqrt(3))  # t(0.975, df=2) · sd / √n, sd = 1
    mean, half = mean_ci([0.0, 1.0] * 50)  # 100 values: normal quantile
    assert math.isclose(half, 1.96 * math.sqrt(100 / 99 * 0.25) / 10)
    _, half = mean_ci([1.0] * 12 + [2.0])  # df = 12 sits between table rows: the wider (df 10) value
    sd = math.sqrt(sum((v - 14 / 13) ** 2 for v in [1.0] * 12 + [2.0]) / 12)
    assert math.isclose(half, 2.228 * sd / math.sqrt(13))
    assert math.isnan(mean_ci([5.0])[1])


def test_distinct_n_by_hand():
    texts = ["a b a", "b a c"]  # unigrams a b a b a c -> {a, b, c}: 3/6; bigrams ab ba ba ac -> 3/4
    assert distinct_n(texts, 1) == 0.5
    assert distinct_n(texts, 2) == 0.75
    assert distinct_n(["x"], 2) == 0.0


def test_summarize_averages_per_prompt_and_counts_ties_as_half_wins():
    world = SimpleNamespace(gold_reward="gold", gold_floor=-5.0)
    sc = lambda r, tox=0.0: {"r": r, "gold": -r, "toxicity": tox}
    policy = {"n": 2, "texts": ["a b", "a b", "c", "d"], "fluent": [True, True, False, True],
              "scores": [sc(1.0), sc(3.0), sc(0.0, 1.0), sc(2.0)], "log_ratio": [0.5, 1.5, 0.0, 2.0]}
    ref = {"scores": [sc(1.0), sc(1.0), sc(1.0), sc(1.0)]}
    m = summarize(policy, world, "r", ref)
    assert m["reward"] == (2.0 + 1.0) / 2  # prompt means 2 and 1
    assert m["gold"] == -1.5
    assert m["gated_gold"] == ((-1.0 - 3.0) / 2 + (-5.0 - 2.0) / 2) / 2  # the non-fluent "c" scores -5
    assert m["kl"] == (1.0 + 1.0) / 2
    assert m["win_rate"] == (0.5 + 1.0 + 0.0 + 1.0) / 4  # tie, win, loss, win
    assert m["toxicity_rate"] == 0.25 and m["fluency"] == 0.75
    assert m["length"] == (2 + 2 + 1 + 1) / 4


@pytest.mark.parametrize("name", ["reviews", "arithmetic"])
def test_gated_gold_scores_a_non_fluent_sample_as_the_world_s_floor(name):
    """2 prompts × 2 samples; the non-fluent sample's gold is replaced by the world's floor
    (reviews −1, arithmetic 0) before the per-prompt means, by hand."""
    from rpo_mini.worlds import WorldConfig, make_world

    world = make_world(WorldConfig(name=name, corpus_size=10))
    g = world.gold_reward
    if name == "reviews":
        gold, fluent = [0.5, 0.8, -0.2, 0.9], [True, False, True, True]
        per_prompt = [(0.5 + -1.0) / 2, (-0.2 + 0.9) / 2]        # -0.25, 0.35
    else:
        gold, fluent = [1.0, 1.0, 0.0, 1.0], [False, True, True, False]
        per_prompt = [(0.0 + 1.0) / 2, (0.0 + 0.0) / 2]          # 0.5, 0.0
    s = {"prompts": ["p", "p", "q", "q"], "texts": ["a", "b", "c", "d"], "n": 2, "fluent": fluent,
         "scores": [{world.default_reward: 0.0, g: x} for x in gold], "log_ratio": [0.0] * 4}
    m = summarize(s, world, world.default_reward)
    assert m["gated_gold"] == pytest.approx(sum(per_prompt) / 2, abs=1e-12)
    # two prompt means: t(0.975, 1) · sd / √2 with sd = |difference| / √2
    assert m["gated_gold_ci"] == pytest.approx(12.706 * abs(per_prompt[0] - per_prompt[1]) / 2, rel=1e-12)
    assert m["gold"] == pytest.approx(sum(gold) / 4)                  # ungated gold is unchanged
    assert m["gated_gold"] < m["gold"]
    s["fluent"] = [True] * 4                                            # all fluent: the same as gold
    assert summarize(s, world, world.default_reward)["gated_gold"] == pytest.approx(m["gold"])


def test_the_kl_estimate_is_the_policy_minus_reference_log_prob_of_the_policy_samples(tiny):
    """log_ratio per sample = log π(y|x) − log π_ref(y|x) on the policy's own samples, each
    recomputed here from the two models; its mean (the KL estimate) is positive for a policy
    that differs from π_ref, and exactly 0 for π_ref against itself."""
    import copy

    import torch

    from rpo_mini.evaluate import sample_and_score

    st, base, _ = tiny
    policy = copy.deepcopy(base)
    with torch.no_grad():
        policy.lm_head.weight.add_(0.3 * torch.randn(policy.lm_head.weight.shape, generator=torch.Generator().manual_seed(0)))
    prompts = st.world.test_prompts[:6]
    s = sample_and_score(policy, base, st.enc, st.world, prompts, 4, 12, seed=5)
    eot = st.enc.eot_token
    for p, text, lr in zip(s["prompts"], s["texts"], s["log_ratio"]):
        x = st.enc.encode_ordinary(p)
        y = st.enc.encode_ordinary(text)
        y = y + [eot] if len(y) < 12 else y  # a response cut at 12 tokens has no end-of-text
        logp = lambda m: sum(torch.log_softmax(m(torch.tensor([x + y]))[0].double(), -1)[len(x) - 1 + t, tok].item()  # noqa: E731
                             for t, tok in enumerate(y))
        with torch.no_grad():
            assert lr == pytest.approx(logp(policy) - logp(base), abs=2e-3)
    m = summarize(s, st.world, st.world.default_reward)
    assert m["kl"] > 0.1
    same = summarize(sample_and_score(base, base, st.enc, st.world, prompts, 4, 12, seed=5), st.world,
                     st.world.default_reward)
    assert same["kl"] == pytest.approx(0.0, abs=1e-5)
    assert all(sc == st.world.score(p, t) for p, t, sc in zip(s["prompts"], s["texts"], s["scores"]))
    assert s["fluent"] == [bool(t) and st.world.is_fluent(p, t) for p, t in zip(s["prompts"], s["texts"])]


def test_over_seeds_by_hand():
    from rpo_mini.evaluate import over_seeds

    runs = [{"seed": 0, "a": 1.0, "a_ci": 0.3, "b": 2.0, "ok": True},
            {"seed": 1, "a": 3.0, "a_ci": 0.1, "b": float("nan")},
            {"seed": 2, "a": 100.0, "diverged": True}]
    mean, ci = over_seeds(runs)
    assert set(mean) == {"a", "b"}  # not the seed, the flags or the intervals
    assert mean["a"] == 2.0 and ci["a"] == pytest.approx(12.706)  # t(0.975, 1) · sd √2 / √2
    assert mean["b"] == 2.0 and math.isnan(ci["b"])  # NaN left out; one value and no interval of its own
    mean, ci = over_seeds(runs[:1])
    assert (mean["a"], ci["a"]) == (1.0, 0.3)  # one run keeps its own interval over prompts


def test_the_t_quantile_is_the_table_s_up_to_30_degrees_of_freedom_then_normal():
    from rpo_mini.evaluate import _t975

    assert _t975(30) == 2.042 and _t975(31) == 1.96 and _t975(12) == 2.228  # between entries: the smaller df's
    assert mean_ci([0.0, 2.0] * 16)[1] == pytest.approx(1.96 * math.sqrt(32 / 31) / math.sqrt(32))


def test_pareto_front_by_hand():
    from rpo_mini.evaluate import pareto_front

    # equal KL, higher value dominates; equal value, lower KL dominates; a duplicate does not dominate itself
    pts = [(1.0, 0.5), (1.0, 0.7), (2.0, 0.7), (0.5, 0.2), (0.5, 0.2)]
    assert pareto_front(pts) == [False, True, False, True, True]


def test_front_value_at_by_hand():
    from rpo_mini.evaluate import front_value_at

    pts = [(0.3, 0.1), (1.0, 0.8)]
    assert front_value_at(pts, 0.5, max_ratio=2.0) == pytest.approx(0.1 + 0.7 * 0.2 / 0.7)  # both within 2×
    assert front_value_at(pts, 0.7, max_ratio=2.0) is None  # 0.3 < 0.7 / 2: a chord, no read
    assert front_value_at(pts, 0.3, max_ratio=2.0) == 0.1 and front_value_at(pts, 1.0, max_ratio=2.0) == 0.8
    assert front_value_at(pts, 0.2) is None and front_value_at(pts, 1.5) is None  # never extrapolated
