"""The small statistics of the experiments: rows of a grid over seeds, paired differences, the
best setting under a KL budget, Pareto fronts, selection on validation, gradient spread.

Pure functions of plain values (no models, no files), each tested against a naive
computation. Means and intervals over seeds come from `rpo_mini.evaluate.over_seeds`, the Pareto
front and its matched-KL read from `rpo_mini.evaluate` (the notebooks read fronts too).
"""

import json
import math

import torch

from rpo_mini.evaluate import MAX_KL_RATIO, front_value_at, mean_ci, over_seeds, pareto_front  # noqa: F401 (the fronts live there)

KL_THRESHOLDS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, None)  # nats per response; None = no limit

# How a setting's fields read in a label: "τ=0.3", "lr=0.0003", "prior=1".
SYMBOLS = {"sft_lr": "lr", "lr": "lr", "beta": "β", "rpo_tau": "τ", "dro_tau": "τ", "prior_strength": "prior",
           "sft_mode": "mode"}


def number(x) -> float:
    """A JSON value as a float: None (a NaN written as null) reads as NaN."""
    return float("nan") if x is None else float(x)


def setting_label(variant: str, setting: dict) -> str:
    return " ".join(f"{SYMBOLS.get(k, k)}={v:g}" if isinstance(v, (int, float)) else f"{SYMBOLS.get(k, k)}={v}"
                    for k, v in setting.items()) or variant


def make_rows(jobs: list, results: list) -> list:
    """One row per (variant, setting, row fields): the per-seed results and their mean ± interval."""
    rows = {}
    for job, res in zip(jobs, results):
        key = (job.variant, json.dumps(job.setting, sort_keys=True), json.dumps(job.params.get("row", {})))
        row = rows.setdefault(key, {"variant": job.variant, "setting": job.setting, **job.params.get("row", {}),
                                    "label": setting_label(job.variant, job.setting), "per_seed": []})
        row["per_seed"].append({k: v for k, v in res.items() if k not in ("path", "values")})
        row.setdefault("paths", []).append(res.get("path"))
    for row in rows.values():
        row["mean"], row["ci"] = over_seeds(row["per_seed"])
        row["n_seeds"] = len(row["per_seed"])
        row["n_diverged"] = sum(bool(r.get("diverged")) for r in row["per_seed"])
    return list(rows.values())


def best_under_kl(points: list, thresholds=KL_THRESHOLDS) -> list:
    """points: (kl, value, label, ...) → for each threshold the point with the highest value
    among those with kl ≤ threshold (None = no limit), or None when no point qualifies."""
    out = []
    for t in thresholds:
        ok = [p for p in points if t is None or p[0] <= t]
        out.append(max(ok, key=lambda p: p[1]) if ok else None)
    return out


def per_seed_points(rows: list, variant: str, metric: str, kl: str = "kl") -> dict:
    """{seed: [(kl, metric, val_kl, val_metric) of each setting]}: test and validation coordinates of
    one variant's rows (diverged runs and runs without those values left out). `kl`: which KL
    (the sampled "kl", or the exact world's "exact_kl")."""
    out = {}
    for r in rows:
        if r["variant"] == variant:
            for res in r["per_seed"]:
                keys = (kl, metric, f"val_{kl}", f"val_{metric}")
                if not res.get("diverged") and all(math.isfinite(number(res.get(k))) for k in keys):
                    out.setdefault(res["seed"], []).append(tuple(res[k] for k in keys))
    return out


def matched_kl(rows: list, variants: list, metric: str, targets, against: str = "rpo",
               max_ratio: float = MAX_KL_RATIO, kl: str = "kl") -> list:
    """At each target KL t: every variant's upper-envelope `metric` per seed — the Pareto front of its
    settings chosen on *validation* (KL, metric), read on *test* at KL t (`front_value_at`, only
    between neighbours within `max_ratio` of t) — its mean ± interval over the seeds where t can be
    read, and the difference variant − `against`, paired by seed over the seeds where both can."""
    pts = {v: per_seed_points(rows, v, metric, kl) for v in variants}

    def read(p, t):
        return front_value_at([(a, b) for a, b, _, _ in p], t, max_ratio, pareto_front([(c, d) for _, _, c, d in p]))
    out = []
    for t in targets:
        at = {v: {s: read(p, t) for s, p in pts[v].items()} for v in variants}
        at = {v: {s: x for s, x in d.items() if x is not None} for v, d in at.items()}
        entry = {"kl": t, "max_ratio": max_ratio, "value": {v: [*mean_ci(d.values()), len(d)] for v, d in at.items()}}
        if against in at:
            entry["minus_" + against] = {
                v: [*mean_ci([d[s] - at[against][s] for s in d if s in at[against]]),
                    sum(s in at[against] for s in d)] for v, d in at.items() if v != against}
        out.append(entry)
    return out


def select_per_seed(rows: list, key: str = "val_gated_gold") -> dict:
    """Per variant and seed, the setting with the highest validation `key` (each replicate tunes
    on its own validation prompts; the test prompts stay untouched): {variant: {seed: (label, result)}}."""
    chosen = {}
    for r in rows:
        for res in r["per_seed"]:
            if res.get("diverged") or not math.isfinite(number(res.get(key))):
                continue
            best = chosen.setdefault(r["variant"], {}).get(res["seed"])
            if best is None or res[key] > best[1][key]:
                chosen[r["variant"]][res["seed"]] = (r["label"], res)
    return chosen


def paired_difference(a: list, b: list, key: str) -> tuple[float, float]:
    """Mean and 95% interval of a[key] − b[key] over the seeds both have (paired by seed)."""
    ok = lambda r: isinstance(r.get(key), (int, float)) and not r.get("diverged")  # noqa: E731
    bs = {r["seed"]: r[key] for r in b if ok(r)}
    return mean_ci([r[key] - bs[r["seed"]] for r in a if ok(r) and r["seed"] in bs])


def difference_in_differences(a: list, b: list, c: list, e: list, key: str) -> list:
    """[mean, 95% interval, n] of (a − b) − (c − e) in `key`, paired by seed over the seeds all
    four per-seed lists have (diverged runs and missing values left out). With a, b = DRO, RPO
    on off-policy data and c, e = DRO, RPO on π_ref's own samples: how much more the off-policy
    data moves DRO than RPO."""
    ok = lambda r: isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and not r.get("diverged")  # noqa: E731
    a, b, c, e = ({r["seed"]: r[key] for r in x if ok(r)} for x in (a, b, c, e))
    common = sorted(set(a) & set(b) & set(c) & set(e))
    return [*mean_ci([(a[s] - b[s]) - (c[s] - e[s]) for s in common]), len(common)]


class GradientSpread:
    """Running spread of vectors g_1..g_M (Welford, float64, O(P) memory):

        trace_cov       = Σ_m ||g_m − ḡ||² / (M − 1)   (trace of the sample covariance)
        mean_grad_sq    = ||ḡ||²                       (the signal)
        noise_to_signal = trace_cov / ||ḡ||²"""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, 0.0

    def add(self, g: torch.Tensor) -> None:
        g = g.detach().double()
        self.n += 1
        if self.mean is None:
            self.mean = torch.zeros_like(g)
        delta = g - self.mean
        self.mean += delta / self.n
        self.m2 += float(delta @ (g - self.mean))

    def stats(self) -> dict:
        trace = self.m2 / (self.n - 1) if self.n > 1 else float("nan")
        signal = float(self.mean @ self.mean)
        return {"n": self.n, "trace_cov": trace, "mean_grad_sq": signal,
                "noise_to_signal": trace / signal if signal > 0 else float("nan")}
