"""The experiments behind FINDINGS.md: does the toy reproduce the RPO paper's claims?

The RPO paper (Faye, Azzag & Lebbah, arXiv 2506.13702) claims that RPO beats SFT, KTO and DRO,
gives more aligned, more diverse and less toxic outputs, and optimises more stably than DRO
because it has no value function. A consumer of the library (`rpo_mini`), which never imports
it; one module per experiment (the exact world's five share one), holding its grid, jobs, analysis,
plot and tables:

    frontier       every objective over the same grid of learning rate × its own knob (reviews):
                   upper envelopes, matched-KL comparisons, tuning on validation
    optimum        the same in the exact world (arithmetic): each policy's exact regret, KL to
                   π*_τ and gap to the exact optimal frontier
    partition      K from 2 to 64 in the exact world: RPO's "mean", "loo", "ref" and "exact"
                   partitions against DRO, and each log Ẑ(x) against the enumerated log Z(x)
    gap            the exact world's gap to the optimum split into generalisation, estimation,
                   sampling (K, and the population loss K = ∞) and optimisation, along training
    online         RLOO, GRPO, Dr. GRPO, A*-PO, online RPO and DRO on fresh samples against
                   offline RPO and DRO: exact regret against the generations spent
    value          DRO's V(x)/τ over alignment seeds vs the bootstrap spread of RPO's log Ẑ(x),
                   both against the exact log Z(x)
    offpolicy      frontier on data from the world's off-policy generator, with RPO's "ref"
                   estimator (the authors' code) next to "mean"
    exact_offpolicy  off-policy in the exact world, with the importance-weighted partition "iw"
    heterogeneity  subject-prior strength of the reviews world: RPO (per-prompt log Ẑ) vs one
                   global baseline vs DRO over a τ grid, at matched KL
    exact_heterogeneity  the same in the exact world, where difficulty makes rewards depend on
                   the prompt
    variance       gradient spread and minibatch/full-batch agreement along RPO's and DRO's
                   training, loss and gradient-norm curves, the learning-rate stress test
    cost           time per step and peak memory of each objective
    paper          the authors' settings (`--preset paper`) one factor at a time, and the
                   authors' DRO (a value head on the policy)

`runner.py` runs them (jobs, worker processes, saving), `stats.py` holds the small statistics,
`tables.py` the markdown and plot helpers. From the repository root:

    python -m experiments NAME [--quick] [--seeds 0,1,2,3,4] [--device auto] [--out DIR]
                               [--workers N] [--cache DIR] [--fixed-data] [--plan]
    python -m experiments all --workers 8          # everything: one GPU, 16 CPU cores
    python -m experiments all --plan               # the job counts, nothing run
    python -m experiments writeup --out findings   # markdown tables from the JSON
    python -m experiments all --quick              # a smoke test (minutes on a 2-core CPU)

FINDINGS.md names the command each result came from (each JSON's `rerun`), with its seeds.

Results go to `findings/` only from a full run of the design the committed `findings/NAME.json`
records (its seeds and data design); `--quick` and any other run write to `out/findings-scratch/`
unless `--out` says where.

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
from .exact_world import EXACT_HETEROGENEITY, EXACT_OFFPOLICY, OPTIMUM, PARTITION, VALUE
from .frontier import FRONTIER, OFFPOLICY
from .gap import GAP
from .heterogeneity import HETEROGENEITY
from .online import ONLINE_EXPERIMENT
from .paper import PAPER_PRESET
from .variance import VARIANCE

# Every experiment, in the order `all` runs them.
EXPERIMENTS = {e.name: e for e in (FRONTIER, OPTIMUM, GAP, ONLINE_EXPERIMENT, PARTITION, VALUE, OFFPOLICY, EXACT_OFFPOLICY, HETEROGENEITY,
                                   EXACT_HETEROGENEITY, VARIANCE, COST, PAPER_PRESET)}
