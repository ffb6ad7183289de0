"""Exercise 08 · the KL-regularised optimum of a bandit, and the regret of any policy.

A bandit is one prompt with a finite set of responses ("arms") y, so a policy is a vector of
probabilities and every expectation is a sum. The objective every method here targets is

    J(π) = E_{y~π}[r(y)] − τ · KL(π ‖ π_ref),     KL(π ‖ q) = Σ_y π(y) log(π(y) / q(y)).

Its maximiser is the Gibbs policy, and its maximum is τ log Z:

    π*(y) = π_ref(y) e^{r(y)/τ} / Z,     Z = Σ_y π_ref(y) e^{r(y)/τ},     J* = J(π*) = τ log Z.

Substituting log π_ref(y) = log π*(y) − r(y)/τ + log Z into J gives, for any policy π,

    J(π) = τ log Z − τ KL(π ‖ π*),   so   regret(π) = J* − J(π) = τ KL(π ‖ π*) >= 0:

how far a policy falls short of its objective is τ times its KL to the optimum. Arms with
π(y) = 0 contribute 0 to a KL (0 · log 0 = 0), however small π_ref(y) is.

Notebook 02, section 4 (against the exact value: a five-armed bandit), and notebook 05, where
the arithmetic world makes every prompt such a bandit. The library's versions, over tables of
prompts, are `rpo_mini.exact.optimal_table` and `rpo_mini.exact.regret`.
"""

import torch


def optimal_policy(ref_probs, rewards, tau):
    """π*(y) = π_ref(y) e^{r(y)/τ} / Z.

    ref_probs (Y,) float64, positive, summing to 1; rewards (Y,) float64; tau > 0.
    Returns (Y,) float64 probabilities summing to 1, finite even at r/τ = 1e5.
    Why: it is the policy every objective here is trying to reach.
    Hint: in log space, π* = softmax(log π_ref + r/τ).
    """
    raise NotImplementedError("exercise 08: optimal_policy")


def regret(policy, ref_probs, rewards, tau):
    """J* − J(π) with J(π) = E_π[r] − τ KL(π ‖ π_ref) and J* = τ log Z.

    policy, ref_probs (Y,) float64 probabilities (policy may have zeros); rewards (Y,); tau > 0.
    Returns a float (or a 0-dim tensor), >= 0, and 0 at π = π*.
    Why: it measures a policy on the objective itself, not on the reward alone.
    Hint: `torch.xlogy(p, p)` is p log p with 0 log 0 = 0; `torch.logsumexp` gives log Z.
    """
    raise NotImplementedError("exercise 08: regret")
