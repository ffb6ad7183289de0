"""RPO on any Hugging Face causal LM: `RPOTrainer` and `RPOConfig`, in TRL's conventions.

    from datasets import Dataset
    from integrations.trl_rpo import RPOConfig, RPOTrainer

    data = Dataset.from_list([{"prompt": "The film was", "completion": " a delight.", "reward": 0.9}, ...])
    trainer = RPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", args=RPOConfig(output_dir="rpo-out", tau=0.3),
                         train_dataset=data)
    trainer.train()

The data: one row per completion, several completions per prompt, columns `prompt`, `completion`,
`reward` (plain text, or conversational: lists of {"role", "content"} messages rendered with the
tokenizer's chat template), or already tokenized as `prompt_ids`, `completion_ids`, `reward`.

What the trainer does, in order:

  1. tokenizes each row (an end-of-sequence token closes each plain-text completion), numbers
     the distinct prompts, and refuses data it cannot train on, with one message naming the row;
  2. once, before any step: log π_ref(y|x) of every row, the rewards z-scored by the training
     set's mean and std (`rpo_mini.data.reward_scale`), and each prompt's log Ẑ(x) from its
     completions (`rpo_mini.losses.rpo_inputs`: the "mean", "loo", "ref" or "uniform"
     estimator). They become columns of the training set;
  3. each step: log π_θ(y|x) by `rpo_mini.losses.sequence_logprobs` and the loss by
     `rpo_mini.losses.rpo_loss`,

        L = ½ · mean_i (log π_θ(y_i|x_i) − log π_ref(y_i|x_i) − (r_i/τ − log Ẑ(x_i)))²,

     the functions the toy trains with, imported here, not copied.

Why no reference model is held during training: RPO's target r/τ − log Ẑ(x) and π_ref's
log-probs are fixed numbers once computed, so only π_θ is ever run again. Without a `ref_model`,
π_ref is the model itself before its first step (with a `peft_config`: the model with its
adapters off), and no second copy is kept in memory.

Multi-GPU: `accelerate launch` (DDP, FSDP, DeepSpeed) as for any TRL trainer. The log-probs of
step 2 are computed by every process on its share of the rows and gathered, so that each one
estimates log Ẑ(x) from all of a prompt's completions.
"""

import contextlib
import inspect
import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from accelerate.utils import gather_object
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from trl.data_utils import is_conversational, maybe_apply_chat_template
from trl.trainer.base_config import _BaseConfig
from trl.trainer.base_trainer import _BaseTrainer
from trl.trainer.utils import disable_dropout_in_model

from rpo_mini import losses
from rpo_mini.data import collate, reward_scale

ESTIMATORS = ("mean", "loo", "ref", "uniform")  # the estimators that need nothing but the rows
TEXT_COLUMNS = ("prompt", "completion", "reward")
TOKEN_COLUMNS = ("prompt_ids", "completion_ids", "reward")
FIXED = ("ref_logps", "rpo_rewards", "log_z")  # what step 2 adds to each row


@dataclass
class RPOConfig(_BaseConfig):
    """Configuration of `RPOTrainer`: TRL's `TrainingArguments` plus RPO's own settings.

    tau:              the KL strength τ of max E[r] − τ·KL(π‖π_ref), in the units of the rewards
                      trained on (z-scored rewards: τ in reward standard deviations)
    estimator:        how log Ẑ(x) is estimated from a prompt's completions: "mean" (log-mean-exp,
                      each completion in its own estimate), "loo" (leave-one-out, at least two
                      completions per prompt), "ref" (weights π_ref(y|x), the RPO authors' code) or
                      "uniform" (the rewards replaced by their within-prompt ranks)
    rewards_zscore:   z-score the rewards by the training set's mean and std first
    length_normalize: per-token mean log-probs instead of sums (π_ref's too)
    max_length:       longest prompt + completion in tokens; longer rows are refused (None: no limit)
    disable_dropout:  dropout off, so that π_θ = π_ref gives log-ratio 0 at the first step
    precompute_ref_batch_size: rows per forward pass in step 2 (default per_device_train_batch_size)
    """

    tau: float = field(default=0.3, metadata={"help": "KL strength τ, in the units of the rewards trained on"})
    estimator: str = field(default="mean", metadata={"help": "log Ẑ(x) estimator", "choices": list(ESTIMATORS)})
    rewards_zscore: bool = field(default=True, metadata={"help": "z-score rewards by the training set's mean and std"})
    length_normalize: bool = field(default=False, metadata={"help": "per-token mean log-probs instead of sums"})
    max_length: int | None = field(default=1024, metadata={"help": "longest prompt + completion, in tokens"})
    disable_dropout: bool = field(default=True, metadata={"help": "turn dropout off in the model"})
    precompute_ref_batch_size: int | None = field(default=None, metadata={"help": "rows per reference pass"})
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW's learning rate"})

    def __post_init__(self):
        if not (isinstance(self.tau, (int, float)) and math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"tau must be a positive finite number, got {self.tau!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; valid: {', '.join(ESTIMATORS)}")
        super().__post_init__()


class RPOTrainer(_BaseTrainer):
    """Reward Partition Optimization (Faye et al., arXiv 2506.13702) on (prompt, completion,
    reward) rows, a `transformers.Trainer` in TRL's conventions.

    model:            a `PreTrainedModel` or a name/path for `AutoModelForCausalLM.from_pretrained`
    ref_model:        π_ref, frozen; default: `model` itself before training (adapters off with PEFT)
    args:             `RPOConfig`
    train_dataset:    a `datasets.Dataset` (see the module docstring); eval_dataset likewise, its log Ẑ
                      from its own rows, its rewards z-scored like the training set's
    processing_class: the tokenizer (default: the model's, from its name or path)
    peft_config:      a `peft.PeftConfig`: train adapters only
    """

    _tag_names = ["trl", "rpo"]
    _name = "RPO"
    _paper = {"title": "Value-Free Policy Optimization via Reward Partitioning", "id": "2506.13702"}
    loss_is_scaled_for_ga = False  # rpo_loss is a per-batch mean: the Trainer divides by the accumulation steps

    def __init__(self, model, ref_model: PreTrainedModel | None = None, args: RPOConfig | None = None,
                 train_dataset: Dataset | None = None, eval_dataset: Dataset | None = None,
                 processing_class=None, callbacks=None, optimizers=(None, None), peft_config=None):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = RPOConfig(output_dir=f"{name.split('/')[-1] or 'model'}-RPO")
        if isinstance(model, str):
            model = AutoModelForCausalLM.from_pretrained(model, **(args.model_init_kwargs or {}))
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model.config._name_or_path)
        if train_dataset is None:
            raise ValueError("RPOTrainer needs a train_dataset with columns prompt, completion, reward")
        self.pad_id = processing_class.pad_token_id
        if self.pad_id is None:
            self.pad_id = processing_class.eos_token_id
        if peft_config is not None:
            from peft import get_peft_model
            model = get_peft_model(model, peft_config)
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
        if args.disable_dropout:
            disable_dropout_in_model(model)
            if ref_model is not None:
                disable_dropout_in_model(ref_model)
        self.ref_model = ref_model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._keeps_logits = "logits_to_keep" in inspect.signature(base.forward).parameters
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

        train_dataset = tokenize(train_dataset, processing_class, args, "train")
        if eval_dataset is not None:
            eval_dataset = tokenize(eval_dataset, processing_class, args, "eval")
        super().__init__(model=model, args=args, data_collator=self.collate, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, callbacks=callbacks,
                         optimizers=optimizers)
        if self.ref_model is not None:
            self.ref_model = self.accelerator.prepare_model(self.ref_model, evaluation_mode=True)
        # Step 2, before any training step: π_ref's log-probs, the rewards trained on and log Ẑ(x).
        # (held-out rows are z-scored in the training set's units)
        scale = reward_scale(torch.tensor(train_dataset["reward"], dtype=torch.float64), args.rewards_zscore)
        self.train_dataset = self.fix(train_dataset, scale)
        if eval_dataset is not None:
            self.eval_dataset = self.fix(eval_dataset, scale)

    # --- data ---------------------------------------------------------------------------------

    def collate(self, rows: list) -> dict:
        """Rows → right-padded input_ids, attention_mask and completion_mask (B, T), and the rows'
        fixed numbers (B,) float32, as the toy's minibatches are (`rpo_mini.data.collate`)."""
        tokens, mask, _ = collate([r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows], self.pad_id)
        lengths = torch.tensor([len(r["prompt_ids"]) + len(r["completion_ids"]) for r in rows])
        batch = {"input_ids": tokens, "completion_mask": mask,
                 "attention_mask": (torch.arange(tokens.shape[1]) < lengths[:, None]).long()}
        for key in ("reward",) + FIXED:
            if key in rows[0]:
                batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.float32)
        return batch

    def _set_signature_columns_if_needed(self):
        self._signature_columns = list(TOKEN_COLUMNS + FIXED)

    def sequence_logps(self, model, batch: dict) -> torch.Tensor:
        """log π(y|x) of each row (B,): summed over the completion's tokens (or their mean).

        Only the positions from the shortest prompt's last token on are turned into logits
        (`logits_to_keep`, where the model takes it): the others predict prompt tokens."""
        tokens, mask = batch["input_ids"], batch["completion_mask"]
        start = int(mask.argmax(1).min()) - 1   # the first position whose logits predict a completion token
        keep = tokens.shape[1] - start
        extra = {"logits_to_keep": keep} if self._keeps_logits else {}
        logits = model(input_ids=tokens, attention_mask=batch["attention_mask"], use_cache=False, **extra).logits
        return losses.sequence_logprobs(logits[:, -keep:], tokens[:, start:], mask[:, start:],
                                        self.args.length_normalize)

    def _reference(self):
        """π_ref and the context to run it in: the ref_model, or the model with its adapters off."""
        if self.ref_model is not None:
            return self.ref_model, contextlib.nullcontext()
        model = self.accelerator.unwrap_model(self.model)
        return model, (model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext())

    def fix(self, dataset: Dataset, scale) -> Dataset:
        """Step 2: π_ref's log-probs of every row (each process its share, then gathered), the
        rewards trained on (`scale`: the z-scoring, `rpo_mini.data.RewardScale`) and log Ẑ(x),
        added as columns."""
        model, context = self._reference()
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        mine = list(range(rank, len(dataset), world))
        size = self.args.precompute_ref_batch_size or self.args.per_device_train_batch_size
        was_training, device = model.training, self.accelerator.device
        model.eval()
        found = []
        with torch.no_grad(), context, self.accelerator.autocast():
            for s in range(0, len(mine), size):
                index = mine[s:s + size]
                batch = {k: v.to(device) for k, v in self.collate([dataset[i] for i in index]).items()}
                found += zip(index, self.sequence_logps(model, batch).float().cpu().tolist())
        model.train(was_training)
        ref_logps = dict(gather_object(found) if world > 1 else found)
        ref_logps = torch.tensor([ref_logps[i] for i in range(len(dataset))], dtype=torch.float64)
        if not torch.isfinite(ref_logps).all():
            row = int((~torch.isfinite(ref_logps)).nonzero()[0])
            raise ValueError(f"row {row}: π_ref gives its completion log-probability {ref_logps[row].item()}; "
                             f"RPO's log-ratio would not be finite")
        rewards = scale(torch.tensor(dataset["reward"], dtype=torch.float64))
        rewards, log_z = losses.rpo_inputs(rewards, torch.tensor(dataset["prompt_index"]), self.args.tau,
                                           self.args.estimator, ref_logps=ref_logps)
        for name, values in zip(FIXED, (ref_logps, rewards, log_z)):
            dataset = dataset.add_column(name, values.tolist())
        return dataset

    # --- the loss -----------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps = self.sequence_logps(model, inputs)
        loss, metrics = losses.rpo_loss(logps, inputs["ref_logps"], inputs["rpo_rewards"], inputs["log_z"],
                                        self.args.tau)
        if not math.isfinite(metrics["loss"]):  # never train on through a NaN
            raise FloatingPointError(f"RPO's loss is {metrics['loss']} at step {self.state.global_step}; "
                                     f"lower the learning rate or check the model's dtype")
        reward = inputs["reward"]
        logged = {"log_ratio": metrics["log_ratio"], "target": metrics["target"],
                  "abs_residual": metrics["abs_residual"], "log_z": inputs["log_z"].mean().item(),
                  "reward_mean": reward.mean().item(), "reward_std": reward.std().item() if len(reward) > 1 else 0.0}
        means = self.accelerator.gather(torch.tensor([list(logged.values())], device=self.accelerator.device))
        mode = "train" if model.training else "eval"
        for key, value in zip(logged, means.mean(0).tolist()):  # the mean over processes
            self._metrics[mode][key].append(value)
        return (loss, logps) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict, start_time: float | None = None) -> None:
        """The Trainer's logs plus the means since the last log: the log-ratio log π_θ/π_ref, the
        target r/τ − log Ẑ, |residual|, log Ẑ and the raw rewards' mean and std."""
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        # in place: `evaluate()` returns the very dict it logs
        logs.update({prefix + k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v})
        self._metrics[mode].clear()
        super().log(logs, start_time)


# --- tokenizing and checking the rows ---------------------------------------------------------

def tokenize(dataset: Dataset, tokenizer, args: RPOConfig, name: str) -> Dataset:
    """Rows → prompt_ids, completion_ids, reward and prompt_index (the number of the row's
    prompt, in order of first appearance), or a ValueError that names the first bad row."""
    columns = set(dataset.column_names)
    wanted = TOKEN_COLUMNS if {"prompt_ids", "completion_ids"} <= columns else TEXT_COLUMNS
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise ValueError(f"the {name} dataset has no column {missing[0]!r}: RPOTrainer needs one row per completion "
                         f"with columns prompt, completion, reward (or prompt_ids, completion_ids, reward); "
                         f"it has {', '.join(sorted(columns)) or 'none'}")
    if wanted == TEXT_COLUMNS and len(dataset) and is_conversational(dataset[0]) \
            and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"the {name} dataset is conversational (lists of messages), but the tokenizer has no chat "
                         f"template to render them with; set tokenizer.chat_template or give plain-text rows")
    out = {"prompt_ids": [], "completion_ids": [], "reward": [], "prompt_index": []}
    numbers, keys = {}, []
    for i, row in enumerate(dataset):
        reward = row["reward"]
        if not isinstance(reward, (int, float)) or isinstance(reward, bool) or not math.isfinite(reward):
            raise ValueError(f"{name} dataset, row {i}: reward {reward!r} is not a finite number")
        if wanted == TOKEN_COLUMNS:
            key, prompt_ids, completion_ids = tuple(row["prompt_ids"]), list(row["prompt_ids"]), list(row["completion_ids"])
            empty = not completion_ids
        else:
            key, prompt_ids, completion_ids, empty = _tokenize_text(row, tokenizer)
        if empty:
            raise ValueError(f"{name} dataset, row {i}: the completion is empty; RPO scores a response, so every "
                             f"row needs one")
        if not prompt_ids:
            raise ValueError(f"{name} dataset, row {i}: the prompt is empty (no tokens)")
        if args.max_length is not None and len(prompt_ids) + len(completion_ids) > args.max_length:
            raise ValueError(f"{name} dataset, row {i}: prompt + completion is {len(prompt_ids) + len(completion_ids)} "
                             f"tokens, more than max_length={args.max_length}; shorten it or raise max_length")
        if key not in numbers:
            numbers[key] = len(numbers)
            keys.append(key)
        for column, value in zip(out, (prompt_ids, completion_ids, float(reward), numbers[key])):
            out[column].append(value)
    counts = torch.bincount(torch.tensor(out["prompt_index"], dtype=torch.long))
    if args.estimator == "loo" and (counts < 2).any():
        lone = keys[int((counts < 2).nonzero()[0])]
        shown = lone if isinstance(lone, str) else f"with token ids {list(lone)[:12]}"
        raise ValueError(f"{name} dataset: the prompt {shown!r:.80} has one completion; estimator 'loo' estimates "
                         f"each completion's log Ẑ(x) from the prompt's other completions, so it needs at least two "
                         f"per prompt (use estimator 'mean', or add completions)")
    return Dataset.from_dict(out)


def _tokenize_text(row: dict, tokenizer):
    """A text or conversational row → (prompt key, prompt_ids, completion_ids, empty).

    The completion starts where the tokenized prompt and prompt + completion first differ (a
    token can merge across the boundary); a plain-text completion ends with the tokenizer's
    end-of-sequence token, a conversational one with whatever the chat template closes a turn with."""
    example = {"prompt": row["prompt"], "completion": row["completion"]}
    chat = is_conversational(example)
    text = maybe_apply_chat_template(example, tokenizer) if chat else example
    said = "".join(m.get("content") or "" for m in row["completion"]) if chat else str(row["completion"])
    empty = not said.strip()
    prompt = tokenizer(text["prompt"], add_special_tokens=not chat)["input_ids"]
    full = tokenizer(text["prompt"] + text["completion"], add_special_tokens=not chat)["input_ids"]
    if not chat and tokenizer.eos_token_id is not None and full[-1:] != [tokenizer.eos_token_id]:
        full = full + [tokenizer.eos_token_id]
    split = next((j for j, (a, b) in enumerate(zip(prompt, full)) if a != b), min(len(prompt), len(full)))
    return text["prompt"], full[:split], full[split:], empty
