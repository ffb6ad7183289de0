"""Evaluation on held-out prompts: reward, gold reward, win rate, KL, diversity, toxicity, fluency;
the Pareto front of (KL, value) points and its reading at a matched KL.

Intervals are 95% normal intervals over *prompts* (a prompt's samples are averaged first),
because samples of one prompt are not independent of each other.
"""

import contextlib
import math

import torch

from .sampling import response_logprobs, rollout


MIN_FLUENCY = 0.9  # a setting chosen on validation must still speak the world's language


def mean_ci(values) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal interval (t-quantile for tiny samples)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, _t975(n - 1) * sd / math.sqrt(n)


def _t975(df: int) -> float:
    """97.5% quantile of Student's t: a table up to 30 degrees of freedom (between two entries,
    the smaller df's value, which errs wide), the normal 1.96 beyond."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
             9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}
    if df > 30:
        return 1.96
    return table[max(k for k in table if k <= df)]


def over_seeds(per_seed: list[dict], keys=None) -> tuple[dict, dict]:
    """Mean and 95% interval over runs (seeds) of every numeric key, or of `keys`.

    Runs marked `diverged` and non-finite values are left out. A key measured by a single run
    keeps that run's own interval (`<key>_ci`, over prompts) when it has one."""
    ok = [r for r in per_seed if not r.get("diverged")]
    if keys is None:
        keys = [k for k, v in (ok[0] if ok else {}).items() if k != "seed" and not k.endswith("_ci")
                and isinstance(v, (int, float)) and not isinstance(v, bool)]
    mean, ci = {}, {}
    for k in keys:
        runs = [r for r in ok if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        if len(runs) == 1 and f"{k}_ci" in runs[0]:
            mean[k], ci[k] = runs[0][k], runs[0][f"{k}_ci"]
        else:
            mean[k], ci[k] = mean_ci([r[k] for r in runs])
    return mean, ci


def distinct_n(texts: list[str], n: int) -> float:
    """Unique word n-grams over all n-grams, across every sample (Li et al. 2016)."""
    grams = [tuple(w[i:i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@torch.no_grad()
def sample_and_score(policy, ref, enc, world, prompts: list[str], n: int, max_new_tokens: int, seed: int,
                     autocast=contextlib.nullcontext) -> dict:
    """n samples per prompt from `policy`; their scores, fluency and log-ratio to `ref`."""
    g = torch.Generator(device=next(policy.parameters()).device).manual_seed(seed)
    r = rollout(policy, enc, world, prompts, n, max_new_tokens, g, autocast=autocast)
    ref_logps = response_logprobs(ref, r.prompt_tokens, r.response_tokens, enc.eot_token, autocast=autocast).tolist()
    return {"prompts": r.prompts, "texts": r.texts, "scores": r.scores, "fluent": r.fluent,
            "log_ratio": [a - b for a, b in zip(r.logps, ref_logps)], "n": n}


def summarize(s: dict, world, reward: str, baseline: dict | None = None) -> dict:
    """The table's metrics from `sample_and_score` output (and the reference's, for win rate)."""
    n = s["n"]
    per_prompt = lambda xs: [sum(xs[i:i + n]) / n for i in range(0, len(xs), n)]
    rewards = [sc[reward] for sc in s["scores"]]
    gold = [sc[world.gold_reward] for sc in s["scores"]]
    out = {}
    out["reward"], out["reward_ci"] = mean_ci(per_prompt(rewards))
    out["gold"], out["gold_ci"] = mean_ci(per_prompt(gold))
    # fluency-gated gold: a sample that does not speak the world's language scores as a failure
    gated = [g if ok else world.gold_floor for g, ok in zip(gold, s["fluent"])]
    out["gated_gold"], out["gated_gold_ci"] = mean_ci(per_prompt(gated))
    out["kl"], out["kl_ci"] = mean_ci(per_prompt(s["log_ratio"]))  # E_π[log π − log π_ref]
    if baseline is not None:
        base = [sc[reward] for sc in baseline["scores"]]
        wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(rewards, base)]
        out["win_rate"], out["win_rate_ci"] = mean_ci(per_prompt(wins))
    out["distinct_1"] = distinct_n(s["texts"], 1)
    out["distinct_2"] = distinct_n(s["texts"], 2)
    if "toxicity" in s["scores"][0]:
        out["toxicity_rate"] = sum(sc["toxicity"] > 0 for sc in s["scores"]) / len(rewards)
    out["fluency"] = sum(s["fluent"]) / len(rewards)
    out["length"] = sum(len(t.split()) for t in s["texts"]) / len(rewards)
    return out


def pareto_front(points: list) -> list:
    """points: (kl, value) → for each, True when no other point has kl ≤ and value ≥ with one
    of them strict (lower KL and higher value are both better)."""
    return [not any(k2 <= k and v2 >= v and (k2 < k or v2 > v) for k2, v2 in points) for k, v in points]


# A matched-KL read at KL t interpolates only between front points within this factor of t: a
# chord across a sparse front (no setting near t) is no read at all.
MAX_KL_RATIO = 2.0


def front_value_at(points: list, t: float, max_ratio: float | None = None, on_front: list | None = None) -> float | None:
    """points: (kl, value) of one objective's settings in one replicate → the value of their upper
    envelope at KL = t, by linear interpolation between the two front points around t.

    The front is the points no other beats on both (lower KL, higher value), or `on_front`
    (booleans, one per point) when it was chosen elsewhere — on validation, to be read on test.
    None outside the front's KL range (never extrapolated), and, with `max_ratio`, when a
    neighbour used lies farther than that factor from t (t/max_ratio ≤ kl ≤ t·max_ratio)."""
    chosen = pareto_front(points) if on_front is None else on_front
    front = sorted(p for p, on in zip(points, chosen) if on)
    if not front or not front[0][0] <= t <= front[-1][0]:
        return None
    near = (lambda k: t / max_ratio <= k <= t * max_ratio) if max_ratio else (lambda k: True)  # noqa: E731
    for (k0, v0), (k1, v1) in zip(front, front[1:]):
        if k0 <= t <= k1:
            if k0 == t or k1 == k0:
                return v0
            if k1 == t:
                return v1
            return v0 + (v1 - v0) * (t - k0) / (k1 - k0) if near(k0) and near(k1) else None
    return front[0][1]  # a front of one point, at exactly t
