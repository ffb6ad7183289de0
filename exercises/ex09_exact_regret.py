"""Exercise 09 · KL(π‖π*) and the regret, from the enumerated tables of the exact world.

In the arithmetic world every response can be listed (1110 of them), so a policy is a table:
row x holds log π(y|x) for every response y (`rpo_mini.exact.logprob_table` computes it). With
π_ref's table and the reward of every (x, y), the optimum of KL-regularised reward maximisation
is a table too:

    log π*_τ(y|x) = log π_ref(y|x) + r(x,y)/τ − log Z_τ(x),   log Z_τ(x) = logsumexp_y (log π_ref + r/τ)

and how far a policy falls short of the objective J_τ(π) = E_π[r] − τ KL(π‖π_ref) is

    regret(x) = J*_τ(x) − J_τ(π)(x),   J*_τ(x) = τ log Z_τ(x).

Shapes: every table is (N, Y) float64 — N prompts, Y responses, each row of a log-prob table
logsumexps to 0; rewards (N, Y); tau a float > 0. Both functions return (N,), one value per prompt.
"""

import torch


def kl_to_optimal(policy_table: torch.Tensor, ref_table: torch.Tensor, rewards: torch.Tensor,
                  tau: float) -> torch.Tensor:
    """KL(π‖π*_τ) = Σ_y π(y|x) (log π(y|x) − log π*_τ(y|x)), per prompt: (N,).

    Hint: build log π*_τ with torch.logsumexp over the last dimension; weight by π = exp(table),
    and let a response with π(y|x) = 0 contribute 0 (not 0 · −inf)."""
    raise NotImplementedError("exercise 09: kl_to_optimal")


def regret(policy_table: torch.Tensor, ref_table: torch.Tensor, rewards: torch.Tensor,
           tau: float) -> torch.Tensor:
    """J*_τ − J_τ(π) per prompt: (N,), with J_τ(π) = E_π[r] − τ KL(π‖π_ref) and J*_τ = τ log Z_τ.

    Hint: compute it from its definition; the tests check it against τ · KL(π‖π*_τ), which it
    equals (substitute log π_ref = log π*_τ − r/τ + log Z_τ into J_τ and see)."""
    raise NotImplementedError("exercise 09: regret")
