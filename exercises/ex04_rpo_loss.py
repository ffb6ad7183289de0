"""Exercise 04 · the RPO loss, and the gradient it sends to the policy.

At the KL-regularised optimum, log π*(y|x) − log π_ref(y|x) = r(x,y)/τ − log Z(x): the optimal
log-ratio is a known function of the reward, once log Z(x) is known. RPO estimates log Ẑ(x)
once, before training (exercise 03), and regresses the policy's log-ratio onto it:

    ρ_i      = log π_θ(y_i|x_i) − log π_ref(y_i|x_i)
    target_i = r_i / τ − log Ẑ(x_i)
    L        = ½ · mean_i (ρ_i − target_i)²

Only ρ depends on θ, so ∂L/∂log π_θ(y_i|x_i) = (ρ_i − target_i) / B: each sample's
log-probability is pushed by its residual, up where the policy is below the target, down where
it is above. There is no value network and nothing else to learn.

Notebook 02 (from the KL-regularised objective to π*, V* and Z) and notebook 03, section 1
(per-sample gradients). The library's version, with its metrics, is `rpo_mini.losses.rpo_loss`.
"""

import torch


def rpo_loss(policy_logps, ref_logps, rewards, log_z, tau):
    """½ · mean((ρ − (r/τ − log Ẑ))²) with ρ = policy_logps − ref_logps.

    policy_logps (B,) with gradient; ref_logps, rewards, log_z (B,) constants; tau > 0 a float.
    Returns a 0-dim tensor, differentiable in policy_logps.

    Why: the squared error is zero exactly at π_θ = π_ref e^{r/τ}/Ẑ, the optimum with Z
    replaced by its estimate.
    Hint: three lines; `.mean()`, not `.sum()`, so that the gradient is residual / B.
    """
    raise NotImplementedError("exercise 04: rpo_loss")
