"""RPOTrainer (integrations/trl_rpo.py) through real TRL and transformers, on the CPU, offline: a
tiny randomly initialised GPT-2 and a byte-level BPE tokenizer trained here, no Hub access.

Independent computations: log-probs by a per-token float64 loop over the model's logits, log Ẑ(x)
by per-prompt float64 loops, z-scoring by `statistics`; the toy's own alignment for the cross-check."""

import copy
import math
import os
import random
import statistics

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")             # nothing may download (set before any HF import)
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
pytest.importorskip("trl", reason="the TRL extra: pip install -e '.[trl]'")

from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast  # noqa: E402

from integrations.hf_gpt import to_transformers  # noqa: E402
from integrations.trl_rpo import RPOConfig, RPOTrainer  # noqa: E402

GOOD, BAD = ["great", "lovely", "superb", "fine"], ["awful", "dull", "bad", "poor"]
SUBJECTS = ["the film", "this book", "our meal", "the show", "that song", "my trip", "the hotel", "her talk"]
VERBS = ["was", "is", "seemed"]
TAU = 0.7  # deliberately not RPOConfig's default


def make_tokenizer():
    corpus = [f"{s} {verb} {w} and {v}." for s in SUBJECTS for verb in VERBS for w in GOOD + BAD for v in GOOD + BAD]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=320, special_tokens=["<eos>", "<pad>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    t = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<pad>")
    t.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
                       "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return t


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def tiny_model(tok, seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                      activation_function="gelu", bos_token_id=tok.eos_token_id,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))


def rows(n_prompts=24, seed=0):
    """Unequal groups: prompt p has 3 + p % 16 completions (220 rows for 24 prompts);
    reward = #good − #bad words."""
    rng, out = random.Random(seed), []
    prompts = [f"{s} {verb}" for verb in VERBS for s in SUBJECTS]
    for p, prompt in enumerate(prompts[:n_prompts]):
        for _ in range(3 + p % 16):
            words = [rng.choice(GOOD + BAD) for _ in range(rng.randint(1, 3))]
            out.append({"prompt": prompt, "completion": " " + " and ".join(words) + ".",
                        "reward": float(sum(w in GOOD for w in words) - sum(w in BAD for w in words))})
    return out


def config(tmp_path, **changes):
    base = dict(output_dir=str(tmp_path), tau=TAU, per_device_train_batch_size=8, learning_rate=1e-3,
                max_steps=3, logging_steps=1, bf16=False, report_to=[], save_strategy="no", use_cpu=True,
                gradient_checkpointing=False, seed=0)
    return RPOConfig(**base | changes)


def naive_logp(model, prompt_ids, completion_ids, mean=False):
    """log π(completion | prompt): one unpadded sequence, float64 log-softmax, a loop over tokens."""
    ids = torch.tensor([prompt_ids + completion_ids])
    model.eval()  # no dropout
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    total = sum(torch.log_softmax(logits[len(prompt_ids) + j - 1], -1)[t].item() for j, t in enumerate(completion_ids))
    return total / len(completion_ids) if mean else total


def naive_log_z(z, group, i, estimator, ref):
    """log Ẑ(x_i) from the other samples of its prompt (float64 loops over the group's indices)."""
    if estimator == "mean":
        return math.log(statistics.fmean(math.exp(z[j] / TAU) for j in group))
    if estimator == "loo":
        return math.log(statistics.fmean(math.exp(z[j] / TAU) for j in group if j != i))
    return math.log(sum(math.exp(ref[j] + z[j] / TAU) for j in group))  # "ref"


# --- the loss ---------------------------------------------------------------------------------

@pytest.mark.parametrize("estimator,length_normalize", [("mean", False), ("loo", False), ("ref", True)])
def test_first_batch_loss_equals_rpo_by_hand(tmp_path, tok, estimator, length_normalize):
    """The trainer's loss on its first batch, against log-probs, z-scores and log Ẑ computed by
    hand — with a separate π_ref, so that the log-ratio is not 0."""
    data = rows()
    policy, ref = tiny_model(tok, 0), tiny_model(tok, 1).eval()
    trainer = RPOTrainer(policy, ref_model=ref, args=config(tmp_path, estimator=estimator,
                                                               length_normalize=length_normalize),
                         train_dataset=Dataset.from_list(data), processing_class=tok)
    d = trainer.train_dataset
    raw = [r["reward"] for r in data]
    z = [(r - statistics.fmean(raw)) / statistics.stdev(raw) for r in raw]
    groups = {}
    for i, p in enumerate(d["prompt_index"]):
        groups.setdefault(p, []).append(i)
    ref_lp = [naive_logp(ref, d[i]["prompt_ids"], d[i]["completion_ids"], length_normalize) for i in range(len(d))]
    assert d["ref_logps"] == pytest.approx(ref_lp, abs=1e-4)
    # the first batch of the trainer's own dataloader, its rows found again by their tokens
    batch = next(iter(trainer.get_train_dataloader()))
    where = {tuple(r["prompt_ids"] + r["completion_ids"]): i for i, r in reversed(list(enumerate(d)))}
    idx = [where[tuple(t[m > 0].tolist())] for t, m in zip(batch["input_ids"], batch["attention_mask"])]
    assert len(idx) == 8
    loss = trainer.compute_loss(trainer.model, batch).item()
    expected = statistics.fmean(
        0.5 * (naive_logp(policy, d[i]["prompt_ids"], d[i]["completion_ids"], length_normalize) - ref_lp[i]
               - (z[i] / TAU - naive_log_z(z, groups[d[i]["prompt_index"]], i, estimator, ref_lp))) ** 2
        for i in idx)
    assert loss == pytest.approx(expected, rel=1e-5)


def test_training_raises_the_best_completion_and_lowers_the_worst(tmp_path, tok):
    """After some steps, each prompt's highest-reward completion has a positive log-ratio on
    average and its lowest-reward one a negative one (at the start, every log-ratio is 0)."""
    data = rows()
    model = tiny_model(tok)
    held_out = rows(seed=1)
    trainer = RPOTrainer(model, args=config(tmp_path, max_steps=40, learning_rate=3e-3, tau=1.0),
                         train_dataset=Dataset.from_list(data), eval_dataset=Dataset.from_list(held_out),
                         processing_class=tok)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < before["eval_loss"] and before["eval_log_ratio"] == pytest.approx(0, abs=1e-5)
    # the held-out rewards are z-scored with the training set's mean and std
    raw = [r["reward"] for r in data]
    assert trainer.eval_dataset["rpo_rewards"] == pytest.approx(
        [(r["reward"] - statistics.fmean(raw)) / statistics.stdev(raw) for r in held_out])
    d = trainer.train_dataset
    rho = [naive_logp(model, d[i]["prompt_ids"], d[i]["completion_ids"]) - d[i]["ref_logps"] for i in range(len(d))]
    best, worst = [], []
    for p in set(d["prompt_index"]):
        group = [i for i in range(len(d)) if d[i]["prompt_index"] == p]
        if len({d[i]["reward"] for i in group}) > 1:
            best.append(rho[max(group, key=lambda i: d[i]["reward"])])
            worst.append(rho[min(group, key=lambda i: d[i]["reward"])])
    assert statistics.fmean(best) > 0.2 and statistics.fmean(worst) < -0.2, (best, worst)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert {"log_ratio", "target", "abs_residual", "log_z", "reward_mean", "reward_std"} <= set(logged[0])
    assert logged[-1]["loss"] < logged[0]["loss"]


def test_gradient_accumulation_takes_the_full_batch_step(tmp_path, tok):
    """One plain SGD step (no clipping: a wrong scale would show) on 8 rows, and on the same 8 rows
    as two accumulated micro-batches of 4, give the same parameters: rpo_loss is a per-batch mean,
    which the Trainer divides by the number of accumulation steps (`loss_is_scaled_for_ga`)."""
    data = Dataset.from_list(rows())
    after = []
    for size, accumulate in ((8, 1), (4, 2)):
        trainer = RPOTrainer(tiny_model(tok), args=config(
            tmp_path / f"ga{accumulate}", per_device_train_batch_size=size, gradient_accumulation_steps=accumulate,
            max_steps=1, optim="sgd", learning_rate=0.5, max_grad_norm=0.0, lr_scheduler_type="constant"),
            train_dataset=data, processing_class=tok)
        trainer.train()
        after.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))
    before = torch.cat([p.detach().flatten() for p in tiny_model(tok).parameters()])
    assert (after[0] - before).abs().max() > 1e-3
    assert torch.allclose(after[0], after[1], atol=1e-6)


def test_bf16_computes_the_reference_under_the_same_autocast(tmp_path, tok):
    """With bf16 (CPU autocast) π_ref's log-probs are computed under the autocast the training
    forward runs in, so the log-ratio is exactly 0 before the first update (in float32 outside
    the autocast it would be off by about 1e-4)."""
    trainer = RPOTrainer(tiny_model(tok), args=config(tmp_path, bf16=True, max_steps=1),
                         train_dataset=Dataset.from_list(rows()), eval_dataset=Dataset.from_list(rows(seed=1)),
                         processing_class=tok)
    assert trainer.evaluate()["eval_log_ratio"] == pytest.approx(0, abs=1e-7)
    trainer.train()
    assert trainer.state.log_history[0]["log_ratio"] == pytest.approx(0, abs=1e-7)


# --- π_ref, saving, adapters --------------------------------------------------------------------

def test_reference_stays_frozen_and_defaults_to_the_untrained_model(tmp_path, tok):
    data = Dataset.from_list(rows())
    ref = tiny_model(tok, 1)
    before = copy.deepcopy(ref.state_dict())
    trainer = RPOTrainer(tiny_model(tok, 0), ref_model=ref, args=config(tmp_path), train_dataset=data,
                         processing_class=tok)
    trainer.train()
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items())
    assert not any(p.requires_grad for p in ref.parameters())
    # no ref_model: π_ref is the model before its first step
    model = tiny_model(tok, 2)
    initial = copy.deepcopy(model)
    trainer = RPOTrainer(model, args=config(tmp_path), train_dataset=data, processing_class=tok)
    trainer.train()
    d = trainer.train_dataset
    assert d["ref_logps"] == pytest.approx(
        [naive_logp(initial, r["prompt_ids"], r["completion_ids"]) for r in d], abs=1e-4)
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), initial.parameters()))


def test_save_and_reload_round_trip(tmp_path, tok):
    trainer = RPOTrainer(tiny_model(tok), args=config(tmp_path), train_dataset=Dataset.from_list(rows()),
                         processing_class=tok)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "saved")).eval()
    ids = torch.tensor([tok("the film was great.")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, trainer.model.eval()(input_ids=ids).logits)


def test_lora_trains_only_the_adapters(tmp_path, tok):
    peft = pytest.importorskip("peft")
    model = tiny_model(tok)
    base = copy.deepcopy(model)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM")
    trainer = RPOTrainer(model, args=config(tmp_path, max_steps=5, gradient_checkpointing=True),  # TRL's default
                         train_dataset=Dataset.from_list(rows()), processing_class=tok, peft_config=lora)
    trainer.train()
    trained = trainer.model
    names = [n for n, p in trained.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    frozen = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
              for n, p in trained.named_parameters() if "lora_" not in n}
    assert all(torch.equal(frozen[n], p) for n, p in base.named_parameters() if n in frozen)
    assert any(p.abs().sum() > 0 for n, p in trained.named_parameters() if "lora_B" in n)   # B starts at 0
    d = trainer.train_dataset   # π_ref: the adapters off, i.e. the base model
    assert d["ref_logps"] == pytest.approx([naive_logp(base, r["prompt_ids"], r["completion_ids"]) for r in d],
                                           abs=1e-4)


# --- the data -----------------------------------------------------------------------------------

def test_conversational_rows_go_through_the_chat_template(tmp_path, tok):
    data = [{"prompt": [{"role": "user", "content": f"{s}?"}],
             "completion": [{"role": "assistant", "content": w}], "reward": float(i)}
            for s in SUBJECTS[:3] for i, w in enumerate(GOOD[:2])]
    trainer = RPOTrainer(tiny_model(tok), args=config(tmp_path), train_dataset=Dataset.from_list(data),
                         processing_class=tok)
    row = trainer.train_dataset[0]
    text = tok.decode(row["prompt_ids"] + row["completion_ids"])
    assert text == "<|user|>the film?<eos><|assistant|>great<eos>"
    assert tok.decode(row["prompt_ids"]).endswith("<|assistant|>")
    assert trainer.train_dataset["prompt_index"] == [0, 0, 1, 1, 2, 2]


def test_pretokenized_rows_are_taken_as_given(tmp_path, tok):
    data = [{"prompt_ids": [5, 6, 7], "completion_ids": [8, 9, tok.eos_token_id], "reward": 1.0},
            {"prompt_ids": [5, 6, 7], "completion_ids": [10, tok.eos_token_id], "reward": 0.0},
            {"prompt_ids": [5, 6], "completion_ids": [11], "reward": 2.0}]
    trainer = RPOTrainer(tiny_model(tok), args=config(tmp_path), train_dataset=Dataset.from_list(data),
                         processing_class=tok)
    d = trainer.train_dataset
    assert d["completion_ids"] == [r["completion_ids"] for r in data] and d["prompt_index"] == [0, 0, 1]


@pytest.mark.parametrize("change,message", [
    (lambda r: [{k: v for k, v in x.items() if k != "reward"} for x in r], "has no column 'reward'"),
    (lambda r: r[:3] + [r[3] | {"reward": float("nan")}] + r[4:], r"row 3: reward nan is not a finite number"),
    (lambda r: r[:1] + [r[1] | {"reward": float("inf")}] + r[2:], r"row 1: reward inf is not a finite number"),
    (lambda r: r[:2] + [r[2] | {"completion": ""}] + r[3:], "row 2: the completion is empty"),
    (lambda r: r + [{"prompt": "a lone prompt", "completion": " fine.", "reward": 1.0}], "has one completion"),
])
def test_bad_rows_get_one_clear_message(tmp_path, tok, change, message):
    with pytest.raises(ValueError, match=message):
        RPOTrainer(tiny_model(tok), args=config(tmp_path, estimator="loo"),
                   train_dataset=Dataset.from_list(change(rows())), processing_class=tok)


def test_bad_settings_and_pretokenized_empty_completion(tmp_path, tok):
    with pytest.raises(ValueError, match="unknown estimator 'exact'"):
        config(tmp_path, estimator="exact")
    with pytest.raises(ValueError, match="tau must be a positive finite number"):
        config(tmp_path, tau=0.0)
    chat = [{"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "fine"}],
             "reward": 1.0}] * 2
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    with pytest.raises(ValueError, match="conversational .* but the tokenizer has no chat template"):
        RPOTrainer(tiny_model(tok), args=config(tmp_path), train_dataset=Dataset.from_list(chat), processing_class=plain)
    bad = [{"prompt_ids": [5, 6], "completion_ids": [], "reward": 1.0}]
    with pytest.raises(ValueError, match="row 0: the completion is empty"):
        RPOTrainer(tiny_model(tok), args=config(tmp_path), train_dataset=Dataset.from_list(bad), processing_class=tok)


# --- the cross-check with the toy -----------------------------------------------------------------

def test_same_first_step_loss_as_the_toy(tiny, tok, tmp_path):
    """The reviews world's dataset as a `datasets.Dataset`, the toy GPT mapped into GPT-2: the
    trainer's ref log-probs, rewards, log Ẑ and loss on the toy's first batch are the toy's."""
    import dataclasses

    from rpo_mini.align import Alignment
    st, base, data = tiny
    eot = st.enc.eot_token
    cfg = dataclasses.replace(st.cfg.align, estimator="ref", length_normalize=False, rewards_zscore=True)
    a = Alignment("rpo", base, data, cfg, lr=1e-3, tau=TAU, seed=0, eot=eot)
    with torch.no_grad():   # a policy away from π_ref, so that the log-ratios are not 0
        g = torch.Generator().manual_seed(0)
        for p in a.policy.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    export = Dataset.from_dict({"prompt_ids": data.prompt_tokens, "completion_ids": data.response_tokens,
                                "reward": data.rewards.tolist()})
    trainer = RPOTrainer(to_transformers(a.policy, eot), ref_model=to_transformers(base, eot),
                         args=config(tmp_path, estimator="ref", max_length=None), train_dataset=export,
                         processing_class=tok)
    d, f = trainer.train_dataset, a.fixed
    assert d["prompt_index"] == data.prompt_ids.tolist()
    assert d["ref_logps"] == pytest.approx(f["ref_logps"].tolist(), abs=2e-4)
    assert d["rpo_rewards"] == pytest.approx(f["rewards"].tolist(), abs=1e-6)
    assert d["log_z"] == pytest.approx(f["log_z"].tolist(), abs=2e-4)
    idx = a.batch(0)
    toy_loss, _ = a.loss(idx)
    batch = trainer.collate([d[i] for i in idx.tolist()])
    assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(toy_loss.item(), rel=1e-4)


# --- the example ----------------------------------------------------------------------------------

def test_example_samples_scores_trains_and_saves(tmp_path, tok):
    """integrations/rpo_on_your_model.py end to end on a tiny local model (no Hub): K samples per
    prompt, lexicon rewards, two steps, the final model saved; rerun, it reads its triplets back."""
    from integrations import rpo_on_your_model as example
    tiny_model(tok).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    (tmp_path / "prompts.txt").write_text("the film was\nthis book was\n\nour meal was\n")
    argv = ["--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"), "--prompts", str(tmp_path / "prompts.txt"),
            "--k", "3", "--max_new_tokens", "6", "--reward", "lexicon", "--max_steps", "2", "--batch_size", "4"]
    example.main(argv)
    triplets = Dataset.load_from_disk(str(tmp_path / "out" / "triplets"))
    assert set(triplets["prompt"]) <= {"the film was", "this book was", "our meal was"} and len(triplets) <= 9
    assert AutoModelForCausalLM.from_pretrained(str(tmp_path / "out" / "final")) is not None
    assert example.lexicon_rewards(["A great, LOVELY... dull film!", "superb"]) == [0.0, 1.0]  # +great −dull; "lovely" is not listed
    with pytest.raises(ValueError, match="no such file"):
        example.main(argv[:4] + ["--prompts", str(tmp_path / "missing.txt")])
    with pytest.raises(ValueError, match="unknown estimator 'exact'"):   # refused before any sampling
        example.main(argv[:4] + ["--estimator", "exact"])


def test_example_exits_2_on_bad_input(tmp_path):
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), "integrations", "rpo_on_your_model.py")
    (tmp_path / "empty.txt").write_text("\n\n")
    r = subprocess.run([sys.executable, script, "--model", "x", "--out", str(tmp_path / "o"),
                        "--prompts", str(tmp_path / "empty.txt")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == f"error: --prompts {tmp_path / 'empty.txt'}: the file has no prompts"
    assert not (tmp_path / "o").exists()


# --- two processes --------------------------------------------------------------------------------

DDP_SCRIPT = """
import json, os, sys
sys.path[:0] = [sys.argv[1], os.path.dirname(sys.argv[1])]
import torch
import test_trl_rpo as t
from datasets import Dataset
tok = t.make_tokenizer()
trainer = t.RPOTrainer(t.tiny_model(tok), args=t.config(sys.argv[2], per_device_train_batch_size=4, max_steps=3,
                       ddp_backend="gloo"), train_dataset=Dataset.from_list(t.rows()), processing_class=tok)
d = trainer.train_dataset
fixed = {"ref_logps": list(d["ref_logps"]), "log_z": list(d["log_z"]), "world": trainer.accelerator.num_processes}
trainer.train()
fixed["params"] = [p.detach().double().sum().item() for p in trainer.model.parameters()]
with open(os.path.join(sys.argv[2], f"rank{trainer.accelerator.process_index}.json"), "w") as f:
    json.dump(fixed, f)
trainer.accelerator.state.destroy_process_group()  # a live gloo group can abort the process at exit
"""


def test_two_processes_share_the_fixed_numbers_and_stay_in_sync(tmp_path, tok):
    """torchrun, two CPU processes (gloo): each computes π_ref's log-probs for half the rows, and
    both end up with the single-process values; after training the two copies are equal."""
    import json
    import subprocess
    import sys
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(tmp_path / "ddp.py"), os.path.dirname(__file__), str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, "\n".join(line for line in r.stderr.splitlines() if "Error" in line or "error" in line)
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    single = RPOTrainer(tiny_model(tok), args=config(tmp_path / "single"), train_dataset=Dataset.from_list(rows()),
                        processing_class=tok).train_dataset
    for rank in ranks:
        assert rank["world"] == 2
        assert rank["ref_logps"] == pytest.approx(single["ref_logps"], abs=1e-5)
        assert rank["log_z"] == pytest.approx(single["log_z"], abs=1e-6)
    assert ranks[0]["params"] == ranks[1]["params"]
