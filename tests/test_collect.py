"""Collection: K samples per prompt, faithful log-probs, reproducible files."""

import filecmp

import pytest
import torch

from rpo_mini.collect import collect
from rpo_mini.data import write_jsonl
from rpo_mini.losses import sequence_logprobs
from rpo_mini.sampling import response_logprobs


def test_k_lines_per_prompt_and_fields(tiny):
    st, base, data = tiny
    k, n = st.cfg.collect.k, st.cfg.collect.n_prompts
    assert len(data) == k * n
    assert data.prompt_ids.tolist() == [i for i in range(n) for _ in range(k)]
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


def test_tempered_collection_records_the_reference_log_prob_not_the_sampler_s(tiny):
    """With temperature ≠ 1 or top-k the samples do not come from π_ref itself, but `ref_logp`
    must still be log π_ref(y|x): recomputed here by hand, and different from what T = 1 gives."""
    import dataclasses

    st, base, _ = tiny
    recs = {}
    for t, k in ((1.0, 0), (0.5, 0), (1.0, 5)):
        cfg = dataclasses.replace(st.cfg.collect, temperature=t, top_k=k, n_prompts=3)
        recs[t, k] = collect(base, st.enc, st.world, cfg, seed=0)
    for key, rs in recs.items():
        for r in rs[:4]:
            p, y = r["prompt_tokens"], r["response_tokens"]
            with torch.no_grad():
                logp = torch.log_softmax(base(torch.tensor([p + y]))[0].double(), -1)
            assert r["ref_logp"] == pytest.approx(sum(logp[len(p) - 1 + j, t].item() for j, t in enumerate(y)), abs=1e-3)
    assert [r["response"] for r in recs[0.5, 0]] != [r["response"] for r in recs[1.0, 0]]  # the options reach the sampler
    assert [r["response"] for r in recs[1.0, 5]] != [r["response"] for r in recs[1.0, 0]]


def test_the_training_reward_is_the_chosen_component(tiny):
    import dataclasses

    st, base, _ = tiny
    recs = collect(base, st.enc, st.world, dataclasses.replace(st.cfg.collect, reward="sentiment", n_prompts=2), seed=0)
    assert all(r["reward"] == st.world.score(r["prompt"], r["response"])["sentiment"] for r in recs)
    with pytest.raises(ValueError, match="is not a reward of the reviews world"):
        collect(base, st.enc, st.world, dataclasses.replace(st.cfg.collect, reward="charm", n_prompts=1), seed=0)


@pytest.fixture(scope="module")
def arith(tmp_path_factory):
    """A tiny arithmetic world, its tokenizer and an untrained base model (collection only needs
    the model for log π_ref), and its dataset of π_ref's own samples: about 3 s."""
    from rpo_mini import stages
    from rpo_mini.config import QUICK, Config, apply

    cfg = apply(Config(), QUICK)
    cfg.world.name = "arithmetic"
    apply(cfg, {"world": {"corpus_size": 500, "arithmetic_prompts": 100},
                "model": {"n_layer": 1, "n_embd": 16, "n_head": 2},
                "pretrain": {"pretrain_steps": 0}, "collect": {"n_prompts": 6, "k": 8, "max_new_tokens": 4}})
    cfg.run.out, cfg.run.device = str(tmp_path_factory.mktemp("arith-collect")), "cpu"
    return stages.materials(cfg), cfg


def test_off_policy_collection_in_the_arithmetic_world_records_the_generator_s_log_prob(arith, tmp_path):
    """Every off-policy record carries behavior_logp = log μ(y|x): log(1 − wrong_fraction) for the
    sum, log(wrong_fraction / (2·max_operand)) for any other answer (the generator's closed form),
    equal to `world.off_policy_logprob`; it survives the JSONL round trip as a float64 tensor."""
    import dataclasses
    import math

    from rpo_mini import rewards as R
    from rpo_mini.data import read_jsonl

    m, cfg = arith
    world, enc = m.world, m.tok.value
    recs = collect(m.base.value, enc, world, dataclasses.replace(cfg.collect, off_policy=True), seed=0)
    assert len(recs) == 6 * 8
    w, top = world.cfg.wrong_fraction, 2 * world.cfg.max_operand
    for r in recs:
        want = math.log(1 - w) if r["response"] == R.true_sum(r["prompt"]) else math.log(w / top)
        assert r["behavior_logp"] == pytest.approx(want, rel=1e-12)
        assert r["behavior_logp"] == world.off_policy_logprob(r["prompt"], r["response"])
    assert {r["response"] == R.true_sum(r["prompt"]) for r in recs} == {True, False}  # both kinds occur
    path = str(tmp_path / "off.jsonl")
    write_jsonl(recs, path)
    data = read_jsonl(path)
    assert data.behavior_logps.dtype == torch.float64
    assert data.behavior_logps.tolist() == [r["behavior_logp"] for r in recs]


def test_on_policy_records_have_no_behavior_log_prob(arith, tiny):
    m, _ = arith
    assert all("behavior_logp" not in r for r in m.data.value.records)
    assert m.data.value.behavior_logps is None
    # the reviews world's off-policy generator has no known probabilities: none recorded there either
    import dataclasses

    st, base, _ = tiny
    recs = collect(base, st.enc, st.world, dataclasses.replace(st.cfg.collect, off_policy=True, n_prompts=2), seed=0)
    assert all("behavior_logp" not in r for r in recs)


def test_each_record_s_fluency_is_the_world_s_judgement_of_its_text(tiny):
    """`fluent` is non-empty *and* in the world's language: a barely trained base writes both kinds."""
    st, _, data = tiny
    judged = [bool(r["response"]) and st.world.is_fluent(r["prompt"], r["response"]) for r in data.records]
    assert [r["fluent"] for r in data.records] == judged
    assert 0 < sum(judged) < len(judged)  # both kinds occur, so a wrong rule shows
