"""Exercise 07 · quantile rewards, whose partition is exact.

RPO's log Ẑ(x) is an estimate: the mean of e^{r/τ} over K samples is dominated by the best
of them, and noisy. Replace each reward by its quantile within its prompt's group (the idea of
QRPO) and the partition no longer has to be estimated. The mid-rank quantile of sample i in a
group of n is

    q_i = ( #{j : r_j < r_i}  +  ½ · (#{j : r_j = r_i} − 1) ) / (n − 1),      q = ½ if n = 1

(the count of ties includes i itself: tied samples share the middle of their ranks). K samples
with no ties take exactly the values 0, 1/(K−1), …, 1, whatever the rewards were, so

    log Z = log mean_{i=0..K-1} exp( i / ((K − 1) τ) )                (and ½/τ for K = 1)

exactly. As K grows the quantiles fill [0, 1] and this tends to the continuous closed form
log ∫_0^1 e^{q/τ} dq = log(τ (e^{1/τ} − 1)), but at K = 8, τ = 0.3 that limit is 0.11 nats too low.

Notebook 02, section 2 (three estimators side by side). The library's versions are
`rpo_mini.losses.quantile_rewards` and `log_partition(..., estimator="uniform")`.
"""

import torch


def quantile_rewards(rewards, prompt_ids):
    """Each reward replaced by its mid-rank quantile within its prompt's group, in [0, 1].

    rewards (N,) float; prompt_ids (N,) long, any ids in any order. Returns (N,) float.
    Why: quantiles of K tie-free samples are always 0, 1/(K−1), ..., 1, so Z is known exactly.
    Hint: an (N, N) table `same = prompt_ids[:, None] == prompt_ids[None, :]`, and-ed with
    `rewards[None, :] < rewards[:, None]` (or `==`), summed over dim 1, gives every count at once.
    """
    raise NotImplementedError("exercise 07: quantile_rewards")


def uniform_log_partition(k, tau):
    """log mean_{i=0..k-1} exp(i / ((k − 1) τ)) for k >= 2, and 0.5 / τ for k = 1.

    k an int >= 1, tau > 0. Returns a float, finite even at τ = 1e-4.
    Why: this is log Z(x) exactly for k tie-free quantile rewards, with nothing estimated.
    Hint: `torch.logsumexp` over `torch.arange(k)`, in float64.
    """
    raise NotImplementedError("exercise 07: uniform_log_partition")
