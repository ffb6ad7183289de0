"""What every experiment's write-up shares: the palette, markdown tables, plot helpers, and
`writeup`, which turns the saved `OUT/NAME.json` files into markdown.

Tables and plots are drawn from a result dict as it was saved (strict JSON: a NaN reads as
None), so that `writeup` regenerates them from the files alone.
"""

import json
import math
import os
import re

from matplotlib.figure import Figure

from rpo_mini import report
from rpo_mini.files import atomic_open

# The objectives' colours are the library's; the experiments' own variants and baselines added.
COLORS = {**report.COLORS, "rpo-ref": "tab:cyan", "rpo-global": "tab:red", "rpo-loo": "tab:olive",
          "rpo-exact": "navy", "rpo-iw": "tab:brown", "dro-joint": "tab:pink", "dro-shared": "indigo", "none": "0.4",
          "rpo-online": "darkturquoise", "dro-online": "mediumpurple"}


# --- markdown ----------------------------------------------------------------------------------

def pm(mean, ci, fmt="+.3f") -> str:
    """'mean ± ci', or 'n/a' for a missing mean; the interval left out when there is none."""
    if mean is None or (isinstance(mean, float) and not math.isfinite(mean)):
        return "n/a"
    return f"{mean:{fmt}}" + (f" ± {ci:.3f}" if ci is not None and math.isfinite(ci) else "")


def pmn(x, fmt="+.3f") -> str:
    """[mean, ci, n] → 'mean ± ci (n)', or '—' when nothing was measured (n = 0)."""
    if not x or x[2] == 0:
        return "—"
    return pm(x[0], x[1], fmt) + f" ({x[2]})"


def table(header, lines) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
                     ["| " + " | ".join(str(c) for c in ln) + " |" for ln in lines])


def provenance(d) -> str:
    """One line: how, where and when the result was made."""
    m = d["machine"]
    return (f"*{d['experiment']}*: `{d['command'] or d['rerun']}` — {d['device']}, {m['cpu']} ({m['cores']} cores), "
            f"torch {m['torch']}; {d['date']}; {d['elapsed_s']:.0f} s for {d['jobs']} jobs; seeds {d['seeds']}"
            f"{' (alignment only: one world/base/dataset)' if d.get('fixed_data') else ''}"
            f"{'; QUICK variant, not a result' if d['quick'] else ''}.")


def metric_table(rows, extra=(), reference=False) -> str:
    """The test metrics of every row (mean ± CI over seeds); `reference`: π_ref's first."""
    cols = [("reward", "reward"), ("gold", "gold"), ("kl", "KL"), ("win_rate", "win vs ref"),
            ("distinct_2", "distinct-2"), ("toxicity_rate", "toxic"), ("fluency", "fluent")]
    header = ["variant", *extra, "setting", *[c[1] for c in cols], "seeds"]
    lines = []
    if reference and rows:  # every row holds the same reference evaluations (per seed)
        r = rows[0]
        lines.append(["π_ref", *["" for _ in extra], "base model",
                      *[pm(r["mean"].get(f"ref_{k}"), r["ci"].get(f"ref_{k}"), "+.3f" if k in ("reward", "gold")
                           else ".3f") if k not in ("kl", "win_rate") else "—" for k, _ in cols], r["n_seeds"]])
    for r in rows:
        lines.append([r["variant"], *[r.get(e, "") for e in extra], r["label"],
                      *[pm(r["mean"].get(k), r["ci"].get(k), "+.3f" if k in ("reward", "gold") else ".3f")
                        for k, _ in cols], f"{r['n_seeds'] - r.get('n_diverged', 0)}/{r['n_seeds']}"])
    return table(header, lines)


# --- plots -------------------------------------------------------------------------------------

def figure(ncols: int, figsize):
    """A figure with one row of `ncols` axes, drawn straight to a file (as the library's report
    does: no pyplot state, any backend)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(1, ncols)


def save(fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def mean_of(row, k) -> float:
    """A row's mean of `k` for plotting: NaN when missing."""
    v = row["mean"].get(k)
    return float("nan") if v is None else v


def ci_of(row, k) -> float:
    """A row's interval of `k` for error bars: 0 when missing."""
    v = row["ci"].get(k)
    return 0.0 if v is None else v


def smooth(xs, w):
    """Moving average over `w` values (len(xs) − w + 1 of them)."""
    return [sum(xs[i - w:i]) / w for i in range(w, len(xs) + 1)]


# --- the write-up ------------------------------------------------------------------------------

def writeup(experiments: dict, out: str, findings: str | None = None) -> str:
    """Markdown tables of every `OUT/NAME.json` of `experiments` ({name: Experiment}); written to
    OUT/TABLES.md and, when `findings` names a file with `<!-- BEGIN NAME -->` /
    `<!-- END NAME -->` markers, between them. The analyses are recomputed from the JSON, and
    the figures (OUT/NAME.png) redrawn from it."""
    parts = {}
    for name, exp in experiments.items():
        path = os.path.join(out, f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                d = exp.analysed(json.load(f))
            parts[name] = exp.markdown(d)
            exp.plot(d, os.path.join(out, f"{name}.png"))
    text = "\n\n".join(f"## {name}\n\n{body}\n\n![{name}]({name}.png)" for name, body in parts.items())
    with atomic_open(os.path.join(out, "TABLES.md")) as f:
        f.write("# Experiment tables (generated by `python -m experiments writeup`)\n\n" + text + "\n")
    if findings and os.path.exists(findings):
        with open(findings) as f:
            before = f.read()
        rel = os.path.relpath(out, os.path.dirname(os.path.abspath(findings)))
        doc = before
        for name, body in parts.items():
            block = f"{body}\n\n![{name}]({rel}/{name}.png)\n"
            doc = re.sub(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)",
                         lambda m: m.group(1) + block + m.group(2), doc, flags=re.S)
        if doc != before:  # a file without markers (or already up to date) is left as it is
            with atomic_open(findings) as f:
                f.write(doc)
    return text
