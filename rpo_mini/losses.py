"""The alignment objectives of rpo_mini, as pure functions over per-sequence tensors.

All of them start from KL-regularised reward maximisation,

    max_pi  E_x [ E_{y~pi} r(x,y)  -  tau * KL(pi(.|x) || pi_ref(.|x)) ],

whose optimum is known in closed form:

    pi*(y|x) = pi_ref(y|x) * exp((r(x,y) - V*(x)) / tau),   V*(x) = tau * log Z(x),
    Z(x)     = sum_y pi_ref(y|x) * exp(r(x,y) / tau).

So the optimal log-ratio rho* = log pi* - log pi_ref = (r - V*) / tau is a shifted, scaled
reward, and V*(x) the optimal value: J_x(pi) = E_pi[r] - tau KL(pi || pi_ref) equals
tau log Z(x) - tau KL(pi || pi*), so J_x(pi*) = V*(x) and the regret is tau KL(pi || pi*).
The rewards arrive z-scored by the training set's mean and std (`align.prepare`), so tau is in
reward-std units: the optimum is the raw reward's at tau * sigma. The objectives differ in what
they do about the unknown shift V*(x):

- RPO  (Reward Partition Optimization, Faye et al., arXiv 2506.13702): estimate log Z(x) once,
  before training, from the rewards observed for x (`log_partition`), then regress
  rho onto r/tau - log Z.
- DRO  (Direct Reward Optimization, Richemond et al., arXiv 2405.19107): learn V(x) with a
  value network, jointly with the policy, by the same regression.
- KTO  (Kahneman-Tversky Optimization, Ethayarajh et al., arXiv 2402.01306): binarise the
  reward and push rho up or down relative to a batch reference point z0.
- SFT: imitate the good responses (negative log-likelihood).

The online family does the same on fresh samples of the policy being trained, the shift taken
from each step's group of K samples of a prompt (`group_advantages`): RLOO (the others' mean),
GRPO (the group's mean and std), Dr. GRPO (its mean), each as a policy gradient on the reward
r - tau*rho (`pg_loss`); A*-PO (Brantley et al., arXiv 2505.20686) estimates V*(x) once from
pi_ref's samples (`apo_values`) and regresses on one fresh sample per prompt (`apo_loss`); online
RPO and DRO are `rpo_loss` and `dro_loss` on fresh groups.

`log_partition(..., estimator="uniform")` is for rewards replaced by their within-prompt
quantile (`quantile_rewards`), after QRPO (Matrenok et al., arXiv 2507.08068), whose quantiles
under pi_ref make log Z a closed form; ours are the K samples' mid-ranks, so "uniform" is the
"mean" estimator on the ranks (exact for the group's own K responses only). "exact" is the
enumerated log Z(x) of an exact world, where every response can be summed over.

Every loss returns `(loss, metrics)`: a scalar tensor and a dict of plain Python floats.
Shapes: B (or N) is the number of (prompt, response, reward) samples, T the sequence
length, V the vocabulary size. Log-probabilities are sums over response tokens unless the
caller chose length-normalised ones (`sequence_logprobs(..., length_normalize=True)`).
"""

import math

import torch
import torch.nn.functional as F

ESTIMATORS = ("mean", "loo", "ref", "iw", "uniform", "exact")
BINARIZE_THRESHOLDS = ("global", "prompt")
SFT_MODES = ("best", "all", "above_mean")


# ---------------------------------------------------------------------------------------
# validation and grouping helpers (private)
# ---------------------------------------------------------------------------------------

def _validate(tau=None, **tensors):
    """Raise a ValueError naming the first problem instead of letting a NaN appear later.

    The first keyword tensor sets the expected shape: every tensor must be 1-D, non-empty
    and of that shape; floating tensors must be finite; tau (if given) must be finite and > 0.
    """
    (first_name, first), *_ = tensors.items()
    for name, t in tensors.items():
        if not torch.is_tensor(t):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D (one value per sample), got shape {tuple(t.shape)}")
        if t.shape != first.shape:
            raise ValueError(f"shape mismatch: {name} has shape {tuple(t.shape)} "
                             f"but {first_name} has shape {tuple(first.shape)}")
        if t.is_floating_point():
            bad = ~torch.isfinite(t)
            if bad.any():
                first_bad = int(bad.nonzero()[0, 0])
                raise ValueError(f"{int(bad.sum())} non-finite {name}, first at index {first_bad}")
    if first.numel() == 0:
        raise ValueError(f"{first_name} is empty: need at least one sample")
    if tau is not None:
        tau = float(tau)
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be a finite number > 0, got {tau}")
    return tau


def _float(rewards):
    """Rewards as a float tensor, keeping float64 (for gradcheck) and float32 as they are."""
    return rewards if rewards.is_floating_point() else rewards.float()


def _groups(prompt_ids):
    """Map prompt ids to dense group indices 0..G-1; return (group index [N], group sizes [G])."""
    _, group, counts = torch.unique(prompt_ids, return_inverse=True, return_counts=True)
    return group, counts


def _group_logsumexp(values, group, num_groups):
    """log sum_{j in group g} exp(values_j) for each group g, without a Python loop.

    Subtracting the group maximum first keeps exp() in [0, 1], so r/tau = 1e4 cannot overflow.
    The maximum is a constant shift, so detaching it leaves the gradient (a softmax) exact.
    """
    fill = torch.full((num_groups,), -math.inf, dtype=values.dtype, device=values.device)
    peak = fill.scatter_reduce(0, group, values.detach(), "amax")
    summed = torch.zeros_like(fill).index_add(0, group, torch.exp(values - peak[group]))
    return peak + torch.log(summed)


def _group_mean(values, group, counts):
    """Mean of `values` within each group, returned per group [G]."""
    sums = torch.zeros(len(counts), dtype=values.dtype, device=values.device).index_add(0, group, values)
    return sums / counts.to(values.dtype)


def _mean(values, weights=None):
    """mean(values), or the weighted mean sum(w * values) / sum(w). With weights pi_ref(y|x)
    over every response of an enumerated space, a loss becomes its exact expectation under
    pi_ref: what the loss on K sampled responses per prompt tends to as K grows."""
    if weights is None:
        return values.mean()
    return (weights * values).sum() / weights.sum()


def _check_weights(weights, like):
    if weights is not None:
        _validate(like=like, weights=weights)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("weights must be >= 0 with a positive sum")


def _near(a, b):
    """Floating tolerance for 'equal to the mean': a group of equal rewards must tie with its
    own mean even though summing then dividing can round the mean by an ulp or two."""
    return (a - b).abs() <= 1e-6 * (1.0 + b.abs())


def _means(**tensors):
    """Detached means as Python floats, for logging (at least float32, float64 kept)."""
    return {name: float(t.detach().to(torch.promote_types(t.dtype, torch.float32)).mean())
            for name, t in tensors.items()}


# ---------------------------------------------------------------------------------------
# log-probabilities of responses
# ---------------------------------------------------------------------------------------

def sequence_logprobs(logits, tokens, response_mask, length_normalize=False, grammar=None):
    """log pi(y|x): the summed (or mean) log-probability of each sequence's response tokens.

    logits (B, T, V) from the model run on tokens (B, T); response_mask (B, T) is 1 on the
    response tokens of `tokens` (end-of-text included), 0 on prompt and padding.
    Returns (B,) float32:  sum_{t >= 1} mask[t] * log softmax(logits[t-1])[tokens[t]]
    (divided by sum_t mask[t] when length_normalize; position 0 is never predicted).
    grammar (L, V) bool, optional (`GPT.grammar`): the j-th response token is scored under the
    softmax over grammar[min(j, L - 1)] only — the distribution `GPT.generate` samples from.
    Why: every objective here is written in terms of log pi(y|x) of the whole response.
    """
    if logits.dim() != 3 or tokens.shape != logits.shape[:2] or response_mask.shape != tokens.shape:
        raise ValueError(f"expected logits (B, T, V) and tokens, response_mask (B, T); got "
                         f"{tuple(logits.shape)}, {tuple(tokens.shape)}, {tuple(response_mask.shape)}")
    # Logits at position t predict token t+1, so labels and mask shift left by one.
    mask = response_mask[:, 1:].bool()
    # Masked labels become 0 so that any padding id (even -1) is a valid gather index.
    labels = tokens[:, 1:].long().masked_fill(~mask, 0)
    # float32 log-softmax: bf16 log-probs summed over a response lose several digits.
    logits = logits[:, :-1].float()
    if grammar is not None:
        j = (mask.long().cumsum(1) - 1).clamp(0, len(grammar) - 1)   # index of each target in its response
        logits = logits.masked_fill(~(grammar[j] | ~mask.unsqueeze(-1)), float("-inf"))
    logp = F.log_softmax(logits, dim=-1)
    token_logp = torch.gather(logp, -1, labels.unsqueeze(-1)).squeeze(-1)
    # where(), not multiply: a -inf logit at a prompt position must not leak in as 0 * -inf.
    total = torch.where(mask, token_logp, torch.zeros_like(token_logp)).sum(-1)
    if length_normalize:
        total = total / mask.sum(-1).clamp(min=1)
    return total


# ---------------------------------------------------------------------------------------
# RPO's partition estimate (computed once, before training)
# ---------------------------------------------------------------------------------------

def log_partition(rewards, prompt_ids, tau, estimator="mean", ref_logps=None, exact_log_z=None,
                  behavior_logps=None):
    """log Z_hat(x_i) for every sample i, from the group I_x of samples sharing its prompt.

    rewards (N,), prompt_ids (N,) integer, ref_logps (N,) for "ref" and "iw", behavior_logps (N,)
    for "iw", exact_log_z (N,) for "exact".
    Returns (N,) float. With K = |I_x| and y_j ~ pi_ref:
      "mean":    log Z_hat = logsumexp_{j in I_x}(r_j / tau) - log K       (Monte Carlo, self-inclusive)
      "loo":     log Z_hat_i = logsumexp_{j in I_x, j != i}(r_j / tau) - log(K - 1)   (leave-one-out)
      "ref":     log Z_hat = logsumexp_{j in I_x}(ref_logps_j + r_j / tau)  (the authors' code)
      "iw":      log Z_hat = logsumexp_{j in I_x}(ref_logps_j - behavior_logps_j + r_j / tau) - log K
                 (importance-weighted, for samples y_j ~ mu drawn from a known generator mu:
                 E_mu[pi_ref/mu e^{r/tau}] = Z, so it is "mean" corrected for off-policy data)
      "uniform": log Z_hat = log mean_{i=0..K-1} exp(i / ((K - 1) tau))      (rewards are mid-rank
                 quantiles, see quantile_rewards: K tie-free samples take exactly the values
                 0, 1/(K-1), ..., 1, so this is the "mean" estimator applied to the ranks, one
                 number for every group of K. It is exact only for the group's own empirical
                 distribution (a uniform pick among its K responses), not for pi_ref, whose
                 quantiles are Uniform(0, 1) with Z = tau (e^{1/tau} - 1); and it inherits the
                 log K cap of "mean" below. With ties the ranks are not evenly spaced and it is
                 not even the mean over them. K = 1 gives 0.5 / tau)
      "exact":   exact_log_z, the enumerated log Z(x) of an exact world (`rpo_mini.exact`)
    Why: tau * log Z(x) = V*(x) is the shift that makes pi* normalise; RPO fixes it up front.

    "mean" includes each sample in its own estimate: its target r_i/tau - log Z_hat is at most
    log K (equality when r_i dominates), and a lone sample's target is exactly 0. "loo" has
    neither pathology (its target is unbounded, and it refuses groups of one, which have no
    other samples). "ref" is a partial sum of Z's own terms, meant for distinct responses: where
    samples repeat (a small response space), each copy counts again, and it overshoots by up
    to log K when all K are the same. The continuous-quantile closed form
    log(tau (e^{1/tau} - 1)) is what "uniform" tends to as K grows; "uniform" lies above it,
    by 0.11 nats at K = 8, tau = 0.3 (0.50 at tau = 0.1).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
    if estimator == "ref" and ref_logps is None:
        raise ValueError('estimator="ref" needs ref_logps (the reference log-probs of each response)')
    if estimator == "exact" and exact_log_z is None:
        raise ValueError('estimator="exact" needs the enumerated log Z(x) of every prompt, which only an '
                         'exact world has (--world arithmetic)')
    if estimator == "iw" and (ref_logps is None or behavior_logps is None):
        raise ValueError('estimator="iw" needs ref_logps and behavior_logps (log mu of each response under the '
                         'generator that wrote it)')
    extra = {"ref_logps": ref_logps} if estimator in ("ref", "iw") else {}
    extra |= {"behavior_logps": behavior_logps} if estimator == "iw" else {}
    extra |= {"exact_log_z": exact_log_z} if estimator == "exact" else {}
    tau = _validate(tau, rewards=rewards, prompt_ids=prompt_ids, **extra)
    rewards = _float(rewards)
    if estimator == "exact":
        return exact_log_z.to(rewards.dtype)

    group, counts = _groups(prompt_ids)
    if estimator == "uniform":
        if rewards.min() < 0 or rewards.max() > 1:
            raise ValueError('estimator="uniform" assumes quantile rewards in [0, 1] '
                             "(see quantile_rewards)")
        # log mean_i e^{i a}, a = 1/((K-1) tau): a geometric series, (e^{K a} - 1) / (K (e^{a} - 1)),
        # written as x + log(1 - e^{-x}) for each log(e^x - 1) so that no exp() overflows.
        k = counts.to(rewards.dtype)
        a = 1.0 / ((k - 1).clamp(min=1) * tau)
        log_z = (k * a + torch.log(-torch.expm1(-k * a))) - (a + torch.log(-torch.expm1(-a))) - torch.log(k)
        return torch.where(counts == 1, 0.5 / tau, log_z)[group]

    scaled = rewards / tau
    if estimator in ("ref", "iw"):
        scaled = scaled + ref_logps.to(rewards.dtype)
    if estimator == "iw":
        scaled = scaled - behavior_logps.to(rewards.dtype)
    log_z = _group_logsumexp(scaled, group, len(counts))
    if estimator in ("mean", "iw"):
        return (log_z - torch.log(counts.to(rewards.dtype)))[group]
    if estimator == "loo":
        if (counts == 1).any():
            raise ValueError(f'estimator="loo" needs at least two samples per prompt; '
                             f"{int((counts == 1).sum())} prompt(s) have one")
        return _group_logsumexp_others(scaled, group, len(counts)) - torch.log(counts[group].to(rewards.dtype) - 1)
    return log_z[group]


def _group_logsumexp_others(values, group, num_groups):
    """log sum_{j in group(i), j != i} exp(values_j) for each sample i (groups of two or more).

    The group's logsumexp L minus sample i is L + log(1 - e^{v_i - L}), accurate whenever
    e^{v_i - L} <= 1/2, i.e. unless i is its group's unique maximum; for that one sample the
    sum over the others is taken directly, without it."""
    fill = torch.full((num_groups,), -math.inf, dtype=values.dtype, device=values.device)
    peak = fill.scatter_reduce(0, group, values.detach(), "amax")
    at_peak = values == peak[group]
    unique = at_peak & (torch.zeros_like(peak).index_add(0, group, at_peak.to(values.dtype))[group] == 1)
    without = values.masked_fill(unique, -math.inf)   # the unique maxima removed
    total = _group_logsumexp(values, group, num_groups)[group]
    rest = total + torch.log1p(-torch.exp(without - total))
    return torch.where(unique, _group_logsumexp(without, group, num_groups)[group], rest)


def rpo_inputs(rewards, prompt_ids, tau, estimator="mean", ref_logps=None, exact_log_z=None,
               behavior_logps=None):
    """RPO's fixed per-sample inputs, computed once before training: (rewards, log_z), both (N,).

    The rewards RPO regresses on (the given ones; under "uniform" their mid-rank quantiles,
    `quantile_rewards`, which is what that estimator assumes) and log Z_hat(x) of each sample's
    prompt from them (`log_partition`, same arguments). Why one function: the toy's alignment
    and the TRL trainer (integrations/trl_rpo.py) must build the same target r/tau - log Z_hat.
    """
    if estimator == "uniform":
        rewards = quantile_rewards(rewards, prompt_ids)
    return rewards, log_partition(rewards, prompt_ids, tau, estimator, ref_logps=ref_logps,
                                  exact_log_z=exact_log_z, behavior_logps=behavior_logps)


def rpo_targets(rewards, log_z, tau):
    """RPO's regression target for the log-ratio, per sample.

    rewards (B,), log_z (B,) from log_partition. Returns (B,):  r / tau - log Z_hat(x).
    Why: it is rho* = (r - V*) / tau with V* estimated as tau * log Z_hat.
    """
    tau = _validate(tau, rewards=rewards, log_z=log_z)
    return _float(rewards) / tau - log_z


def quantile_rewards(rewards, prompt_ids):
    """Each reward replaced by its mid-rank quantile within its prompt's group, in [0, 1].

    rewards (N,), prompt_ids (N,). Returns (N,) float. For a group of size n:
      q_i = (#{j : r_j < r_i} + 0.5 * (#{j : r_j = r_i} - 1)) / (n - 1),  and q = 0.5 if n = 1.
    Why: the mid-rank quantiles of K tie-free samples are exactly 0, 1/(K-1), ..., 1, whatever
    the rewards were, so every group's log Z_hat is one number ("uniform": the "mean" estimator
    on the ranks, with its log K cap).
    """
    _validate(rewards=rewards, prompt_ids=prompt_ids)
    rewards = _float(rewards)
    group, counts = _groups(prompt_ids)
    # Sort by (group, reward): a stable sort by reward, then a stable sort by group.
    by_reward = torch.sort(rewards, stable=True).indices
    order = by_reward[torch.sort(group[by_reward], stable=True).indices]
    g, r = group[order], rewards[order]
    pos = torch.arange(len(order), device=rewards.device)
    # Runs of equal (group, reward) pairs are the tie blocks.
    new_run = torch.ones_like(g, dtype=torch.bool)
    new_run[1:] = (g[1:] != g[:-1]) | (r[1:] != r[:-1])
    run = torch.cumsum(new_run, 0) - 1
    run_start = pos[new_run]                                  # first sorted position of each run
    run_size = torch.bincount(run)
    group_start = torch.cumsum(counts, 0) - counts            # groups are contiguous after sorting
    below = run_start[run] - group_start[g]                   # strictly smaller rewards in the group
    n = counts[g]
    ties = (run_size[run] - 1).to(rewards.dtype)              # other samples with the same reward
    q_sorted = (below.to(rewards.dtype) + 0.5 * ties) / (n - 1).clamp(min=1)
    q_sorted = torch.where(n == 1, torch.full_like(q_sorted, 0.5), q_sorted)
    return torch.empty_like(q_sorted).scatter_(0, order, q_sorted)


def group_sizes(prompt_ids):
    """|I_x| for each sample's prompt. prompt_ids (N,) -> (N,) long.

    Why: under RPO's "mean" estimator a lone response has target exactly 0 (no signal), so
    train.py counts (group_sizes(ids) == 1).sum() and warns.
    """
    _validate(prompt_ids=prompt_ids)
    group, counts = _groups(prompt_ids)
    return counts[group]


# ---------------------------------------------------------------------------------------
# the losses
# ---------------------------------------------------------------------------------------

def rpo_loss(policy_logps, ref_logps, rewards, log_z, tau, weights=None):
    """Reward Partition Optimization loss (arXiv 2506.13702).

    All inputs (B,); log_z from log_partition, fixed during training.
      rho    = policy_logps - ref_logps
      target = r / tau - log Z_hat(x)
      L      = 0.5 * mean((rho - target)^2)
    weights (B,), optional: a weighted mean instead (every response of an enumerated space
    weighted by pi_ref(y|x): the loss's exact expectation, its K -> infinity limit).
    Why: the squared error is zero exactly when pi_theta = pi_ref exp((r - V*)/tau), the
    KL-regularised optimum, with no value network to learn.
    """
    _validate(policy_logps=policy_logps, ref_logps=ref_logps, rewards=rewards, log_z=log_z)
    _check_weights(weights, policy_logps)
    rho = policy_logps - ref_logps
    target = rpo_targets(rewards, log_z, tau)
    residual = rho - target
    loss = 0.5 * _mean(residual ** 2, weights)
    metrics = {"loss": float(loss.detach())}
    metrics.update(_means(residual=residual, abs_residual=residual.abs(), log_ratio=rho, target=target))
    return loss, metrics


def dro_loss(policy_logps, ref_logps, rewards, values, tau, weights=None):
    """Direct Reward Optimization loss (arXiv 2405.19107), scaled by 1/tau^2 into RPO's form.

    All inputs (B,); values = V_phi(x) from the value network; weights as in rpo_loss.
      L = 0.5 * mean((policy_logps - ref_logps - (r - V_phi(x)) / tau)^2)
    Gradients reach both the policy log-probs and the values (nothing detached): with separate
    policy and value parameters this joint loss gives DRO's two gradients.
    Why: the same regression as RPO, but the shift V*(x) is learned instead of estimated. (The
    1/tau^2 makes the two losses' values comparable; it does not change AdamW's steps, which are
    invariant to a constant factor on the loss up to its epsilon.)
    """
    tau = _validate(tau, policy_logps=policy_logps, ref_logps=ref_logps, rewards=rewards, values=values)
    _check_weights(weights, policy_logps)
    rho = policy_logps - ref_logps
    target = (_float(rewards) - values) / tau
    residual = rho - target
    loss = 0.5 * _mean(residual ** 2, weights)
    metrics = {"loss": float(loss.detach())}
    metrics.update(_means(residual=residual, abs_residual=residual.abs(), log_ratio=rho,
                          target=target, value=values))
    return loss, metrics


def kto_loss(policy_logps, ref_logps, desirable, kl_policy_logps, kl_ref_logps,
             beta=0.1, desirable_weight=1.0, undesirable_weight=1.0, clamp_z0=True, weights=None,
             kl_weights=None):
    """Kahneman-Tversky Optimization loss (arXiv 2402.01306).

    policy_logps, ref_logps, desirable (bool) (B,); kl_* (M,): log-probs of mismatched pairs
    (prompt i with another sample's response, see kto_mismatched). weights (B,) and
    kl_weights (M,), optional: weighted means for L and z0 (as in rpo_loss).
      rho = policy_logps - ref_logps
      z0  = mean(kl_policy_logps - kl_ref_logps), no gradient, clamped at >= 0 if clamp_z0
      L_i = desirable_weight   * (1 - sigmoid(beta * (rho_i - z0)))   if desirable_i
            undesirable_weight * (1 - sigmoid(beta * (z0 - rho_i)))   otherwise
      L   = mean_i L_i
    The authors' RPO code passes the matched batch as kl_* with clamp_z0=False.
    Why: prospect theory: gains and losses are judged relative to a reference point z0, an
    estimate of KL(pi_theta || pi_ref); only a binary label per sample is needed.
    """
    _validate(policy_logps=policy_logps, ref_logps=ref_logps, desirable=desirable)
    _validate(kl_policy_logps=kl_policy_logps, kl_ref_logps=kl_ref_logps)
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    _check_weights(weights, policy_logps)
    _check_weights(kl_weights, kl_policy_logps)
    desirable = desirable.bool()
    rho = policy_logps - ref_logps
    # z0 is a baseline, not something to optimise: detached, as in the paper and TRL.
    z0 = _mean((kl_policy_logps - kl_ref_logps).detach(), kl_weights)
    if clamp_z0:
        z0 = z0.clamp(min=0)
    gain = desirable_weight * (1 - torch.sigmoid(beta * (rho - z0)))
    loss_side = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - rho)))
    loss = _mean(torch.where(desirable, gain, loss_side), weights)
    rho_d = rho.detach()
    nan = float("nan")  # an empty side has no mean log-ratio; the loss itself stays finite
    metrics = {
        "loss": float(loss.detach()),
        "z0": float(z0),
        "rho_desirable": float(rho_d[desirable].mean()) if desirable.any() else nan,
        "rho_undesirable": float(rho_d[~desirable].mean()) if (~desirable).any() else nan,
        "frac_desirable": float(desirable.float().mean()),
    }
    return loss, metrics


def kto_mismatched(batch_size):
    """Indices pairing each prompt with another sample's response: i -> (i + 1) % B.

    Returns (B,) long. Rolling by one is a permutation with no fixed point for every B >= 2
    (reversing would pair the middle of an odd batch with itself). B < 2 raises ValueError.
    Why: KTO's reference point z0 needs log-ratios of responses that do not belong to the prompt.
    """
    if batch_size < 2:
        raise ValueError(f"kto_mismatched needs a batch of at least 2 samples, got {batch_size}")
    return (torch.arange(batch_size) + 1) % batch_size


def binarize_rewards(rewards, prompt_ids=None, threshold="global", global_mean=None):
    """KTO's desirable / undesirable labels from scalar rewards. rewards (N,) -> (N,) bool.

      "global": desirable iff r >= global_mean (default: the mean of the given rewards; pass
                the training set's mean to label a batch consistently)
      "prompt": desirable iff r >= the mean reward of its prompt group (needs prompt_ids)
    Rewards equal to the mean up to rounding (1e-6 relative) count as desirable.
    Why: KTO needs a binary signal; the per-prompt threshold removes prompt difficulty.
    """
    if threshold not in BINARIZE_THRESHOLDS:
        raise ValueError(f"unknown threshold {threshold!r}; valid: {', '.join(BINARIZE_THRESHOLDS)}")
    if threshold == "prompt":
        if prompt_ids is None:
            raise ValueError('threshold="prompt" needs prompt_ids')
        if global_mean is not None:
            raise ValueError('global_mean is only used with threshold="global"')
        _validate(rewards=rewards, prompt_ids=prompt_ids)
        rewards = _float(rewards)
        group, counts = _groups(prompt_ids)
        mean = _group_mean(rewards, group, counts)[group]
    else:
        _validate(rewards=rewards)
        rewards = _float(rewards)
        if global_mean is None:
            mean = rewards.mean()
        elif math.isfinite(global_mean):
            mean = torch.tensor(float(global_mean), dtype=rewards.dtype, device=rewards.device)
        else:
            raise ValueError(f"global_mean must be finite, got {global_mean}")
    return (rewards >= mean) | _near(rewards, mean)


def sft_select(rewards, prompt_ids, mode="best"):
    """Which samples SFT trains on. rewards (N,), prompt_ids (N,) -> (N,) bool.

      "best":       the highest reward of each prompt, one per prompt (ties: the first index)
                    -- best-of-K, i.e. rejection-sampling fine-tuning
      "all":        every sample
      "above_mean": r > the mean reward of its prompt group (strictly, beyond rounding)
    Why: SFT has no notion of reward, so the reward enters only through the choice of data.
    """
    if mode not in SFT_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(SFT_MODES)}")
    _validate(rewards=rewards, prompt_ids=prompt_ids)
    rewards = _float(rewards)
    if mode == "all":
        return torch.ones_like(rewards, dtype=torch.bool)
    group, counts = _groups(prompt_ids)
    if mode == "above_mean":
        mean = _group_mean(rewards, group, counts)[group]
        return (rewards > mean) & ~_near(rewards, mean)
    fill = torch.full((len(counts),), -math.inf, dtype=rewards.dtype, device=rewards.device)
    best = fill.scatter_reduce(0, group, rewards, "amax")
    index = torch.arange(len(rewards), device=rewards.device)
    # Among each group's maxima, keep the smallest index.
    candidates = torch.where(rewards == best[group], index, torch.full_like(index, len(rewards)))
    first = torch.full_like(counts, len(rewards)).scatter_reduce(0, group, candidates, "amin")
    return index == first[group]


def sft_loss(policy_logps, num_tokens=None):
    """Negative log-likelihood of the selected responses.

    policy_logps (B,) summed log-probs; num_tokens (B,) response lengths, optional.
      per sequence: L = mean_i(-logp_i)
      per token:    L = sum_i(-logp_i) / sum_i(num_tokens_i)     (when num_tokens is given)
    Why: the per-token form weights every token equally, as in pretraining.
    """
    if num_tokens is None:
        _validate(policy_logps=policy_logps)
        loss = -policy_logps.mean()
    else:
        _validate(policy_logps=policy_logps, num_tokens=num_tokens)
        total = num_tokens.sum()
        if total <= 0:
            raise ValueError(f"num_tokens must sum to a positive count, got {float(total)}")
        loss = -policy_logps.sum() / total
    return loss, {"loss": float(loss.detach()), "logp": float(policy_logps.detach().mean())}


# ---------------------------------------------------------------------------------------
# the online family: fresh samples of the policy being trained, a baseline per prompt group
# ---------------------------------------------------------------------------------------

ADVANTAGES = ("rloo", "grpo", "dr_grpo")


def group_advantages(rewards, prompt_ids, kind="rloo", eps=1e-6):
    """A_i = r_i - b(x_i): each sample's reward against a baseline from its own prompt's group.

    rewards (B,), prompt_ids (B,) integer; groups of any sizes, in any order. Returns (B,) float.
    With K = |I_x| samples y_j ~ pi_theta of prompt x and m(x) their mean reward:
      "rloo":    A_i = r_i - (1/(K-1)) sum_{j in I_x, j != i} r_j = K/(K-1) (r_i - m(x))
                 (Ahmadian et al., arXiv 2402.14740)
      "grpo":    A_i = (r_i - m(x)) / (s(x) + eps), s the Bessel-corrected std of the group
                 (Shao et al., arXiv 2402.03300)
      "dr_grpo": A_i = r_i - m(x)  (Liu et al., arXiv 2503.20783: GRPO without the std)
    A group whose rewards are all equal gets A = 0 for every kind: no signal, whatever its size.
    Why: a baseline that does not depend on y_i leaves the policy gradient E[A ∇log pi] unbiased
    and cuts its variance; leaving y_i out of its own baseline (rloo) keeps it so exactly. Dividing
    by s(x) (grpo) gives a prompt whose samples barely differ as much weight as one whose samples
    differ a lot, so the update is no longer the gradient of E[r] - tau KL: pi* still stops it (there
    every r - tau rho of a prompt is tau log Z(x), every group is silent), but where a policy with
    parameters shared across prompts ends, and how it gets there, change.
    """
    if kind not in ADVANTAGES:
        raise ValueError(f"unknown advantage {kind!r}; valid: {', '.join(ADVANTAGES)}")
    _validate(rewards=rewards, prompt_ids=prompt_ids)
    rewards = _float(rewards)
    group, counts = _groups(prompt_ids)
    if (counts == 1).any():
        raise ValueError(f"group advantages need at least two samples per prompt; {int((counts == 1).sum())} "
                         f"prompt(s) have one (sample two or more responses per prompt)")
    centred = rewards - _group_mean(rewards, group, counts)[group]
    k = counts[group].to(rewards.dtype)
    if kind == "rloo":
        return centred * k / (k - 1)
    if kind == "dr_grpo":
        return centred
    std = torch.sqrt(_group_mean(centred ** 2, group, counts)[group] * k / (k - 1))
    return centred / (std + eps)


def zero_variance_groups(rewards, prompt_ids):
    """The fraction of prompt groups whose rewards are all equal (within rounding): the reward gives
    them no signal under any group baseline — the "loss is 0" of GRPO trainers (with the KL inside
    the reward, r - tau*rho, their different responses still get a KL push). rewards, prompt_ids (B,)."""
    group, counts = _groups(prompt_ids)
    fill = torch.full((len(counts),), -math.inf, dtype=_float(rewards).dtype, device=rewards.device)
    high = fill.scatter_reduce(0, group, _float(rewards), "amax")
    low = (-fill).scatter_reduce(0, group, _float(rewards), "amin")
    return float(_near(high, low).float().mean())


def pg_loss(policy_logps, ref_logps, rewards, prompt_ids, tau, kind="rloo"):
    """Policy gradient on the KL-regularised reward, with a group baseline (RLOO, GRPO, Dr. GRPO).

    All inputs (B,), from samples y ~ pi_theta of the policy being trained (strictly on-policy).
      rho = policy_logps - ref_logps                      (detached: a per-sample reward term)
      A   = group_advantages(r - tau * rho, prompt_ids, kind)
      L   = -mean(A * policy_logps)
    Why: for y ~ pi_theta, E[(r - tau rho) ∇log pi] is the gradient of E[r] - tau KL(pi || pi_ref)
    (the extra -tau E[∇log pi] is zero), so with "rloo" or "dr_grpo" it ascends that objective,
    whose optimum pi*_tau is the one RPO and DRO regress onto; the KL enters as the per-sample
    estimator rho. ("grpo" reweights prompts: see group_advantages.)
    """
    tau = _validate(tau, policy_logps=policy_logps, ref_logps=ref_logps, rewards=rewards, prompt_ids=prompt_ids)
    rho = (policy_logps - ref_logps).detach()
    shaped = _float(rewards) - tau * rho
    adv = group_advantages(shaped, prompt_ids, kind)
    loss = -(adv * policy_logps).mean()
    metrics = {"loss": float(loss.detach()), "adv_std": float(adv.std()) if len(adv) > 1 else 0.0}
    metrics.update(_means(log_ratio=rho, adv=adv, shaped_reward=shaped))
    return loss, metrics


def apo_values(rewards, prompt_ids, beta1):
    """A*-PO's optimal-value estimate (Brantley et al., arXiv 2505.20686) for every sample's prompt.

    rewards (N,) of N samples y ~ pi_ref per prompt, prompt_ids (N,). Returns (N,) float:
      V_hat*(x) = beta1 * log (1/N) sum_{j in I_x} exp(r_j / beta1)  =  beta1 * log Z_hat(x)
    Why: it is RPO's "mean" partition, in reward units; A*-PO estimates it once, offline, then
    trains on fresh samples (with beta1 = beta2 = tau its target is RPO's).
    """
    beta1 = _validate(beta1, rewards=rewards, prompt_ids=prompt_ids)
    return beta1 * log_partition(rewards, prompt_ids, beta1, "mean")


def apo_loss(policy_logps, ref_logps, rewards, values, beta2):
    """A*-PO's loss (arXiv 2505.20686) on fresh samples y ~ pi_theta, one per prompt.

    All inputs (B,); values = V_hat*(x) from apo_values, fixed during training.
      L = mean((beta2 * rho - (r - V_hat*(x)))^2),   rho = policy_logps - ref_logps
    Why: the residual is zero exactly at pi* of beta2 when V_hat* is exact; with beta1 = beta2 = tau
    it is tau^2 (rho - (r/tau - log Z_hat))^2 — 2 tau^2 times RPO's loss, on the policy's own samples.
    """
    beta2 = _validate(beta2, policy_logps=policy_logps, ref_logps=ref_logps, rewards=rewards, values=values)
    rho = policy_logps - ref_logps
    residual = beta2 * rho - (_float(rewards) - values)
    loss = (residual ** 2).mean()
    metrics = {"loss": float(loss.detach())}
    metrics.update(_means(residual=residual, log_ratio=rho, value=values))
    return loss, metrics
