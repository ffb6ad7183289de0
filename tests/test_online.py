"""The online family: group baselines against naive loops, A*-PO against RPO, and training on
fresh samples of the current policy (sampled, counted, and closer to the exact optimum)."""

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from rpo_mini import align as align_mod
from rpo_mini import exact, losses
from rpo_mini.align import Alignment, Fresh
from rpo_mini.sampling import response_logprobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# unequal groups, interleaved, with a tie and a zero-variance group (prompt 7)
REWARDS = [0.5, 2.0, -1.0, 0.5, 3.0, 1.5, 1.5, 1.5, -0.25, 4.0]
IDS = [3, 5, 3, 3, 5, 7, 7, 7, 3, 5]


def _naive_advantages(rewards, ids, kind):
    out = []
    for i, (r, p) in enumerate(zip(rewards, ids)):
        group = [rewards[j] for j in range(len(rewards)) if ids[j] == p]
        others = [rewards[j] for j in range(len(rewards)) if ids[j] == p and j != i]
        mean = sum(group) / len(group)
        if kind == "rloo":
            out.append(r - sum(others) / len(others))
        elif kind == "dr_grpo":
            out.append(r - mean)
        else:
            std = math.sqrt(sum((g - mean) ** 2 for g in group) / (len(group) - 1))
            out.append((r - mean) / (std + 1e-6))
    return out


@pytest.mark.parametrize("kind", losses.ADVANTAGES)
def test_group_advantages_match_a_naive_loop(kind):
    got = losses.group_advantages(torch.tensor(REWARDS, dtype=torch.float64), torch.tensor(IDS), kind)
    assert got.tolist() == pytest.approx(_naive_advantages(REWARDS, IDS, kind), rel=1e-12, abs=1e-12)
    assert got[5:8].tolist() == [0.0, 0.0, 0.0]  # a group of equal rewards has no signal


def test_rloo_is_the_mean_baseline_times_k_over_k_minus_one():
    r, ids = torch.tensor(REWARDS, dtype=torch.float64), torch.tensor(IDS)
    k = losses.group_sizes(ids).double()
    assert losses.group_advantages(r, ids, "rloo").tolist() == pytest.approx(
        (losses.group_advantages(r, ids, "dr_grpo") * k / (k - 1)).tolist(), rel=1e-12)


def test_group_advantages_refuse_a_lone_response_and_an_unknown_kind():
    with pytest.raises(ValueError, match="at least two samples per prompt; 1 prompt"):
        losses.group_advantages(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="unknown advantage 'ppo'"):
        losses.group_advantages(torch.tensor([1.0, 2.0]), torch.tensor([0, 0]), "ppo")


def test_zero_variance_groups_by_hand():
    # groups 3 and 5 differ, group 7 is constant: one of three
    assert losses.zero_variance_groups(torch.tensor(REWARDS), torch.tensor(IDS)) == pytest.approx(1 / 3)


def test_pg_loss_is_reinforce_on_the_kl_regularised_reward():
    """Its gradient with respect to each log-prob is −A_i/B, A from r − τ·ρ with ρ held fixed."""
    tau = 0.7
    logps = torch.tensor([-3.0, -1.0, -2.5, -4.0, -0.5, -2.0, -1.0, -3.0, -2.0, -1.5], dtype=torch.float64,
                         requires_grad=True)
    ref = torch.tensor([-2.0, -1.5, -2.5, -3.0, -1.0, -2.0, -2.0, -2.5, -2.5, -1.0], dtype=torch.float64)
    loss, m = losses.pg_loss(logps, ref, torch.tensor(REWARDS, dtype=torch.float64), torch.tensor(IDS), tau, "rloo")
    loss.backward()
    shaped = [r - tau * (lp - rf) for r, lp, rf in zip(REWARDS, logps.tolist(), ref.tolist())]
    adv = _naive_advantages(shaped, IDS, "rloo")
    assert logps.grad.tolist() == pytest.approx([-a / len(adv) for a in adv], rel=1e-12)
    assert float(loss.detach()) == pytest.approx(-sum(a * lp for a, lp in zip(adv, logps.tolist())) / len(adv), rel=1e-12)
    assert m["log_ratio"] == pytest.approx(sum(lp - rf for lp, rf in zip(logps.tolist(), ref.tolist())) / 10)


def test_apo_values_match_a_float64_loop():
    beta1 = 0.4
    got = losses.apo_values(torch.tensor(REWARDS, dtype=torch.float64), torch.tensor(IDS), beta1)
    for g, p in zip(got.tolist(), IDS):
        group = [r for r, q in zip(REWARDS, IDS) if q == p]
        assert g == pytest.approx(beta1 * math.log(sum(math.exp(r / beta1) for r in group) / len(group)), rel=1e-12)


def test_apo_loss_with_equal_betas_is_two_tau_squared_times_rpo_loss():
    """β₁ = β₂ = τ: A*-PO's target is RPO's ("mean" partition), its loss 2τ²× RPO's — at a τ that
    is neither default, on unequal groups."""
    tau = 0.7
    gen = torch.Generator().manual_seed(0)
    r, ids = torch.tensor(REWARDS, dtype=torch.float64), torch.tensor(IDS)
    logps, ref = -torch.rand(10, generator=gen, dtype=torch.float64) * 5, -torch.rand(10, generator=gen,
                                                                                       dtype=torch.float64) * 5
    apo, _ = losses.apo_loss(logps, ref, r, losses.apo_values(r, ids, tau), tau)
    rpo, _ = losses.rpo_loss(logps, ref, r, losses.log_partition(r, ids, tau, "mean"), tau)
    assert float(apo) == pytest.approx(2 * tau ** 2 * float(rpo), rel=1e-12)
    # β₁ ≠ β₂, by hand: mean over samples of (β₂ρ − (r − β₁ log mean exp(r/β₁) of the prompt))²
    beta1, total = 0.3, 0.0
    for i, p in enumerate(IDS):
        group = [q for q, pid in zip(REWARDS, IDS) if pid == p]
        v = beta1 * math.log(sum(math.exp(q / beta1) for q in group) / len(group))
        total += (tau * (float(logps[i]) - float(ref[i])) - (REWARDS[i] - v)) ** 2
    other, _ = losses.apo_loss(logps, ref, r, losses.apo_values(r, ids, beta1), tau)
    assert float(other) == pytest.approx(total / len(IDS), rel=1e-12)


def _fresh(st):
    return Fresh(st.world, st.enc, st.world.default_reward, st.cfg.collect.max_new_tokens)


@pytest.mark.parametrize("objective", ["rloo", "apo", "rpo"])
def test_an_online_step_samples_the_current_policy(tiny, monkeypatch, objective):
    """Every step's samples come from the policy being trained, not π_ref: after training, the
    sampler's log-probs are the trained policy's (and not π_ref's)."""
    st, base, data = tiny
    cfg = dataclasses.replace(st.cfg.align, steps=3, warmup=0, online=True, group_size=4)
    a = Alignment(objective, base, data, cfg, 3e-3, 0.5, 0, st.enc.eot_token, fresh=_fresh(st))
    sampled = []
    real = align_mod.rollout
    monkeypatch.setattr(align_mod, "rollout", lambda model, *args, **kw: sampled.append(
        (model, real(model, *args, **kw))) or sampled[-1][1])
    a.train()
    assert sampled and all(m is a.policy for m, _ in sampled)
    r = sampled[-1][1]  # the last step's samples (the finiteness check after the last update)
    eot = st.enc.eot_token
    mine = response_logprobs(a.policy, r.prompt_tokens, r.response_tokens, eot)
    ref = response_logprobs(a.ref, r.prompt_tokens, r.response_tokens, eot)
    assert torch.tensor(r.logps).tolist() == pytest.approx(mine.tolist(), abs=1e-3)
    assert (torch.tensor(r.logps) - ref).abs().max() > 0.05
    group = 1 if objective == "apo" else 4
    per_step = (cfg.batch_size // group) * group
    assert a.history["generations"] == {"dataset": len(data) if objective == "apo" else 0, "fresh": 3 * per_step}
    row = a.history["train"][-1]
    assert row["generations"] == per_step and 0 <= row["fluency"] <= 1 and row["entropy"] > 0
    assert ("zero_variance_groups" in row) == (group > 1)


def test_a_resumed_online_run_samples_what_an_uninterrupted_one_would(tiny, tmp_path):
    st, base, data = tiny
    cfg = dataclasses.replace(st.cfg.align, steps=4, warmup=0, checkpoint_every=2, group_size=4)
    whole = Alignment("rloo", base, data, cfg, 1e-3, 0.5, 0, st.enc.eot_token, fresh=_fresh(st))
    whole.train()
    state = str(tmp_path / "rloo.state")
    first = Alignment("rloo", base, data, cfg, 1e-3, 0.5, 0, st.enc.eot_token, fresh=_fresh(st))
    first.train(state_path=state, until=2)
    second = Alignment("rloo", base, data, cfg, 1e-3, 0.5, 0, st.enc.eot_token, fresh=_fresh(st))
    said = []
    second.train(state_path=state, resume=True, log=said.append)
    assert "rloo: resumed at step 2" in said
    for p, q in zip(whole.policy.parameters(), second.policy.parameters()):
        assert torch.equal(p, q)


def test_online_objectives_need_their_sampler(tiny):
    st, base, data = tiny
    with pytest.raises(ValueError, match="rloo trains on fresh samples"):
        Alignment("rloo", base, data, st.cfg.align, 1e-4, 0.5, 0, st.enc.eot_token)


def test_online_run_lowers_every_methods_exact_regret_below_the_reference(tmp_path):
    """Arithmetic world, each policy against the optimum at its own τ: RLOO, Dr. GRPO, A*-PO, and
    RPO and DRO on fresh samples all end closer to π*_τ than π_ref (GRPO runs as Dr. GRPO here: its
    std-scaled update is not the objective's gradient, measured in FINDINGS, not asserted)."""
    out = tmp_path / "out"
    cmd = [sys.executable, "train.py", "--quick", "--world", "arithmetic", "--objectives", "rloo,grpo,apo,rpo,dro",
           "--online", "--no-grpo_std", "--lr", "3e-4", "--steps", "100", "--eval_every", "1000", "--threads", "1",
           "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.load(open(out / "metrics.json"))
    for obj in ("rloo", "grpo", "apo", "rpo", "dro"):
        m = metrics["policies"][obj]
        assert m["regret"] < m["ref_regret"], (obj, m["regret"], m["ref_regret"])
        assert m["generations"] == 100 * 16 + (192 if obj == "apo" else 0)  # --quick: 16 per step, 48 prompts × 4


def test_under_torchrun_each_prompt_s_group_stays_on_one_rank(tiny):
    """Two ranks share one step's prompts between them, whole groups each: together they sample
    exactly the prompts one process would, each with all of its group_size responses."""
    from rpo_mini.runtime import Dist

    st, base, data = tiny
    cfg = dataclasses.replace(st.cfg.align, group_size=4)

    def prompt_groups(dist, step=3):
        a = Alignment("rloo", base, data, cfg, 1e-4, 0.5, 0, st.enc.eot_token, fresh=_fresh(st), dist=dist)
        _, _, f, _ = a.sample(step)
        ids = f["prompt_ids"].tolist()
        return {p: ids.count(p) for p in ids}

    alone = prompt_groups(Dist())
    ranks = [prompt_groups(Dist(rank=r, world_size=2)) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1])
    assert ranks[0] | ranks[1] == alone and set(alone.values()) == {4}


def _gloo_rank(rank: int, out: str, results):
    """One of two CPU processes in a gloo process group: two online RLOO steps, DDP-wrapped."""
    import traceback

    try:
        _gloo_steps(rank, out, results)
    except Exception:
        results.put((rank, traceback.format_exc(), None))


def _gloo_steps(rank: int, out: str, results):
    import torch.distributed as tdist

    from rpo_mini import stages
    from rpo_mini.runtime import Dist
    from tests.conftest import tiny_config

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"file://{out}/pg")
    cfg = tiny_config(out)
    m = stages.materials(cfg)  # built once by the parent: every process reads the cache
    acfg = dataclasses.replace(cfg.align, steps=2, warmup=0, group_size=4)
    dist = Dist(rank, 2)
    a = Alignment("rloo", m.base.value, m.data.value, acfg, 1e-3, 0.5, 0, m.tok.value.eot_token,
                  fresh=stages.fresh_sampling(m.world, m.tok, cfg.collect), dist=dist,
                  wrap=lambda module: torch.nn.parallel.DistributedDataParallel(module))
    ids = a.sample(0)[2]["prompt_ids"].tolist()
    a.train(log=lambda *x: None)
    flat = torch.cat([p.detach().flatten() for p in a.policy.parameters()])
    results.put((rank, ids, hashlib.sha256(flat.numpy().tobytes()).hexdigest()))  # plain values: the child exits
    tdist.destroy_process_group()


def test_two_gloo_processes_sample_disjoint_whole_groups_and_keep_one_policy(tmp_path):
    """torchrun's setting on the CPU: each rank samples its own prompts, whole groups of 4, and DDP
    keeps the two ranks' policies identical after the updates."""
    import torch.multiprocessing as mp

    from rpo_mini import stages
    from tests.conftest import tiny_config

    stages.materials(tiny_config(tmp_path))  # world, tokenizer, base and dataset, cached for both ranks
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_gloo_rank, args=(r, str(tmp_path), results)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = dict((rank, (ids, params)) for rank, ids, params in (results.get(timeout=300) for _ in procs))
    assert all(params is not None for _, params in got.values()), [ids for ids, _ in got.values()]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    (ids0, params0), (ids1, params1) = got[0], got[1]
    assert not set(ids0) & set(ids1)
    assert all(ids0.count(i) == 4 for i in ids0) and all(ids1.count(i) == 4 for i in ids1)
    assert params0 == params1  # the digests of the two ranks' parameters


def test_rloo_expected_gradient_is_the_exact_policy_gradient_of_j_tau():
    """Averaged over every ordered group of K = 2 samples from a 3-response policy, RLOO's
    gradient is −∇J_τ(π) with J_τ = E_π[r] − τ KL(π‖π_ref) (`exact.objective`): the limit the gap
    experiment's population run "rloo" ascends. Enumerated in float64, at τ = 0.7."""
    logits = torch.tensor([0.3, -0.5, 1.1], dtype=torch.float64, requires_grad=True)
    ref = torch.log_softmax(torch.tensor([0.0, 0.4, -0.2], dtype=torch.float64), -1)
    r, tau = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64), 0.7
    logp = torch.log_softmax(logits, -1)
    expected = torch.zeros(3, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            ys = torch.tensor([i, j])
            loss, _ = losses.pg_loss(logp[ys], ref[ys], r[ys], torch.tensor([0, 0]), tau, kind="rloo")
            g, = torch.autograd.grad(loss, logits, retain_graph=True)
            expected += logp[i].exp().detach() * logp[j].exp().detach() * g
    exact_loss = -exact.objective(logp[None], ref[None], r[None], tau).mean()
    g_exact, = torch.autograd.grad(exact_loss, logits)
    assert torch.allclose(expected, g_exact, atol=1e-12)
