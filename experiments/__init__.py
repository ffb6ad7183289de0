"""The experiments behind FINDINGS.md: does the toy reproduce the RPO paper's claims?

The RPO paper (Faye, Azzag & Lebbah, arXiv 2506.13702) claims that RPO beats SFT, KTO and DRO,
gives more aligned, more diverse and less toxic outputs, and optimises more stably than DRO
because it has no value function. A consumer of the library (`rpo_mini`), which never imports
it; one module per experiment, holding its grid, jobs, analysis, plot and tables:

    frontier       reward–KL (and gold–KL) curve of each objective over its τ / β / lr grid
    offpolicy      the same on off-policy data (responses from the world's other generator),
                   with RPO's "ref" estimator (the authors' code) next to the "mean" one
    k              responses per prompt K at a fixed number of samples: RPO's log Ẑ and DRO's
                   V/τ against a many-sample estimate of log Z
    heterogeneity  subject-prior strength of the world: RPO (per-prompt log Ẑ) vs RPO with one
                   global baseline vs DRO
    variance       gradient spread at fixed parameters (RPO vs DRO vs no baseline, at init /
                   mid / end of training), loss and gradient-norm curves, divergence and
                   collapse at larger learning rates
    cost           time per step and peak memory of each objective
    paper          the `--preset paper` settings vs our defaults, same data

`runner.py` runs them (jobs, worker processes, saving), `stats.py` holds the small statistics,
`tables.py` the markdown and plot helpers. From the repository root:

    python -m experiments NAME [--quick] [--seeds 0,1,2,3,4] [--device auto] [--out findings]
                               [--workers N] [--cache DIR] [--fixed-data] [--plan]
    python -m experiments all --workers 8          # everything: one GPU, 16 CPU cores
    python -m experiments all --plan               # the job counts, nothing run
    python -m experiments writeup --out findings   # markdown tables from the JSON
    python -m experiments all --quick              # a smoke test (~2.5 min, 2-core CPU)

CPU fallback: `all --device cpu --fixed-data --seeds 0,1,2` (one base model per world instead of
one per seed and world; see FINDINGS.md for the time estimates).

Each experiment writes `OUT/NAME.json` (settings, machine, date, per-seed raw values, means with
95% intervals over seeds) and `OUT/NAME.png`, and prints its tables. Everything heavy goes
through the library's cached stages (`rpo_mini.stages`) under `--cache`, so a rerun reuses
worlds, tokenizers, base models, datasets, policies and evaluations.

A seed is a full replicate by default: the world, the pretraining, the data collection and the
alignment all use it. `--fixed-data` keeps one world, base model and dataset (the first seed's)
and varies only alignment and evaluation (cheaper; it understates the spread).

Parallelism: `--workers N` runs independent (setting, seed) jobs in N spawned processes; the
shared artifacts of every job (tokenizer, base model, datasets, reference samples) are built
first, one job per base model, so that the training jobs only read them.
"""

from .cost import COST
from .frontier import FRONTIER, OFFPOLICY
from .heterogeneity import HETEROGENEITY
from .k import K
from .paper import PAPER_PRESET
from .variance import VARIANCE

# Every experiment, in the order `all` runs them.
EXPERIMENTS = {e.name: e for e in (FRONTIER, OFFPOLICY, K, HETEROGENEITY, VARIANCE, COST, PAPER_PRESET)}
