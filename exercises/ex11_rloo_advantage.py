"""Exercise 11 · RLOO's leave-one-out advantage: a baseline that does not see its own sample.

The online family samples the policy being trained afresh every step: K responses y_1..y_K ~ π_θ
to each prompt x, scored. REINFORCE moves log π_θ(y_i|x) in proportion to the reward, and any
baseline b subtracted from it leaves the expected update unchanged as long as b does not depend
on y_i, because E_{y~π_θ}[∇ log π_θ(y|x)] = Σ_y ∇π_θ(y|x) = ∇1 = 0:

    E[(r_i − b) ∇ log π_θ(y_i|x)] = E[r_i ∇ log π_θ(y_i|x)] − b · 0.

A good baseline only cuts the variance. RLOO (Ahmadian et al., arXiv 2402.14740) takes, for
sample i, the mean reward of the *other* K − 1 samples of the same prompt:

    A_i = r_i − (1/(K − 1)) Σ_{j in I(x_i), j ≠ i} r_j

Those K − 1 samples are drawn independently of y_i, so the baseline is independent of it and
the update stays unbiased, exactly, for every K ≥ 2. Writing m(x) for the group's mean,

    A_i = r_i − (K m − r_i)/(K − 1) = K/(K − 1) · (r_i − m(x)),

the group-mean baseline (Dr. GRPO's, exercise 12) scaled up by K/(K − 1). A group of one has no
other sample and so no baseline: refuse it rather than divide by zero.

Notebook 06, sections 1–2. The library's version is
`rpo_mini.losses.group_advantages(..., kind="rloo")`, where r is the KL-shaped reward r − τρ.
"""

import torch


def rloo_advantages(rewards, prompt_ids):
    """A_i = r_i − mean of r_j over the other samples j ≠ i of sample i's prompt.

    rewards (N,) float; prompt_ids (N,) long: groups of any sizes, interleaved in any order
    (ids need not be sorted or 0..P-1). Returns (N,) in the dtype of `rewards`.
    Raises ValueError if any prompt has a single sample.
    Why: the others' mean is a baseline that cannot depend on y_i, so the policy gradient
    E[A_i ∇log π(y_i|x)] is exactly the gradient of the expected reward, with less variance.
    Hint: `torch.unique(prompt_ids, return_inverse=True, return_counts=True)`, each group's sum
    by `index_add`; the others' sum is the group's sum minus r_i.
    """
    raise NotImplementedError("exercise 11: rloo_advantages")
