"""Exercise 01 · log π(y|x) of each response, from the model's logits.

Every objective here is written in terms of log π(y|x), the log-probability of a whole response
y given its prompt x. The GPT is run once on the row

    tokens = [x_1 .. x_P, y_1 .. y_L, eot, pad, pad ..]

and its logits at position t are a distribution over the token at position t + 1. By the chain
rule, log π(y|x) = Σ_j log π(y_j | x, y_<j), which in the row's coordinates is

    log π(y|x) = Σ_{t=1}^{T-1}  mask[t] · log softmax(logits[t - 1])[tokens[t]]

with mask[t] = 1 on the response tokens, end-of-text included (the model has to learn to stop
too), and 0 on the prompt and the padding. Position 0 is never predicted.

Notebook 01, section 2 (which tokens are the response). The library's version, with options
this one leaves out, is `rpo_mini.losses.sequence_logprobs`.
"""

import torch


def sequence_logprobs(logits, tokens, response_mask):
    """Summed log-probability of each row's response tokens.

    logits (B, T, V) float: the model's output on `tokens`
    tokens (B, T) long: prompt, response, end-of-text, then padding (any id, even -1)
    response_mask (B, T) 0/1: 1 on the response tokens and the end-of-text, 0 elsewhere
    Returns (B,) float:  Σ_{t>=1} mask[b, t] · log softmax(logits[b, t-1])[tokens[b, t]]

    Why: every loss compares log π(y|x) with log π_ref(y|x); a prompt token scored by mistake
    enters both and biases every log-ratio.
    Hint: logits[:, :-1] lines up with tokens[:, 1:] and response_mask[:, 1:]. Replace the
    labels you will mask out (e.g. by 0) before `torch.gather`: -1 is not a valid index.
    """
    raise NotImplementedError("exercise 01: sequence_logprobs")
