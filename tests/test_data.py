"""The dataset file, its validation, and the batches built from it."""

import json
import math

import pytest
import torch

from rpo_mini.data import DatasetError, collate, collate_prompts, read_jsonl, reward_stats, write_jsonl


def record(**kw):
    r = {"prompt_id": 0, "prompt": "p", "response": " r", "prompt_tokens": [5, 6], "response_tokens": [7, 0],
         "reward": 1.0, "rewards": {"x": 1.0}, "ref_logp": -3.0, "fluent": True}
    r.update(kw)
    return r


def test_collate_masks_on_a_hand_built_batch():
    tokens, mask, last = collate([[1, 2, 3], [4]], [[5, 0], [6, 7, 8, 0]], pad_id=0)
    assert tokens.tolist() == [[1, 2, 3, 5, 0], [4, 6, 7, 8, 0]]
    # response tokens, end-of-text included, are 1; prompt and padding 0
    assert mask.tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 1]]
    assert last.tolist() == [2, 0]
    tokens, mask, _ = collate([[1], [2, 3, 4]], [[5, 0], [6, 0]], pad_id=0)
    assert tokens.tolist() == [[1, 5, 0, 0, 0], [2, 3, 4, 6, 0]]
    assert mask.tolist() == [[0, 1, 1, 0, 0], [0, 0, 0, 1, 1]]  # the padding 0s are not the response's 0


def test_collate_prompts_right_pads_and_points_at_the_last_prompt_token():
    tokens, last = collate_prompts([[1, 2, 3], [4]], pad_id=9)
    assert tokens.tolist() == [[1, 2, 3], [4, 9, 9]]
    assert last.tolist() == [2, 0]


def test_jsonl_round_trips_to_identical_tensors(tmp_path):
    recs = [record(prompt_id=i // 2, reward=float(i) / 3, response_tokens=[7 + i, 0]) for i in range(6)]
    path = str(tmp_path / "d.jsonl")
    write_jsonl(recs, path)
    data = read_jsonl(path)
    assert data.prompt_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(data.rewards, torch.tensor([i / 3 for i in range(6)], dtype=torch.float64))
    assert data.response_tokens == [[7 + i, 0] for i in range(6)]
    assert data.records == recs
    assert data.prompt_ids.tolist() == [0, 0, 1, 1, 2, 2] and data.lone_prompts() == 0


def test_behavior_logps_is_float64_when_every_record_has_one_and_none_otherwise(tmp_path):
    values = [-0.25, 0.0, -3.5, -1e-3]  # 0.0 is a valid log-probability (μ(y|x) = 1)
    path = str(tmp_path / "d.jsonl")
    write_jsonl([record(prompt_id=i // 2, behavior_logp=v) for i, v in enumerate(values)], path)
    got = read_jsonl(path).behavior_logps
    assert got.dtype == torch.float64 and got.tolist() == values
    write_jsonl([record(prompt_id=0, behavior_logp=-1.0), record(prompt_id=0)], path)  # one record lacks it
    assert read_jsonl(path).behavior_logps is None
    write_jsonl([record(), record()], path)
    assert read_jsonl(path).behavior_logps is None


def test_lone_prompts_are_counted(tmp_path):
    path = str(tmp_path / "d.jsonl")
    write_jsonl([record(prompt_id=0), record(prompt_id=0), record(prompt_id=1), record(prompt_id=2)], path)
    assert read_jsonl(path).lone_prompts() == 2


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("reward"), "missing field.*reward"),
    (lambda r: r.update(reward=float("nan")), "reward nan is not a finite number"),
    (lambda r: r.update(reward=float("inf")), "reward inf is not a finite number"),
    (lambda r: r.update(response_tokens=[]), "empty response"),
    (lambda r: r.update(response_tokens=list(range(30))), "longer than the model's context window of 16"),
    (lambda r: r.update(behavior_logp=0.5), "behavior_logp 0.5 is not a finite log-probability"),
    (lambda r: r.update(behavior_logp=float("nan")), "behavior_logp nan is not a finite log-probability"),
    (lambda r: r.update(behavior_logp=float("-inf")), "behavior_logp -inf is not a finite log-probability"),
    (lambda r: r.update(behavior_logp="-1.0"), "behavior_logp '-1.0' is not a finite log-probability"),
    (lambda r: r.update(behavior_logp=None), "behavior_logp None is not a finite log-probability"),
])
def test_bad_records_are_refused_with_the_line_named(tmp_path, change, message):
    bad = record()
    change(bad)
    path = tmp_path / "d.jsonl"
    # json.dumps writes NaN/Infinity, which json.loads accepts: the check must be ours
    path.write_text(json.dumps(record()) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DatasetError, match=f"d.jsonl:2: .*{message}"):
        read_jsonl(str(path), block_size=16)


def test_not_json_and_missing_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("{not json\n")
    with pytest.raises(DatasetError, match="d.jsonl:1: not valid JSON"):
        read_jsonl(str(path))
    with pytest.raises(DatasetError, match="does not exist"):
        read_jsonl(str(tmp_path / "nope.jsonl"))


def test_reward_stats_zscore():
    r = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)
    mean, std = reward_stats(r)
    assert mean == 3.0
    assert math.isclose(std, math.sqrt((4 + 1 + 0 + 9) / 3))
    assert reward_stats(torch.ones(5, dtype=torch.float64)) == (1.0, 1.0)  # constant: no division by 0
