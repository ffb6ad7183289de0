"""Exercise 13 · A*-PO: the optimal value from π_ref's samples, once, then a regression on fresh ones.

The KL-regularised optimum at strength β has the optimal value (notebook 02)

    V*(x) = β log Z(x),   Z(x) = E_{y~π_ref}[e^{r(x,y)/β}],

and its log-ratio ρ* = log π*/π_ref = (r − V*(x))/β. A*-PO (Brantley et al., arXiv 2505.20686)
runs in two stages. *Offline, once*: N responses y_1..y_N ~ π_ref to each prompt, scored, give

    V̂*(x) = β₁ · log (1/N) Σ_{j in I(x)} e^{r_j/β₁}

— RPO's "mean" partition (exercise 03), in reward units. It lies between the group's mean reward
(β₁ → ∞) and its best reward (β₁ → 0): Jensen's inequality on the log of a mean of exponentials.
*Online, every step*: one fresh response y ~ π_θ to each prompt, scored, and a least-squares fit
of the scaled log-ratio onto the advantage against that fixed value:

    L = mean_i (β₂ ρ_i − (r_i − V̂*(x_i)))²,      ρ_i = log π_θ(y_i|x_i) − log π_ref(y_i|x_i).

With β₁ = β₂ = τ, β₂ρ − (r − V̂*) = τ(ρ − (r/τ − log Ẑ)): τ times RPO's residual, so L is
2τ² × RPO's loss ½·mean((ρ − (r/τ − log Ẑ))²) on the same samples. A*-PO is RPO with its
partition estimated from π_ref, trained on the policy's own samples instead of π_ref's.

r/β₁ can be large (β₁ small, rewards large): take each group's maximum out before exp.

Notebook 06, section 4. The library's versions are `rpo_mini.losses.apo_values` and
`rpo_mini.losses.apo_loss`.
"""

import torch


def apo_values(rewards, prompt_ids, beta1):
    """V̂*(x_i) = β₁ · (logsumexp_{j in I(x_i)}(r_j/β₁) − log N_x) for every sample i.

    rewards (N,) float of π_ref's samples; prompt_ids (N,) long, any ids in any order;
    beta1 > 0. Returns (N,) in the dtype of `rewards`, finite even at r/β₁ = ±1e4.
    Why: the per-prompt shift of the optimum, estimated once from the reference's own samples,
    so that training needs neither a value network nor a group of fresh samples per prompt.
    Hint: `torch.unique(..., return_inverse=True, return_counts=True)`, each group's maximum by
    `scatter_reduce(..., "amax")`, then the log of the mean of e^{r/β₁ − max}.
    """
    raise NotImplementedError("exercise 13: apo_values")


def apo_loss(policy_logps, ref_logps, rewards, values, beta2):
    """mean((β₂ · (policy_logps − ref_logps) − (rewards − values))²).

    policy_logps (B,) with gradient; ref_logps, rewards, values (B,) constants; beta2 > 0.
    Returns a 0-dim tensor, differentiable in policy_logps.
    Why: zero exactly where β₂ρ = r − V̂*, the optimum's log-ratio at β₂ when V̂* is exact.
    Hint: one line; no ½ in front (A*-PO's loss has none), `.mean()` over the batch.
    """
    raise NotImplementedError("exercise 13: apo_loss")
