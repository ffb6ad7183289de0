"""RPO on your own causal LM, end to end: sample K completions per prompt from the model (π_ref),
score them, train with `RPOTrainer`, save.

    python integrations/rpo_on_your_model.py --model Qwen/Qwen2.5-0.5B-Instruct --out rpo-qwen
    accelerate launch --num_processes 4 integrations/rpo_on_your_model.py --model ... --out ...

Rewards: `--reward sentiment` scores each completion with a sentiment classifier (the probability
of "POSITIVE", `--reward_model`); `--reward lexicon` counts positive minus negative words from a
short list, and needs no second model. Prompts: `--prompts FILE` (one per line), or twelve
built-in review openings. The triplets are written to OUT/triplets (a `datasets` folder) by the
first process, and read from there when it exists, so a rerun trains on the same data.
The trained model goes to OUT/final (with `--lora`, its adapter: load it with peft's
`AutoPeftModelForCausalLM`). Bad input (no prompts, a missing file, data RPOTrainer refuses) exits
with code 2 and one message.
"""

import argparse
import os
import sys

PROMPTS = ["The movie was", "I watched this film and", "The acting in this movie", "This film is a",
           "The plot of the movie", "The best thing about this film", "Honestly, the movie", "The director",
           "The soundtrack", "The ending of the film", "Compared with the book, the movie", "My friends said the film"]
POSITIVE = {"good", "great", "excellent", "wonderful", "best", "love", "loved", "enjoyed", "beautiful", "fun",
            "brilliant", "amazing", "perfect", "favorite", "moving", "superb", "delightful"}
NEGATIVE = {"bad", "worst", "boring", "awful", "terrible", "poor", "waste", "dull", "hate", "hated", "stupid",
            "disappointing", "mess", "weak", "predictable", "annoying", "horrible"}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="name or path of the causal LM to align (also π_ref)")
    p.add_argument("--out", required=True, help="output folder: triplets, checkpoints, the final model")
    p.add_argument("--prompts", help="a text file, one prompt per line (default: twelve review openings)")
    p.add_argument("--k", type=int, default=8, help="completions sampled per prompt")
    p.add_argument("--max_new_tokens", type=int, default=48, help="longest completion sampled")
    p.add_argument("--reward", choices=("sentiment", "lexicon"), default="sentiment", help="how completions are scored")
    p.add_argument("--reward_model", default="distilbert/distilbert-base-uncased-finetuned-sst-2-english",
                   help="the sentiment classifier of --reward sentiment")
    p.add_argument("--tau", type=float, default=0.3, help="RPO's τ, in reward standard deviations")
    p.add_argument("--estimator", default="mean", help="log Ẑ(x) estimator: mean, loo, ref or uniform (RPOConfig)")
    p.add_argument("--lr", type=float, default=1e-6, help="learning rate")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the triplets")
    p.add_argument("--max_steps", type=int, default=-1, help="optimizer steps (overrides --epochs when > 0)")
    p.add_argument("--batch_size", type=int, default=8, help="rows per device per step")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (peft) instead of every weight")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def read_prompts(path):
    if path is None:
        return PROMPTS
    if not os.path.isfile(path):
        raise ValueError(f"--prompts {path}: no such file")
    with open(path, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts {path}: the file has no prompts")
    return prompts


def lexicon_rewards(texts):
    """#positive − #negative words, each word lower-cased and stripped of punctuation."""
    words = [[w.strip(".,!?;:\"'()").lower() for w in t.split()] for t in texts]
    return [float(sum(w in POSITIVE for w in ws) - sum(w in NEGATIVE for w in ws)) for ws in words]


def sentiment_rewards(texts, name, device):
    from transformers import pipeline
    classify = pipeline("sentiment-analysis", model=name, device=device, top_k=None)
    return [next(s["score"] for s in scores if s["label"].upper().startswith("POS"))
            for scores in classify(texts, truncation=True, batch_size=32)]


def sample_triplets(args, model, tok, prompts, device):
    """K completions per prompt from the model as it is (π_ref), decoded and scored: rows of
    (prompt, completion, reward)."""
    import torch
    torch.manual_seed(args.seed)
    model = model.to(device).eval()
    tok.padding_side = "left"  # generation continues each prompt right where it ends
    prompt_rows, completions = [], []
    with torch.no_grad():
        for s in range(0, len(prompts), 8):
            chunk = prompts[s:s + 8]
            enc = tok(chunk, return_tensors="pt", padding=True).to(device)
            out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=args.max_new_tokens, num_return_sequences=args.k,
                                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
            completions += tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            prompt_rows += [p for p in chunk for _ in range(args.k)]
    tok.padding_side = "right"
    if args.reward == "lexicon":
        rewards = lexicon_rewards(completions)
    else:
        rewards = sentiment_rewards(completions, args.reward_model, device)
    keep = [i for i, c in enumerate(completions) if c.strip()]  # an empty completion has nothing to score
    return [{"prompt": prompt_rows[i], "completion": completions[i], "reward": rewards[i]} for i in keep]


def main(argv=None):
    args = parse(argv)
    import torch
    from accelerate import PartialState
    from datasets import Dataset, load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from integrations.trl_rpo import RPOConfig, RPOTrainer

    # bad input fails at once, before anything is loaded or sampled
    prompts = read_prompts(args.prompts)
    config = RPOConfig(output_dir=args.out, tau=args.tau, estimator=args.estimator, learning_rate=args.lr,
                       num_train_epochs=args.epochs, max_steps=args.max_steps,
                       per_device_train_batch_size=args.batch_size, logging_steps=10, save_strategy="no",
                       report_to=[], seed=args.seed, use_cpu=not torch.cuda.is_available(),
                       bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    state = PartialState()
    tok = AutoTokenizer.from_pretrained(args.model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model)
    triplets = os.path.join(args.out, "triplets")
    if state.is_main_process and not os.path.isdir(triplets):
        rows = sample_triplets(args, model, tok, prompts, state.device)
        Dataset.from_list(rows).save_to_disk(triplets + ".partial")
        os.replace(triplets + ".partial", triplets)  # a folder that exists is complete
        print(f"sampled and scored {len(rows)} completions → {triplets}")
    state.wait_for_everyone()
    data = load_from_disk(triplets)
    peft_config = None
    if args.lora:
        from peft import LoraConfig
        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = RPOTrainer(model, args=config, train_dataset=data, processing_class=tok, peft_config=peft_config)
    trainer.train()
    trainer.save_model(os.path.join(args.out, "final"))
    if state.is_main_process:
        print(f"saved → {os.path.join(args.out, 'final')}")
    state.destroy_process_group()  # several processes: a live process group can abort the exit


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
    try:
        main()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
