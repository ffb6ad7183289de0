"""The GPT: a GPT-2-style decoder in one file, with KV-cached batched sampling.

Token + learned position embeddings, pre-LayerNorm blocks of causal self-attention
(through `F.scaled_dot_product_attention`) and a GELU MLP, a final LayerNorm and a
language-model head tied to the token embedding. GPT-2 initialisation.

Variable-length prompts are batched by *left* padding: an attention mask hides the pads
and position ids count only real tokens, so a prompt sees the same positions as it does
unpadded (training batches are right-padded, where causality alone hides the pads).
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = field(default=1024, metadata={"help": "tokens in the vocabulary (set from the tokenizer)"})
    block_size: int = field(default=64, metadata={"help": "longest sequence (prompt + response) the model sees"})
    n_layer: int = field(default=4, metadata={"help": "transformer blocks"})
    n_head: int = field(default=4, metadata={"help": "attention heads per block (n_embd must divide by it)"})
    n_embd: int = field(default=128, metadata={"help": "width of the residual stream"})
    dropout: float = field(default=0.0, metadata={"help": "dropout rate in attention and MLP (0 = off)"})
    bias: bool = field(default=True, metadata={"help": "biases in Linear layers and LayerNorms"})
    # Set from the world, like vocab_size from the tokenizer: row j lists the token ids allowed as
    # the j-th token of a response ((): no restriction). See `GPT.grammar`.
    response_grammar: tuple = field(default=(), metadata={"help": "allowed token ids per response position"})


class KVCache:
    """Preallocated keys and values for every layer: (n_layer, B, H, T_max, head_dim)."""

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device, dtype):
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.n_embd // config.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # how many positions are filled

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, H, t, hd) after the filled part; return all keys and values so far."""
        start, end = self.length, self.length + k.size(2)
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x, attn_mask=None, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(layer, k, v)
        # With no explicit mask (plain training forward) the fused causal kernel applies.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), attn_mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017)
        # The response grammar as a (L, V) bool mask, or None: at the j-th response token only
        # grammar[min(j, L - 1)] has probability, renormalised over those tokens. Sampling
        # (`generate`) and teacher-forced scoring (`losses.sequence_logprobs(..., grammar=)`)
        # both apply it, so the model sampled, trained and enumerated is one distribution.
        # Not saved with the weights: it is part of the config.
        self.register_buffer("grammar", _grammar_mask(config), persistent=False)
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so the residual stream
        # does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings excluded by default (as in the FLOPs count)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6N for the weights + 12·L·T·C for attention (PaLM, App. B)."""
        cfg, T = self.config, seq_len or self.config.block_size
        return 6 * self.num_params() + 12 * cfg.n_layer * T * cfg.n_embd

    def hidden_states(self, tokens, attn_mask=None, position_ids=None, cache=None):
        """Final-LayerNorm hidden states (B, T, C): what the LM head and DRO's value head read."""
        B, T = tokens.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:  # checked on the host: no device sync per forward
            raise ValueError(f"sequence of {start + T} tokens exceeds the model's block_size {self.config.block_size}")
        if position_ids is None:
            position_ids = torch.arange(start, start + T, device=tokens.device).expand(B, T)
        x = self.drop(self.wte(tokens) + self.wpe(position_ids))
        for i, block in enumerate(self.blocks):
            x = block(x, attn_mask, cache, i)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)

    def forward(self, tokens, targets=None):
        """tokens (B, T) → logits (B, T, V); with targets (B, T), also the mean next-token loss.

        `targets[b, t]` is the token that should follow `tokens[b, t]`; positions with
        target -1 are ignored (prompt, padding)."""
        logits = self.lm_head(self.hidden_states(tokens))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, eot_token, temperature=1.0, top_k=None,
                 generator=None, use_cache=True, return_logprobs=False):
        """Sample continuations of a batch of prompts.

        prompts: list of token-id lists (any lengths) or a LongTensor (B, T) without padding.
        Returns new tokens (B, n) with n <= max_new_tokens; a row that produced `eot_token`
        keeps emitting `eot_token` as padding. With return_logprobs, also (B, n) log-probs of
        the sampled tokens under the sampling distribution (0 after a row's end-of-text).
        `use_cache=False` recomputes the whole sequence each step (for tests and benchmarks)."""
        if isinstance(prompts, torch.Tensor):
            prompts = prompts.tolist()
        device = self.wte.weight.device
        B, P = len(prompts), max(len(p) for p in prompts)
        if P + max_new_tokens > self.config.block_size:
            raise ValueError(f"prompt ({P} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                             f"block_size {self.config.block_size}")
        # Left-pad so that every row's next token is written at the same column.
        tokens = torch.full((B, P + max_new_tokens), eot_token, dtype=torch.long, device=device)
        real = torch.zeros((B, P + max_new_tokens), dtype=torch.bool, device=device)
        for b, p in enumerate(prompts):
            tokens[b, P - len(p):P] = torch.tensor(p, dtype=torch.long)
            real[b, P - len(p):] = True  # generated positions are always real
        positions = (real.long().cumsum(1) - 1).clamp(min=0)
        cache = KVCache(self.config, B, P + max_new_tokens, device,
                        self.wte.weight.dtype) if use_cache else None

        out_tokens, out_logps = [], []
        done = torch.zeros(B, dtype=torch.bool, device=device)
        t = P
        for step in range(max_new_tokens):
            if cache is None or step == 0:  # prefill (or full recompute)
                ctx = slice(0, t)
            else:
                ctx = slice(t - 1, t)
            mask = _attention_mask(real[:, :t], ctx.start)
            h = self.hidden_states(tokens[:, ctx], mask, positions[:, ctx], cache)
            logits = self.lm_head(h[:, -1]).float()
            if self.grammar is not None:
                logits = logits.masked_fill(~self.grammar[min(step, len(self.grammar) - 1)], float("-inf"))
            logits = logits / max(temperature, 1e-8)
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            logp = F.log_softmax(logits, dim=-1)
            try:
                nxt = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
            except RuntimeError as e:  # NaN or inf probabilities: a model whose weights have blown up
                raise FloatingPointError("the model's next-token probabilities are not finite (its weights "
                                         "have blown up); lower the learning rate") from e
            nxt = torch.where(done, torch.full_like(nxt, eot_token), nxt)
            out_tokens.append(nxt)
            out_logps.append(torch.where(done, 0.0, logp.gather(1, nxt[:, None]).squeeze(1)))
            tokens[:, t] = nxt
            t += 1
            done |= nxt == eot_token
            if done.all():
                break
        new = torch.stack(out_tokens, 1)
        return (new, torch.stack(out_logps, 1)) if return_logprobs else new


def _grammar_mask(config: GPTConfig) -> torch.Tensor | None:
    if not config.response_grammar:
        return None
    mask = torch.zeros(len(config.response_grammar), config.vocab_size, dtype=torch.bool)
    for j, allowed in enumerate(config.response_grammar):
        mask[j, list(allowed)] = True
    return mask


def _attention_mask(real: torch.Tensor, q_start: int) -> torch.Tensor:
    """Boolean (B, 1, Tq, Tk) mask: query i sees key j iff j <= i and j is a real token.

    A left-pad query would otherwise see no key at all (softmax over nothing gives NaN,
    and NaN times a zero weight still poisons the real rows), so pads see themselves."""
    Tk = real.size(1)
    q_pos = torch.arange(q_start, Tk, device=real.device)
    k_pos = torch.arange(Tk, device=real.device)
    causal = k_pos[None, :] <= q_pos[:, None]  # (Tq, Tk)
    mask = causal[None] & real[:, None, :]
    mask |= (k_pos[None, :] == q_pos[:, None])[None]  # every query sees itself
    return mask[:, None]


class ValueModel(nn.Module):
    """DRO's value network V_φ(x): a GPT trunk with a scalar head on the last prompt token.

    Causal attention means that hidden state depends on the prompt alone, so the value
    network only ever needs to read the prompts. The head starts at zero: V = 0 at init."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.trunk = GPT(config)
        self.head = nn.Linear(config.n_embd, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, prompt_tokens, last_index):
        """prompt_tokens (B, P) right-padded, last_index (B,) → values (B,)."""
        h = self.trunk.hidden_states(prompt_tokens)
        return self.head(h[torch.arange(h.size(0), device=h.device), last_index]).squeeze(-1)


class PooledValueHead(nn.Module):
    """DRO's value as the authors' code has it: a linear head on the mean of the *policy's* own
    hidden states over the prompt tokens. No trunk of its own, so the value loss trains the
    policy's trunk too (one optimizer, no stop-gradient). Starts at zero: V = 0 at init."""

    def __init__(self, n_embd: int):
        super().__init__()
        self.head = nn.Linear(n_embd, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, hidden, last_index):
        """hidden (B, P, C) of right-padded prompts, last_index (B,) → values (B,)."""
        keep = (torch.arange(hidden.size(1), device=hidden.device) <= last_index[:, None]).to(hidden.dtype)
        pooled = (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
        return self.head(pooled).squeeze(-1)
