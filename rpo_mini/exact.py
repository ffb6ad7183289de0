"""Exact quantities in an exact world: every response enumerated, every expectation a sum.

In the arithmetic world a response is one to three digits then end-of-text, and the model may
write nothing else (`GPTConfig.response_grammar`). The response space Y has 1110 members, so
for each prompt x the whole distribution π(·|x) is a row of a table, and what the other stages
can only estimate from samples is here a finite sum:

    table       log π(y|x) for every y in Y                        (N, Y), rows logsumexp to 0
    log Z_τ(x)  = logsumexp_y ( log π_ref(y|x) + r(x,y)/τ )          (N,)
    π*_τ        log π*_τ(y|x) = log π_ref(y|x) + r(x,y)/τ − log Z_τ(x)   the KL-regularised optimum
    E_π[r]      = Σ_y π(y|x) r(x,y)
    KL(π‖q)     = Σ_y π(y|x) (log π(y|x) − log q(y|x))
    J_τ(π)      = E_π[r] − τ KL(π‖π_ref),   J*_τ = J_τ(π*_τ) = τ log Z_τ(x)
    regret      J*_τ − J_τ(π) = τ KL(π‖π*_τ) ≥ 0

The last line is one line of algebra (substitute log π_ref = log π*_τ − r/τ + log Z_τ into J_τ):
how far a policy falls short of the objective it was trained on *is* τ times its KL to the
optimum. Every function takes tables and returns per-prompt tensors (N,) in float64;
`summary` averages over prompts. Tables come from `logprob_table`, which teacher-forces
every response through the model in batches, one run per distinct prefix.

The frontier: π*_τ over a grid of τ traces {(KL(π*_τ‖π_ref), E_{π*_τ}[r])}, the most reward any
policy can have at that KL from π_ref — the curve no method can beat. `compare` measures one
policy against it: the τ whose optimum spends the policy's own KL (`matched_tau`), the reward
that optimum gets (the frontier at that KL) minus the policy's, KL(π‖π*) there, and the regret
at the τ the policy trained with (its own, in raw reward units: `data.RewardScale.raw_tau`).
"""

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import collate


# ---------------------------------------------------------------------------------------
# the table: log π(y|x) for every prompt and every response
# ---------------------------------------------------------------------------------------

def _plan(responses: list, grammar: torch.Tensor):
    """Which model runs give every factor of every response's probability.

    log π(y|x) = Σ_j log π(y_j | x, y_<j). A factor is free (log 1 = 0) where the grammar allows
    a single token; every other factor needs the logits after the prefix y_<j. Running each
    *longest* needed prefix once gives the logits after all of its own prefixes too.
    Returns (runs, index, use): the prefixes to run; index (Y, J, 3) long, the (run, position,
    token) of each factor of each response; use (Y, J) bool, the factors that need a run."""
    L = len(grammar)
    single = grammar.sum(1) == 1
    needed = {tuple(y[:j]) for y in responses for j in range(len(y)) if not single[min(j, L - 1)]}
    runs = sorted(p for p in needed if not any(q[:len(p)] == p and len(q) > len(p) for q in needed))
    where = {run[:j]: r for r, run in enumerate(runs) for j in range(len(run) + 1)}
    J = max(len(y) for y in responses)
    index = torch.zeros(len(responses), J, 3, dtype=torch.long)
    use = torch.zeros(len(responses), J, dtype=torch.bool)
    for i, y in enumerate(responses):
        for j, t in enumerate(y):
            if not single[min(j, L - 1)]:
                index[i, j] = torch.tensor([where[tuple(y[:j])], j, t])
                use[i, j] = True
    return runs, index, use


def logprob_table(model, prompt_tokens: list, responses: list, eot: int, prompts_per_batch: int = 16,
                  autocast=contextlib.nullcontext, requires_grad: bool = False) -> torch.Tensor:
    """log π(y|x) for every prompt (rows) and every response (columns): (N, Y) float64 on the CPU.

    prompt_tokens: N token lists; responses: Y token lists, each ending with `eot`, together the
    model's whole response space (its `grammar` must be set). The j-th token of a response is
    scored under the restricted softmax `losses.sequence_logprobs` uses, so an entry equals that
    response's teacher-forced (and sampled) log-prob, and each row logsumexps to 0.
    requires_grad: keep the graph, to train on the whole table (an exact-world experiment)."""
    with torch.set_grad_enabled(requires_grad):
        return _table(model, prompt_tokens, responses, eot, prompts_per_batch, autocast)


def _table(model, prompt_tokens, responses, eot, prompts_per_batch, autocast):
    grammar = model.grammar
    if grammar is None:
        raise ValueError("logprob_table needs a model with a response grammar (an exact world)")
    runs, index, use = _plan(responses, grammar.cpu())
    device = next(model.parameters()).device
    J = index.size(1)
    L = len(grammar)
    rows = []
    for s in range(0, len(prompt_tokens), prompts_per_batch):
        chunk = prompt_tokens[s:s + prompts_per_batch]
        tokens, _, last = collate([p for p in chunk for _ in runs], [list(r) for _ in chunk for r in runs], eot)
        with autocast():
            logits = model(tokens.to(device)).float()
        # position last + j predicts the j-th response token, for j = 0 .. J-1
        at = (last.to(device)[:, None] + torch.arange(J, device=device)).clamp(max=logits.size(1) - 1)
        logits = logits.gather(1, at[..., None].expand(-1, -1, logits.size(-1)))          # (B*R, J, V)
        allowed = grammar[torch.arange(J, device=device).clamp(max=L - 1)]                 # (J, V)
        logp = F.log_softmax(logits.masked_fill(~allowed, float("-inf")), -1).double().cpu()
        logp = logp.view(len(chunk), len(runs), J, -1)
        r, j, t = index.unbind(-1)                                                         # (Y, J) each
        factors = logp[:, r, j, t]                                                         # (n, Y, J)
        rows.append(torch.where(use, factors, torch.zeros((), dtype=factors.dtype)).sum(-1))
    return torch.cat(rows)


def reward_table(world, prompts: list[str], reward: str) -> torch.Tensor:
    """r(x, y) for every prompt and every response of the world: (N, Y) float64."""
    f = world.rewards()[reward]
    return torch.tensor([[f(p, y) for y in world.responses()] for p in prompts], dtype=torch.float64)


# ---------------------------------------------------------------------------------------
# exact quantities, per prompt
# ---------------------------------------------------------------------------------------

def log_partition(ref_table, rewards, tau):
    """log Z_τ(x) = logsumexp_y (log π_ref(y|x) + r(x,y)/τ). Tables (N, Y) → (N,)."""
    return torch.logsumexp(ref_table + rewards / tau, dim=-1)


def optimal_table(ref_table, rewards, tau):
    """log π*_τ(y|x) = log π_ref(y|x) + r(x,y)/τ − log Z_τ(x): (N, Y)."""
    scores = ref_table + rewards / tau
    return scores - torch.logsumexp(scores, dim=-1, keepdim=True)


def expected(table, values):
    """E_{y~π}[values(x, y)] = Σ_y π(y|x) values(x, y): (N,)."""
    return (table.exp() * values).sum(-1)


def kl(table, other):
    """KL(π‖q) = Σ_y π(y|x) (log π(y|x) − log q(y|x)): (N,). Terms with π(y|x) = 0 are 0."""
    p = table.exp()
    return torch.where(p > 0, p * (table - other), torch.zeros_like(p)).sum(-1)


def objective(table, ref_table, rewards, tau):
    """J_τ(π) = E_π[r] − τ KL(π‖π_ref), the KL-regularised objective every method here targets: (N,)."""
    return expected(table, rewards) - tau * kl(table, ref_table)


def regret(table, ref_table, rewards, tau):
    """J*_τ − J_τ(π) with J*_τ = τ log Z_τ(x): (N,), ≥ 0, and 0 only at π = π*_τ."""
    return tau * log_partition(ref_table, rewards, tau) - objective(table, ref_table, rewards, tau)


def frontier(ref_table, rewards, taus) -> list[dict]:
    """The exact optimal reward–KL frontier: for each τ, E_{π*_τ}[r] and KL(π*_τ‖π_ref),
    averaged over prompts. No policy has more mean reward at the same mean KL."""
    points = []
    for tau in taus:
        opt = optimal_table(ref_table, rewards, tau)
        points.append({"tau": float(tau), "reward": float(expected(opt, rewards).mean()),
                       "kl": float(kl(opt, ref_table).mean())})
    return points


MATCHED_TAU_LO = 1e-4  # matched_tau's clamp: below it, π*_τ is the reward's maximiser to float precision


def matched_tau(ref_table, rewards, kl_target: float, lo: float = MATCHED_TAU_LO, hi: float = 1e4,
                iters: int = 60) -> float:
    """The τ at which the optimum spends a given KL: mean KL(π*_τ‖π_ref) = kl_target.

    Why bisection works: each prompt's KL(π*_τ‖π_ref) falls as τ grows (from the reward's
    maximiser at τ → 0 to π_ref itself at τ → ∞), so their mean does too. Bisection on log τ,
    clamped to [lo, hi]."""
    def spent(tau):
        return float(kl(optimal_table(ref_table, rewards, tau), ref_table).mean())
    a, b = torch.log(torch.tensor(lo, dtype=torch.float64)), torch.log(torch.tensor(hi, dtype=torch.float64))
    for _ in range(iters):
        mid = (a + b) / 2
        if spent(float(mid.exp())) > kl_target:
            a = mid  # too much KL: τ must grow
        else:
            b = mid
    return float(((a + b) / 2).exp())


def compare(oracle: "Oracle", table: torch.Tensor, tau: float | None = None) -> dict:
    """One policy against the exact optimum, averaged over the oracle's prompts (raw reward units).

    tau: the KL strength the policy trained with, in raw reward units (`RewardScale.raw_tau` of
    its own τ); None for a policy that has no τ of its own (KTO, SFT), which is compared at the
    τ whose optimum spends its KL. Never another objective's τ: each objective is measured against
    the optimum it targets.

    exact_reward, exact_gold, exact_kl   E_π[r], E_π[gold], KL(π‖π_ref)
    matched_tau                          τ_m with KL(π*_{τ_m}‖π_ref) = KL(π‖π_ref) (a policy spending more
                                         KL than any optimum gets the clamp, `matched_tau`'s lo)
    frontier_gap                         E_{π*_{τ_m}}[r] − E_π[r] ≥ 0: reward left on the table at equal KL
    kl_to_matched_optimum                KL(π‖π*_{τ_m})
    own_tau, tau_from                    the τ of the three below: `tau` ("trained") or τ_m ("matched")
    regret, kl_to_own_optimum            J*_τ − J_τ(π) = τ·KL(π‖π*_τ) at own_tau, and that KL (at the matched
                                         τ the regret equals the frontier gap; beyond the frontier's end,
                                         own_tau and the KL are None and the regret is that gap)
    ref_regret                           π_ref's regret at the same τ: what the policy improved on"""
    rewards = oracle.rewards
    out = point(oracle, table)
    tau_m = matched_tau(oracle.ref, rewards, out["exact_kl"])
    opt = optimal_table(oracle.ref, rewards, tau_m)
    out |= {"matched_tau": tau_m, "frontier_gap": float(expected(opt, rewards).mean()) - out["exact_reward"],
            "kl_to_matched_optimum": float(kl(table, opt).mean())}
    if tau is None and beyond_frontier(tau_m):
        # More KL than any optimum spends: the optimum at its KL is the reward's maximiser (τ → 0),
        # where τ·KL(π‖π*_τ) tends to the frontier gap and KL(π‖π*_τ) itself to infinity.
        ref_gap = float((expected(opt, rewards) - expected(oracle.ref, rewards)).mean())
        return out | {"own_tau": None, "tau_from": "matched", "regret": out["frontier_gap"], "kl_to_own_optimum": None,
                      "ref_regret": ref_gap}
    own = tau_m if tau is None else float(tau)
    star = opt if tau is None else optimal_table(oracle.ref, rewards, own)
    return out | {"own_tau": own, "tau_from": "matched" if tau is None else "trained",
                  "regret": float(regret(table, oracle.ref, rewards, own).mean()),
                  "kl_to_own_optimum": float(kl(table, star).mean()),
                  "ref_regret": float(regret(oracle.ref, oracle.ref, rewards, own).mean())}


def beyond_frontier(tau_m: float) -> bool:
    """A matched τ at `matched_tau`'s lower clamp: the policy spends more KL than the reward's
    maximiser, so no optimum has its KL."""
    return tau_m < 1.5 * MATCHED_TAU_LO


def point(oracle: "Oracle", table: torch.Tensor) -> dict:
    """The τ-free part of `compare`: E_π[r], E_π[gold] and KL(π‖π_ref), averaged over prompts."""
    return {"exact_reward": float(expected(table, oracle.rewards).mean()),
            "exact_gold": float(expected(table, oracle.gold).mean()),
            "exact_kl": float(kl(table, oracle.ref).mean())}


# ---------------------------------------------------------------------------------------
# what the pipeline reports
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Oracle:
    """An exact world's ground truth on a set of prompts: π_ref and the rewards of every response.

    It knows no τ: every measure takes the τ it is made at, so no comparison can borrow one
    objective's τ for another."""
    prompts: list            # N prompt texts
    prompt_tokens: list      # N token lists
    response_tokens: list    # Y token lists, end-of-text last: the whole response space
    eot: int
    ref: torch.Tensor        # (N, Y) log π_ref(y|x)
    rewards: torch.Tensor    # (N, Y) the training reward, raw
    gold: torch.Tensor       # (N, Y) the gold reward

    def table(self, model, autocast=contextlib.nullcontext) -> torch.Tensor:
        """log π(y|x) of `model` on these prompts: (N, Y)."""
        return logprob_table(model, self.prompt_tokens, self.response_tokens, self.eot, autocast=autocast)

    def optimal(self, tau: float) -> torch.Tensor:
        """log π*_τ of the raw reward at `tau` (raw reward units): (N, Y)."""
        return optimal_table(self.ref, self.rewards, tau)

    def log_z(self, tau: float, scale=None) -> torch.Tensor:
        """log Z_τ(x) of the rewards an objective trains on, `scale(r)` (a `data.RewardScale`; None:
        the raw reward), at that objective's τ: (N,)."""
        return log_partition(self.ref, self.rewards if scale is None else scale(self.rewards), tau)

    def per_sample(self, values: torch.Tensor, prompts: list) -> torch.Tensor:
        """values (N,) per prompt of this oracle → one per entry of `prompts` (texts)."""
        row = {p: i for i, p in enumerate(self.prompts)}
        missing = sorted({p for p in prompts if p not in row})
        if missing:
            raise ValueError(f"{len(missing)} prompt(s) are not in the exact tables, e.g. {missing[0]!r}")
        return values[torch.tensor([row[p] for p in prompts])]

    def frontier(self, taus) -> list[dict]:
        return frontier(self.ref, self.rewards, taus)


def oracle(model, enc, world, prompts: list[str], reward: str, autocast=contextlib.nullcontext) -> Oracle:
    """The `Oracle` of an exact world on `prompts`, with `model` as π_ref."""
    if world.responses() is None:
        raise ValueError(f"the {world.name} world cannot be enumerated; exact quantities need an exact world")
    prompt_tokens = [enc.encode_ordinary(p) for p in prompts]
    responses = [enc.encode_ordinary(y) + [enc.eot_token] for y in world.responses()]
    ref = logprob_table(model, prompt_tokens, responses, enc.eot_token, autocast=autocast)
    return Oracle(list(prompts), prompt_tokens, responses, enc.eot_token, ref,
                  reward_table(world, prompts, reward), reward_table(world, prompts, world.gold_reward))


# A log-spaced grid of τ (raw reward units) wide enough to run from π_ref (large τ) to the
# reward's maximiser (small τ).
FRONTIER_TAUS = tuple(10 ** (k / 8) for k in range(-24, 9))
