"""Evaluation metrics on hand-worked examples."""

import math
from types import SimpleNamespace

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
    world = SimpleNamespace(gold_reward="gold")
    sc = lambda r, tox=0.0: {"r": r, "gold": -r, "toxicity": tox}
    policy = {"n": 2, "texts": ["a b", "a b", "c", "d"], "fluent": [True, True, False, True],
              "scores": [sc(1.0), sc(3.0), sc(0.0, 1.0), sc(2.0)], "log_ratio": [0.5, 1.5, 0.0, 2.0]}
    ref = {"scores": [sc(1.0), sc(1.0), sc(1.0), sc(1.0)]}
    m = summarize(policy, world, "r", ref)
    assert m["reward"] == (2.0 + 1.0) / 2  # prompt means 2 and 1
    assert m["gold"] == -1.5
    assert m["kl"] == (1.0 + 1.0) / 2
    assert m["win_rate"] == (0.5 + 1.0 + 0.0 + 1.0) / 4  # tie, win, loss, win
    assert m["toxicity_rate"] == 0.25 and m["fluency"] == 0.75
    assert m["length"] == (2 + 2 + 1 + 1) / 4
