"""Exercise 05 · the DRO loss: the same regression as RPO, with the shift learned.

The optimal log-ratio is ρ*(x,y) = (r(x,y) − V*(x)) / τ with V*(x) = τ log Z(x). RPO estimates
V* once from the data (exercise 03); DRO (Direct Reward Optimization) learns it instead, with
a value network V_φ(x) trained jointly with the policy on one loss:

    ρ_i      = log π_θ(y_i|x_i) − log π_ref(y_i|x_i)
    target_i = (r_i − V_φ(x_i)) / τ
    L        = ½ · mean_i (ρ_i − target_i)²

Nothing is detached: with e_i = ρ_i − target_i,

    ∂L/∂log π_θ(y_i|x_i) = e_i / B        ∂L/∂V_φ(x_i) = e_i / (τ B)

so the policy and the value move together. For the value alone, the minimiser of
Σ_i (ρ_i − (r_i − V)/τ)² over the samples of one prompt is V = mean_i(r_i − τ ρ_i), which at
the optimum, where ρ_i = (r_i − V*)/τ, is V*: the shift RPO estimates before training.

Notebook 03, section 2 (the baselines: DRO's value network). The library's version is
`rpo_mini.losses.dro_loss` (the 1/τ² scale of the paper's loss folded in, to match RPO).
"""

import torch


def dro_loss(policy_logps, ref_logps, rewards, values, tau):
    """½ · mean((ρ − (r − V)/τ)²) with ρ = policy_logps − ref_logps.

    policy_logps (B,) and values (B,) with gradient (values[i] = V_φ(x_i)); ref_logps,
    rewards (B,) constants; tau > 0 a float. Returns a 0-dim tensor, differentiable in both.

    Why: a learned V(x) generalises across prompts, so one response per prompt is enough; the
    price is a second network to train next to the policy.
    Hint: V enters through the target, divided by τ like the reward; do not detach it.
    """
    raise NotImplementedError("exercise 05: dro_loss")
