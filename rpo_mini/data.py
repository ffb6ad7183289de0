"""The single-trajectory dataset: JSONL on disk, tensors in memory, padded batches.

One JSONL line per sample (prompt, one response, its reward):
  {"prompt_id", "prompt", "response", "prompt_tokens", "response_tokens", "reward",
   "rewards": {component: value}, "ref_logp", "fluent"}
`response_tokens` end with end-of-text; `ref_logp` is log π_ref(response | prompt), summed.
Optional: "behavior_logp", log μ(response | prompt) under the generator that wrote it, when that
generator's probabilities are known (off-policy data in the arithmetic world); RPO's "iw"
partition estimator needs it.
"""

import json
import math
import os
from dataclasses import dataclass

import torch

from .files import atomic_open
from .losses import group_sizes
from .runtime import UserError

FIELDS = ("prompt_id", "prompt", "response", "prompt_tokens", "response_tokens", "reward",
          "rewards", "ref_logp", "fluent")


class DatasetError(UserError):
    """A dataset file that cannot be trained on; the message names the file, line and field."""


@dataclass
class Dataset:
    prompt_tokens: list      # N lists of token ids
    response_tokens: list    # N lists of token ids, end-of-text last
    prompt_ids: torch.Tensor  # (N,) long: which prompt each sample answers
    rewards: torch.Tensor     # (N,) float64: the training reward, raw
    records: list            # the JSONL lines as dicts

    def __len__(self):
        return len(self.records)

    @property
    def behavior_logps(self) -> torch.Tensor | None:
        """(N,) float64 log μ(y|x) of the generator that wrote each response; None unless every record has it."""
        if not self.records or not all("behavior_logp" in r for r in self.records):
            return None
        return torch.tensor([float(r["behavior_logp"]) for r in self.records], dtype=torch.float64)

    def lone_prompts(self) -> int:
        """Prompts with a single response: RPO's target for them is 0 (no reward signal)."""
        return int((group_sizes(self.prompt_ids) == 1).sum())  # a lone prompt has one sample


def write_jsonl(records: list[dict], path: str) -> None:
    """Atomic: a partial file never replaces a complete one."""
    with atomic_open(path) as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def read_jsonl(path: str, block_size: int | None = None, grammar: tuple = ()) -> Dataset:
    """Load and validate a dataset: every problem is reported with its line number. `grammar`:
    the model's response grammar (`GPTConfig.response_grammar`), which every response must obey."""
    if not os.path.exists(path):
        raise DatasetError(f"dataset {path} does not exist")
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            _check_record(r, f"{path}:{n}", block_size, grammar)
            records.append(r)
    if not records:
        raise DatasetError(f"dataset {path} is empty")
    return Dataset(
        prompt_tokens=[r["prompt_tokens"] for r in records],
        response_tokens=[r["response_tokens"] for r in records],
        prompt_ids=torch.tensor([r["prompt_id"] for r in records], dtype=torch.long),
        rewards=torch.tensor([float(r["reward"]) for r in records], dtype=torch.float64),
        records=records)


def _check_record(r: dict, where: str, block_size: int | None, grammar: tuple = ()) -> None:
    missing = [k for k in FIELDS if k not in r]
    if missing:
        raise DatasetError(f"{where}: missing field(s) {', '.join(missing)}")
    if not isinstance(r["reward"], (int, float)) or not math.isfinite(r["reward"]):
        raise DatasetError(f"{where}: reward {r['reward']!r} is not a finite number")
    lp = r.get("behavior_logp", 0.0)
    if isinstance(lp, bool) or not isinstance(lp, (int, float)) or not math.isfinite(lp) or lp > 0:
        raise DatasetError(f"{where}: behavior_logp {r['behavior_logp']!r} is not a finite log-probability (≤ 0)")
    if not r["response_tokens"]:  # an end-of-text alone is a real (if terse) answer; nothing is not
        raise DatasetError(f"{where}: empty response (no tokens, not even end-of-text)")
    if not r["prompt_tokens"]:
        raise DatasetError(f"{where}: empty prompt")
    for j, token in enumerate(r["response_tokens"] if grammar else ()):
        if token not in grammar[min(j, len(grammar) - 1)]:
            raise DatasetError(f"{where}: response token {j} (id {token}) is not one the world's response grammar "
                               f"allows there, so the model gives this response probability 0")
    length = len(r["prompt_tokens"]) + len(r["response_tokens"])
    if block_size is not None and length > block_size:
        raise DatasetError(f"{where}: prompt + response is {length} tokens, longer than the model's "
                           f"context window of {block_size}; shorten it or raise --max_new_tokens")


def reward_stats(rewards: torch.Tensor) -> tuple[float, float]:
    """Mean and std of the training rewards, used to z-score them (a constant set gets std 1)."""
    std = rewards.std().item() if len(rewards) > 1 else 0.0
    return rewards.mean().item(), std if std > 1e-8 else 1.0


@dataclass(frozen=True)
class RewardScale:
    """The rewards every objective trains on, z = (r − shift)/scale, and what that does to τ.

    Why τ changes units: e^{z/τ} = e^{r/(τ·scale)} · e^{−shift/(τ·scale)}, and the second factor
    is the same for every response of a prompt, so π* of z at τ is π* of the raw reward r at
    τ·scale. `raw_tau` is the one place a τ of the objectives becomes a τ in reward units."""
    shift: float = 0.0
    scale: float = 1.0

    def __call__(self, rewards):
        return (rewards - self.shift) / self.scale

    def raw_tau(self, tau: float | None) -> float | None:
        return None if tau is None else tau * self.scale


def reward_scale(rewards: torch.Tensor, zscore: bool) -> RewardScale:
    """The training set's z-scoring (`--rewards_zscore`), or none at all."""
    return RewardScale(*reward_stats(rewards)) if zscore else RewardScale()


def collate(prompts: list, responses: list, pad_id: int):
    """Concatenate prompt and response tokens, right-pad with `pad_id`.

    Returns tokens (B, T) long, response_mask (B, T) float with 1 on response tokens
    (end-of-text included) and 0 on prompt and padding, and the position of each row's last
    prompt token (B,) — what DRO's value network reads. Right padding keeps every real
    token at the position it had in pretraining; causal attention hides the pads."""
    B = len(prompts)
    T = max(len(p) + len(r) for p, r in zip(prompts, responses))
    tokens = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T))
    for b, (p, r) in enumerate(zip(prompts, responses)):
        tokens[b, :len(p) + len(r)] = torch.tensor(p + r)
        mask[b, len(p):len(p) + len(r)] = 1.0
    last_prompt = torch.tensor([len(p) - 1 for p in prompts], dtype=torch.long)
    return tokens, mask, last_prompt


def collate_prompts(prompts: list, pad_id: int):
    """Right-padded prompts alone (B, P) and the index of each one's last token."""
    P = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    for b, p in enumerate(prompts):
        tokens[b, :len(p)] = torch.tensor(p)
    return tokens, torch.tensor([len(p) - 1 for p in prompts], dtype=torch.long)
