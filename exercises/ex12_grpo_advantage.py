"""Exercise 12 · GRPO's group advantage, with and without the division by the group's std.

GRPO (Shao et al., arXiv 2402.03300) samples K responses to each prompt from the policy being
trained and centres each reward on its group's mean m(x), then divides by the group's standard
deviation s(x):

    m(x) = (1/K) Σ_{j in I(x)} r_j,     s(x)² = (1/(K − 1)) Σ_{j in I(x)} (r_j − m(x))²   (Bessel)

    GRPO:      A_i = (r_i − m(x_i)) / (s(x_i) + ε)
    Dr. GRPO:  A_i =  r_i − m(x_i)                    (Liu et al., arXiv 2503.20783: no std)

ε (1e-6) only keeps the division finite; it is added to s, outside the square root.

*A group whose K rewards are all equal* has r_i − m = 0 for every sample: A = 0 under both, and
GRPO's 0 / (0 + ε) must stay 0, not NaN. Such a group teaches nothing: every sample of the
prompt was scored alike ("loss is 0" in GRPO trainers' logs).

*Why the std matters.* Dividing by s(x) makes every prompt's advantages unit-size: a prompt
whose samples differ by 0.01 gets the same push as one whose samples differ by 10. Dr. GRPO's
update is the policy gradient of the expected reward (its baseline includes the sample itself,
which scales it by (K − 1)/K: exercise 11's RLOO, divided by K/(K − 1)); GRPO's weights each
prompt by 1/s(x), so with parameters shared across prompts it settles on a different compromise
than the one that maximises the expected reward (notebook 06, section 2, on a two-prompt bandit).

Like RLOO, a group of one has no baseline but itself, and its std is undefined (0/0 under
Bessel): refuse it.

Notebook 06, sections 1–3. The library's version is
`rpo_mini.losses.group_advantages(..., kind="grpo")` and `kind="dr_grpo"`.
"""

import torch


def dr_grpo_advantages(rewards, prompt_ids):
    """A_i = r_i − m(x_i), m the mean reward of sample i's prompt group (sample i included).

    rewards (N,) float; prompt_ids (N,) long, groups of any sizes in any order. Returns (N,) in
    the dtype of `rewards`. Raises ValueError if any prompt has a single sample.
    Why: the group mean is the simplest baseline; it cuts variance and keeps the expected update
    pointing along the gradient of the expected reward.
    Hint: `torch.unique(..., return_inverse=True, return_counts=True)` and `index_add`.
    """
    raise NotImplementedError("exercise 12: dr_grpo_advantages")


def grpo_advantages(rewards, prompt_ids, eps=1e-6):
    """A_i = (r_i − m(x_i)) / (s(x_i) + eps), s the Bessel-corrected std of the group.

    rewards (N,) float; prompt_ids (N,) long; eps > 0. Returns (N,) in the dtype of `rewards`,
    exactly 0 (not NaN) on a group whose rewards are all equal. Raises ValueError if any prompt
    has a single sample.
    Why: unit-size advantages whatever the reward's scale — which is also what reweights prompts.
    Hint: the centred rewards c_i = r_i − m(x_i) from dr_grpo_advantages; s² is the group's sum of
    c² divided by K − 1.
    """
    raise NotImplementedError("exercise 12: grpo_advantages")
