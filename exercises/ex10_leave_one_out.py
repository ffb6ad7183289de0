"""Exercise 10 · the leave-one-out partition, and why a lone response teaches nothing.

RPO's "mean" estimate log Ẑ(x) = log (1/K) Σ_{j in I(x)} e^{r_j/τ} includes every sample of
the prompt, the one being trained on too. So its target t_i = r_i/τ − log Ẑ(x) depends on r_i
twice, and with K = 1 the estimate is the sample itself:

    log Ẑ = log e^{r/τ} = r/τ   ⇒   t = r/τ − r/τ = 0   for every r.

A lone response is pulled to ρ = 0, π = π_ref on it, whether its reward was great or terrible.
(More generally the "mean" target is below log K, approached when r_i dominates its group.)

The leave-one-out estimate leaves sample i out of its own partition:

    log Ẑ_i = logsumexp_{j in I(x_i), j ≠ i}(r_j / τ) − log(K − 1)

Its e^{r_j/τ} are K − 1 samples from π_ref that are independent of y_i, so Ẑ_i is unbiased
for Z(x), and the target r_i/τ − log Ẑ_i rises with r_i without bound. A group of one has no
other sample: refuse it rather than return log 0 = −∞.

Notebook 02, section 5 (the lone-response pathology: K = 1 gives target 0). The library's
version is `rpo_mini.losses.log_partition(..., estimator="loo")`.
"""

import torch


def log_partition_loo(rewards, prompt_ids, tau):
    """log Ẑ_i = logsumexp over the other samples j ≠ i of i's prompt of r_j/τ, minus log(K − 1).

    rewards (N,) float; prompt_ids (N,) long, any ids in any order. Returns (N,) float, finite
    even when one r/τ is 1e4 above the rest. Raises ValueError if any prompt has one sample.
    Why: an estimate that excludes the sample cannot cancel its reward out of its target.
    Hint: an (N, N) mask `same prompt & not the diagonal`, then `torch.logsumexp` of r/τ with
    the masked-out entries set to −inf, row by row. Do not subtract the sample from its group's
    total: when it dominates, total − own cancels to nothing.
    """
    raise NotImplementedError("exercise 10: log_partition_loo")


def mean_target_of_a_lone_sample(r, tau):
    """The "mean" estimator's target r/τ − log Ẑ for a prompt with one response, of reward r.

    r a float, tau > 0. Returns a float. Work it out from the definition of log Ẑ first: what
    does the answer depend on, and what does it tell the policy about this response?
    Why: datasets with one response per prompt are common; under "mean" they carry no signal.
    """
    raise NotImplementedError("exercise 10: mean_target_of_a_lone_sample")
