"""Collection: K samples per prompt, faithful log-probs, reproducible files."""

import filecmp

import torch

from rpo_mini.collect import collect, response_logprobs
from rpo_mini.data import read_jsonl, write_jsonl
from rpo_mini.losses import sequence_logprobs


def test_k_lines_per_prompt_and_fields(tiny):
    st, base, data = tiny
    k, n = st.cfg.collect.k, st.cfg.collect.n_prompts
    assert len(data) == k * n
    assert data.group_sizes() == {i: k for i in range(n)}
    rec = data.records[0]
    assert rec["prompt"] == st.world.train_prompts[rec["prompt_id"]]
    assert st.enc.decode(rec["prompt_tokens"]) == rec["prompt"]
    assert set(rec["rewards"]) == set(st.world.score(rec["prompt"], rec["response"]))
    assert rec["reward"] == rec["rewards"][st.world.default_reward]


def test_recorded_sampling_logprobs_match_a_recomputation(tiny):
    st, base, data = tiny
    eot = st.enc.eot_token
    recomputed = response_logprobs(base, data.prompt_tokens, data.response_tokens, eot)
    recorded = torch.tensor([r["ref_logp"] for r in data.records])
    assert torch.allclose(recorded, recomputed, atol=1e-3)
    # and by hand for one sample: sum of next-token log-probs over the response, EOT included
    p, r = data.prompt_tokens[0], data.response_tokens[0]
    with torch.no_grad():
        logp = torch.log_softmax(base(torch.tensor([p + r]))[0], -1)
    by_hand = sum(logp[len(p) - 1 + j, t].item() for j, t in enumerate(r))
    assert abs(by_hand - recorded[0].item()) < 1e-3


def test_two_collections_with_one_seed_give_identical_files_and_other_seeds_differ(tiny, tmp_path):
    st, base, _ = tiny
    paths = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        paths.append(str(tmp_path / f"{name}.jsonl"))
        write_jsonl(collect(base, st.enc, st.world, st.cfg.collect, seed), paths[-1])
    assert filecmp.cmp(paths[0], paths[1], shallow=False)
    assert not filecmp.cmp(paths[0], paths[2], shallow=False)


def test_off_policy_collection_scores_world_responses_under_the_reference(tiny):
    st, base, _ = tiny
    import dataclasses
    cfg = dataclasses.replace(st.cfg.collect, off_policy=True, n_prompts=4)
    recs = collect(base, st.enc, st.world, cfg, seed=0)
    assert len(recs) == 4 * cfg.k
    assert all(st.world.is_fluent(r["prompt"], r["response"]) for r in recs)  # the world's own text
    tokens = torch.tensor([recs[0]["prompt_tokens"] + recs[0]["response_tokens"]])
    mask = torch.tensor([[0.0] * len(recs[0]["prompt_tokens"]) + [1.0] * len(recs[0]["response_tokens"])])
    with torch.no_grad():
        expected = sequence_logprobs(base(tokens), tokens, mask).item()
    assert abs(recs[0]["ref_logp"] - expected) < 1e-4
