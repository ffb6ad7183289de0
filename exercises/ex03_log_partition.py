"""Exercise 03 · RPO's partition estimate, vectorised over prompts.

The KL-regularised optimum is π*(y|x) = π_ref(y|x) e^{r(x,y)/τ} / Z(x), with

    Z(x) = Σ_y π_ref(y|x) e^{r(x,y)/τ} = E_{y~π_ref}[ e^{r(x,y)/τ} ].

The dataset holds K responses y_1..y_K of each prompt x, sampled from π_ref, with their
rewards: a Monte Carlo estimate of that expectation is their mean, Ẑ(x) = (1/K) Σ_j e^{r_j/τ}.
In logs, for every sample i of prompt x (all samples of x share the value):

    log Ẑ(x) = logsumexp_{j: prompt_j = x}(r_j / τ) − log K

RPO computes this once, before training, for every sample of the dataset: tens of thousands
of prompts, so no Python loop over them. And r/τ is large when τ is small: e^{r/τ} overflows
unless each group's maximum is taken out first (log Σ e^{a_j} = m + log Σ e^{a_j − m}).

Notebook 02, sections 1–3. The library's version, with its other estimators, is
`rpo_mini.losses.log_partition(..., estimator="mean")`.
"""

import torch


def log_partition_mean(rewards, prompt_ids, tau):
    """log Ẑ(x_i) = logsumexp_{j in I(x_i)}(r_j/τ) − log |I(x_i)| for every sample i.

    rewards (N,) float; prompt_ids (N,) long, any ids in any order (not sorted, not 0..P-1).
    Returns (N,) in the dtype of `rewards` (float64 in, float64 out), finite even at r/τ = ±1e4.

    Why: τ log Z(x) = V*(x) is the per-prompt shift that makes π* a distribution.
    Hint: `torch.unique(prompt_ids, return_inverse=True, return_counts=True)` maps ids to groups
    0..G-1; `Tensor.scatter_reduce(0, group, values, "amax")` gives each group's maximum and
    `Tensor.index_add(0, group, values)` each group's sum. No `for`, `while` or comprehension.
    """
    raise NotImplementedError("exercise 03: log_partition_mean")
