"""The toy GPT (`rpo_mini.model.GPT`) as a Hugging Face `GPT2LMHeadModel` with the same weights.

The two are the same network: learned token and position embeddings, pre-LayerNorm blocks of
causal self-attention and an exact-GELU MLP, a final LayerNorm and a head tied to the token
embedding. Only the storage differs: GPT-2's `Conv1D` keeps each weight as (in, out), the
transpose of `nn.Linear`'s. Why: a toy policy (or π_ref) runs, unchanged, in anything that takes a
`transformers` model: `RPOTrainer`, `generate`, the Hub's tools.
"""

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rpo_mini.model import GPT


def to_transformers(gpt: GPT, eot: int) -> GPT2LMHeadModel:
    """A `GPT2LMHeadModel` computing the same logits as `gpt` (float32, CPU); eot: the end-of-text id."""
    c = gpt.config
    hf = GPT2LMHeadModel(GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, tie_word_embeddings=True))
    src = {k: v.detach().float().cpu() for k, v in gpt.state_dict().items()}

    def bias(name, like):  # the toy may have been built without biases (GPTConfig.bias); GPT-2 always has them
        return src.get(name, torch.zeros_like(like))

    state = {"transformer.wte.weight": src["wte.weight"], "transformer.wpe.weight": src["wpe.weight"],
             "transformer.ln_f.weight": src["ln_f.weight"]}
    state["transformer.ln_f.bias"] = bias("ln_f.bias", src["ln_f.weight"])
    for i in range(c.n_layer):
        b, h = f"blocks.{i}.", f"transformer.h.{i}."
        for toy, gpt2 in (("ln_1", "ln_1"), ("ln_2", "ln_2")):
            state[h + gpt2 + ".weight"] = src[b + toy + ".weight"]
            state[h + gpt2 + ".bias"] = bias(b + toy + ".bias", src[b + toy + ".weight"])
        for toy, gpt2 in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                          ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            weight = src[b + toy + ".weight"]
            state[h + gpt2 + ".weight"] = weight.t().contiguous()
            state[h + gpt2 + ".bias"] = bias(b + toy + ".bias", weight[:, 0])
    missing, unexpected = hf.load_state_dict(state, strict=False)
    # Left out on purpose: the tied head (it is wte) and GPT-2's buffers of the causal mask.
    left = [k for k in missing if k != "lm_head.weight" and not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if left or unexpected:
        raise RuntimeError(f"GPT → GPT2LMHeadModel left {left} unset and had no place for {unexpected}")
    return hf.eval()
