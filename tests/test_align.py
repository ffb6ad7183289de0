"""What each objective trains on, checked number by number.

Every expected value is recomputed here from the dataset's records and the models themselves:
log-probs by a naive per-token loop over an unpadded forward pass, rewards z-scored with the
statistics module, partitions and reference points by plain Python sums. The prepared
alignment (`align.Alignment`) must agree on a minibatch, for every objective and option.
"""

import dataclasses
import math
import statistics

import pytest
import torch

from rpo_mini.align import OBJECTIVES, Alignment, Fresh

IDX = torch.tensor([0, 1, 5, 9, 13, 14, 30])  # several prompts, several samples of some


def naive_logp(model, prompt, response, mean=False):
    """Σ_t log π(y_t | x, y_<t), one unpadded sequence at a time, log-softmax in float64."""
    seq = torch.tensor([prompt + response])
    with torch.no_grad():
        lp = torch.log_softmax(model(seq)[0].double(), -1)
    vals = [lp[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(response)]
    return sum(vals) / (len(vals) if mean else 1)


def zscored(data):
    r = [float(rec["reward"]) for rec in data.records]
    mean, std = statistics.fmean(r), statistics.stdev(r)
    return [(x - mean) / std for x in r]


def groups(data):
    out = {}
    for i, rec in enumerate(data.records):
        out.setdefault(rec["prompt_id"], []).append(i)
    return [out[data.records[i]["prompt_id"]] for i in range(len(data.records))]


def perturbed(a: Alignment, seed=0, scale=0.02):
    """Move the policy (and value network) away from π_ref, so that every log-ratio is non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in a.policy.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
        if a.value is not None:
            a.value.head.weight.copy_(0.5 * torch.randn(a.value.head.weight.shape, generator=g))
            a.value.head.bias.fill_(0.3)
    return a


def make(tiny, objective, tau=0.5, **changes):
    st, base, data = tiny
    cfg = dataclasses.replace(st.cfg.align, **changes)
    return perturbed(Alignment(objective, base, data, cfg, lr=1e-3, tau=tau, seed=0, eot=st.enc.eot_token))


def rhos(a, idx, mean=False):
    d = a.data
    return [naive_logp(a.policy, d.prompt_tokens[i], d.response_tokens[i], mean)
            - naive_logp(a.ref, d.prompt_tokens[i], d.response_tokens[i], mean) for i in idx.tolist()]


@pytest.mark.parametrize("length_normalize", [False, True])
def test_rpo_loss_is_half_the_mean_squared_gap_to_the_shifted_reward(tiny, length_normalize):
    tau = 0.5
    a = make(tiny, "rpo", tau, length_normalize=length_normalize)
    rz, grp = zscored(a.data), groups(a.data)
    loss, _ = a.loss(IDX)
    expected = []
    for i, rho in zip(IDX.tolist(), rhos(a, IDX, length_normalize)):
        log_z = math.log(statistics.fmean(math.exp(rz[j] / tau) for j in grp[i]))
        expected.append(0.5 * (rho - (rz[i] / tau - log_z)) ** 2)
    assert loss.item() == pytest.approx(statistics.fmean(expected), rel=1e-4)


def test_rpo_without_zscoring_trains_on_the_raw_rewards(tiny):
    tau = 2.0
    a = make(tiny, "rpo", tau, rewards_zscore=False)
    raw, grp = [float(rec["reward"]) for rec in a.data.records], groups(a.data)
    assert a.fixed["rewards"].tolist() == pytest.approx(raw, rel=1e-6)
    log_z = [math.log(statistics.fmean(math.exp(raw[j] / tau) for j in grp[i])) for i in range(len(raw))]
    assert a.fixed["log_z"].tolist() == pytest.approx(log_z, rel=1e-5, abs=1e-5)


def test_rpo_leave_one_out_estimator_leaves_each_sample_out_of_its_own_partition(tiny):
    tau = 0.5
    a = make(tiny, "rpo", tau, estimator="loo")
    rz, grp = zscored(a.data), groups(a.data)
    for i in IDX.tolist():
        others = [rz[j] / tau for j in grp[i] if j != i]
        want = math.log(sum(math.exp(v) for v in others) / len(others))
        assert a.fixed["log_z"][i].item() == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_rpo_ref_estimator_weights_each_response_by_its_reference_probability(tiny):
    tau = 1.0
    a = make(tiny, "rpo", tau, estimator="ref")
    rz, grp, d = zscored(a.data), groups(a.data), a.data
    ref = [naive_logp(a.ref, d.prompt_tokens[j], d.response_tokens[j]) for j in range(len(d))]
    for i in IDX.tolist():
        want = math.log(sum(math.exp(ref[j] + rz[j] / tau) for j in grp[i]))
        assert a.fixed["log_z"][i].item() == pytest.approx(want, abs=1e-3)


def test_rpo_uniform_estimator_trains_on_mid_rank_quantiles_with_their_exact_partition(tiny):
    tau = 0.3
    a = make(tiny, "rpo", tau, estimator="uniform")
    raw, grp = [float(rec["reward"]) for rec in a.data.records], groups(a.data)
    for i in range(len(raw)):
        others = [raw[j] for j in grp[i]]
        below, ties = sum(r < raw[i] for r in others), sum(r == raw[i] for r in others) - 1
        assert a.fixed["rewards"][i].item() == pytest.approx((below + 0.5 * ties) / (len(others) - 1))
    # the log-mean-exp of the K quantiles 0, 1/(K-1), ..., 1 of a group of K, by hand
    want = [math.log(sum(math.exp(q / ((len(grp[i]) - 1) * tau)) for q in range(len(grp[i]))) / len(grp[i]))
            for i in range(len(raw))]
    assert a.fixed["log_z"].tolist() == pytest.approx(want, rel=1e-6)


def test_dro_loss_regresses_the_log_ratio_onto_reward_minus_the_value_network(tiny):
    tau = 0.5
    a = make(tiny, "dro", tau)
    rz, d = zscored(a.data), a.data
    loss, _ = a.loss(IDX)
    expected = []
    for i, rho in zip(IDX.tolist(), rhos(a, IDX)):
        with torch.no_grad():  # V(x) read at the last token of the prompt alone
            h = a.value.trunk.hidden_states(torch.tensor([d.prompt_tokens[i]]))[0, -1]
            v = (a.value.head.weight[0] @ h + a.value.head.bias[0]).item()
        expected.append(0.5 * (rho - (rz[i] - v) / tau) ** 2)
    assert abs(v) > 0.1  # the value network really contributes
    assert loss.item() == pytest.approx(statistics.fmean(expected), rel=1e-4)
    loss.backward()  # and both the policy and the value network get a gradient
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (a.policy.wte.weight, a.value.head.weight))


@pytest.mark.parametrize("variant, threshold", [("halos", "global"), ("paper", "global"), ("halos", "prompt")])
def test_kto_loss_from_labels_and_reference_point_worked_out_by_hand(tiny, variant, threshold, monkeypatch):
    beta = 0.3
    a = make(tiny, "kto", None, kto_variant=variant, kto_threshold=threshold, beta=beta)
    d, idx = a.data, IDX.tolist()
    raw, grp = [float(rec["reward"]) for rec in d.records], groups(d)
    mean = statistics.fmean(raw)
    desirable = [raw[i] >= (statistics.fmean(raw[j] for j in grp[i]) if threshold == "prompt" else mean) - 1e-9
                 for i in idx]
    rho = rhos(a, IDX)
    if variant == "paper":  # the matched batch, not clamped
        z0 = statistics.fmean(rho)
    else:  # prompt i with the next sample's response, clamped at 0
        nxt = idx[1:] + idx[:1]
        z0 = max(0.0, statistics.fmean(
            naive_logp(a.policy, d.prompt_tokens[i], d.response_tokens[j])
            - naive_logp(a.ref, d.prompt_tokens[i], d.response_tokens[j]) for i, j in zip(idx, nxt)))
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = statistics.fmean(1 - sig(beta * (r - z0)) if good else 1 - sig(beta * (z0 - r))
                                for r, good in zip(rho, desirable))
    from rpo_mini import losses

    seen, real = {}, losses.kto_loss

    def spy(*args, **kw):  # what the loss is handed as the reference point's log-probs
        seen["kl"] = (args[3].detach() - args[4]).tolist()
        return real(*args, **kw)

    monkeypatch.setattr(losses, "kto_loss", spy)
    loss, metrics = a.loss(IDX)
    if variant == "halos":  # the pairs themselves, before the mean and the clamp
        assert seen["kl"] == pytest.approx([naive_logp(a.policy, d.prompt_tokens[i], d.response_tokens[j])
                                            - naive_logp(a.ref, d.prompt_tokens[i], d.response_tokens[j])
                                            for i, j in zip(idx, nxt)], abs=2e-3)
    assert metrics["z0"] == pytest.approx(z0, abs=1e-4)
    assert loss.item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("mode", ["best", "all", "above_mean"])
def test_sft_trains_on_the_selected_responses_only(tiny, mode):
    a = make(tiny, "sft", None, sft_mode=mode)
    raw, grp = [float(rec["reward"]) for rec in a.data.records], groups(a.data)
    if mode == "best":  # the first of each prompt's highest rewards
        want = [i for i in range(len(raw)) if i == min(j for j in grp[i] if raw[j] == max(raw[k] for k in grp[i]))]
    elif mode == "all":
        want = list(range(len(raw)))
    else:
        want = [i for i in range(len(raw)) if raw[i] > statistics.fmean(raw[j] for j in grp[i]) + 1e-9]
    assert a.fixed["index"].tolist() == want
    for step in range(4):  # every batch the loop draws comes from the selection
        assert set(a.batch(step).tolist()) <= set(want)


@pytest.mark.parametrize("length_normalize", [False, True])
def test_sft_loss_is_the_per_token_negative_log_likelihood(tiny, length_normalize):
    a = make(tiny, "sft", None, length_normalize=length_normalize)
    d, idx = a.data, IDX.tolist()
    loss, _ = a.loss(IDX)
    if length_normalize:
        expected = -statistics.fmean(naive_logp(a.policy, d.prompt_tokens[i], d.response_tokens[i], True) for i in idx)
    else:
        expected = -sum(naive_logp(a.policy, d.prompt_tokens[i], d.response_tokens[i]) for i in idx) \
            / sum(len(d.response_tokens[i]) for i in idx)
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_the_loop_follows_the_schedule_and_clips_what_the_optimizer_sees(tiny):
    """lr from warm-up and cosine worked out by hand; the optimizer steps on gradients whose joint
    norm is the clip, while the history records the norm before clipping."""
    st, base, data = tiny
    cfg = dataclasses.replace(st.cfg.align, steps=6, warmup=2, grad_clip=1e-3)
    a = Alignment("rpo", base, data, cfg, lr=0.01, tau=1.0, seed=0, eot=st.enc.eot_token)
    seen = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(math.sqrt(sum(float((p.grad ** 2).sum()) for g in self.param_groups
                                      for p in g["params"] if p.grad is not None)))
            return super().step(closure)

    a.loop.optimizer = Recording(a.policy.parameters(), lr=0.01)
    history = a.train(log=lambda *x: None)
    peak, cos = 0.01, lambda p: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))
    want_lr = [peak * 0.5, peak, peak * cos(0), peak * cos(0.25), peak * cos(0.5), peak * cos(0.75)]
    assert [h["lr"] for h in history["train"]] == pytest.approx(want_lr)
    assert seen == pytest.approx([1e-3] * 6, rel=1e-4)
    assert all(h["grad_norm"] > 1e-2 for h in history["train"])  # the clip really bit


def test_the_history_records_the_policy_s_and_the_value_network_s_own_gradient_norms(tiny):
    """DRO trains two networks; `grad_norm` is the policy's alone (so that it compares with the
    other objectives'), `value_grad_norm` the value network's: both before clipping."""
    st, base, data = tiny
    cfg = dataclasses.replace(st.cfg.align, steps=1)
    a = Alignment("dro", base, data, cfg, lr=1e-3, tau=0.5, seed=0, eot=st.enc.eot_token)
    b = Alignment("dro", base, data, cfg, lr=1e-3, tau=0.5, seed=0, eot=st.enc.eot_token)
    b.loss(b.batch(0))[0].backward()
    norm = lambda m: math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in m.parameters() if p.grad is not None))  # noqa: E731
    h = a.train(log=lambda *x: None)["train"][0]
    assert h["grad_norm"] == pytest.approx(norm(b.policy), rel=1e-4)
    assert h["value_grad_norm"] == pytest.approx(norm(b.value), rel=1e-4)
    assert abs(norm(b.policy) - norm(b.value)) > 1e-3 * norm(b.policy)  # the two are told apart


def test_every_objective_in_the_registry_trains_and_the_loop_gets_the_configured_settings(tiny):
    st, base, data = tiny
    cfg = dataclasses.replace(st.cfg.align, steps=3, warmup=1, grad_clip=0.5, checkpoint_every=7)
    for name, obj in OBJECTIVES.items():
        fresh = Fresh(st.world, st.enc, st.world.default_reward, st.cfg.collect.max_new_tokens)
        a = Alignment(name, base, data, cfg, lr=3e-4, tau=1.0 if obj.uses_tau else None, seed=0,
                      eot=st.enc.eot_token, fresh=fresh)
        assert (a.value is not None) == obj.value_network
        history = a.train(log=lambda *x: None)
        assert [h["step"] for h in history["train"]] == [1, 2, 3]
        assert (a.loop.steps, a.loop.warmup, a.loop.grad_clip, a.loop.save_every) == (3, 1, 0.5, 7)


def test_loop_run_in_pieces_equals_one_run(tiny):
    st, base, data = tiny
    cfg = dataclasses.replace(st.cfg.align, steps=4)
    one = Alignment("dro", base, data, cfg, lr=1e-3, tau=1.0, seed=0, eot=st.enc.eot_token)
    one.train(log=lambda *x: None)
    two = Alignment("dro", base, data, cfg, lr=1e-3, tau=1.0, seed=0, eot=st.enc.eot_token)
    for until in (0, 1, 3, None):
        two.train(log=lambda *x: None, until=until)
    for p, q in zip(list(one.policy.parameters()) + list(one.value.parameters()),
                    list(two.policy.parameters()) + list(two.value.parameters())):
        assert torch.equal(p, q)


# --- DRO with the authors' shared value head, clipping apart, RPO's "iw" estimator -----------------

def naive_logp_with_grad(model, prompt, response):
    """`naive_logp`, keeping the graph: Σ_t log π(y_t | x, y_<t), one unpadded sequence."""
    lp = torch.log_softmax(model(torch.tensor([prompt + response]))[0].double(), -1)
    return sum(lp[len(prompt) - 1 + t, tok] for t, tok in enumerate(response))


def naive_dro_loss(a, idx, value_of, tau):
    """0.5 · mean (ρ − (z − V(x)) / τ)², one sample at a time; value_of(prompt tokens) → V(x)."""
    rz, d, terms = zscored(a.data), a.data, []
    for i in idx.tolist():
        rho = naive_logp_with_grad(a.policy, d.prompt_tokens[i], d.response_tokens[i]) \
            - naive_logp(a.ref, d.prompt_tokens[i], d.response_tokens[i])
        terms.append(0.5 * (rho - (rz[i] - value_of(d.prompt_tokens[i])) / tau) ** 2)
    return sum(terms) / len(terms)


def policy_grad(a, loss):
    a.policy.zero_grad(set_to_none=True)
    if a.value is not None:
        a.value.zero_grad(set_to_none=True)
    loss.backward()
    return torch.cat([p.grad.flatten().double() for p in a.policy.parameters()])


def test_dro_shared_value_is_a_head_on_the_policy_with_no_trunk_of_its_own(tiny):
    from rpo_mini.model import PooledValueHead

    a = make(tiny, "dro", dro_value="shared")
    n_embd = a.policy.config.n_embd
    assert isinstance(a.value, PooledValueHead) and a.modules["value"] is a.value
    assert sum(p.numel() for p in a.value.parameters()) == n_embd + 1  # weight and bias, nothing else
    assert not {id(p) for p in a.value.parameters()} & {id(p) for p in a.policy.parameters()}
    # the optimizer trains the policy and the head: no second trunk anywhere
    trained = {id(p) for g in a.optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in a.policy.parameters()} | {id(p) for p in a.value.parameters()}
    net = make(tiny, "dro")  # the default: a value network with its own trunk
    assert sum(p.numel() for p in net.value.parameters()) > sum(p.numel() for p in a.policy.parameters())


def test_dro_shared_value_reads_the_policy_s_mean_prompt_state_and_trains_the_policy_through_it(tiny):
    """The loss and the policy's gradient against a naive recomputation: V(x) = head(mean of the
    policy's hidden states over the unpadded prompt), the gradient flowing into the policy
    through V as well. Without that path (V detached) the policy's gradient is different; with
    DRO's own value network there is no such path."""
    tau = 0.5
    a = make(tiny, "dro", tau, dro_value="shared")
    head = a.value.head

    def shared_v(prompt, detach=False):
        h = a.policy.hidden_states(torch.tensor([prompt]))[0].double().mean(0)
        v = h @ head.weight[0].double() + head.bias[0].double()
        return v.detach() if detach else v

    loss, _ = a.loss(IDX)
    want = naive_dro_loss(a, IDX, shared_v, tau)
    assert loss.item() == pytest.approx(want.item(), rel=1e-4)
    got_grad = policy_grad(a, loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())  # the head trains too
    want_grad = policy_grad(a, naive_dro_loss(a, IDX, shared_v, tau))
    assert (got_grad - want_grad).norm() < 1e-3 * want_grad.norm()
    detached = policy_grad(a, naive_dro_loss(a, IDX, lambda p: shared_v(p, detach=True), tau))
    assert (detached - want_grad).norm() > 0.05 * want_grad.norm()  # the value path really reaches the policy

    # the separate value network: the policy's gradient is the value-detached one
    net = make(tiny, "dro", tau)

    def net_v(prompt):
        with torch.no_grad():
            h = net.value.trunk.hidden_states(torch.tensor([prompt]))[0, -1].double()
            return h @ net.value.head.weight[0].double() + net.value.head.bias[0].double()

    got_net = policy_grad(net, net.loss(IDX)[0])
    want_net = policy_grad(net, naive_dro_loss(net, IDX, net_v, tau))
    assert (got_net - want_net).norm() < 1e-3 * want_net.norm()


@pytest.mark.parametrize("dro_value", ["network", "shared"])
@pytest.mark.parametrize("separate", [False, True])
def test_clip_separately_reaches_the_loop_and_clips_policy_and_value_apart(tiny, dro_value, separate):
    """What the optimizer sees after a tiny clip: each module's gradient norm at the clip (apart),
    or the two together at the clip (jointly)."""
    st, base, data = tiny
    cfg = dataclasses.replace(st.cfg.align, steps=1, grad_clip=1e-5, clip_separately=separate, dro_value=dro_value)
    a = perturbed(Alignment("dro", base, data, cfg, lr=1e-3, tau=0.5, seed=0, eot=st.enc.eot_token))
    assert a.loop.clip_separately is separate
    seen = []
    norm = lambda m: math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in m.parameters() if p.grad is not None))  # noqa: E731

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            seen.append((norm(a.policy), norm(a.value)))
            return super().step(closure)

    a.loop.optimizer = Recording(list(a.policy.parameters()) + list(a.value.parameters()), lr=1e-3)
    h = a.train(log=lambda *x: None)["train"][0]
    assert h["grad_norm"] > 1e-3 and h["value_grad_norm"] > 1e-3  # both well above the clip before clipping
    (pol, val), = seen
    if separate:
        assert (pol, val) == (pytest.approx(1e-5, rel=1e-3), pytest.approx(1e-5, rel=1e-3))
    else:
        assert math.hypot(pol, val) == pytest.approx(1e-5, rel=1e-3)
        assert pol / val == pytest.approx(h["grad_norm"] / h["value_grad_norm"], rel=1e-3)  # one common factor


def test_rpo_iw_estimator_weights_each_sample_by_reference_over_behavior(tiny):
    """log Ẑ(x) = log (1/K) Σ_j exp(log π_ref(y_j|x) − behavior_logp_j + z_j/τ), by hand, with the
    reference log-probs recomputed and each record's own behavior_logp."""
    from rpo_mini.data import Dataset

    st, base, data = tiny
    records = [dict(r, behavior_logp=-0.5 - 0.37 * (i % 7)) for i, r in enumerate(data.records)]
    with_mu = Dataset(data.prompt_tokens, data.response_tokens, data.prompt_ids, data.rewards, records)
    tau = 1.0
    cfg = dataclasses.replace(st.cfg.align, estimator="iw")
    a = Alignment("rpo", base, with_mu, cfg, lr=1e-3, tau=tau, seed=0, eot=st.enc.eot_token)
    rz, grp, d = zscored(with_mu), groups(with_mu), with_mu
    ref = [naive_logp(a.ref, d.prompt_tokens[j], d.response_tokens[j]) for j in range(len(d))]
    for i in IDX.tolist():
        terms = [ref[j] - records[j]["behavior_logp"] + rz[j] / tau for j in grp[i]]
        m = max(terms)
        want = m + math.log(sum(math.exp(x - m) for x in terms) / len(terms))
        assert a.fixed["log_z"][i].item() == pytest.approx(want, abs=1e-3)
    # and the behavior log-probs really enter: with them all 0 it is another number
    zero = Dataset(data.prompt_tokens, data.response_tokens, data.prompt_ids, data.rewards,
                   [dict(r, behavior_logp=0.0) for r in data.records])
    b = Alignment("rpo", base, zero, cfg, lr=1e-3, tau=tau, seed=0, eot=st.enc.eot_token)
    assert (a.fixed["log_z"] - b.fixed["log_z"]).abs().min() > 0.1


def test_rpo_iw_estimator_without_behavior_log_probs_is_refused(tiny):
    from rpo_mini.runtime import UserError

    st, base, data = tiny
    assert data.behavior_logps is None  # π_ref's own samples
    cfg = dataclasses.replace(st.cfg.align, estimator="iw")
    with pytest.raises(UserError, match="--estimator iw needs the log-probability.*behavior_logp"):
        Alignment("rpo", base, data, cfg, lr=1e-3, tau=1.0, seed=0, eot=st.enc.eot_token)


def test_config_refuses_the_iw_estimator_without_off_policy_data():
    from rpo_mini.config import parse_config
    from rpo_mini.runtime import UserError

    with pytest.raises(UserError, match="--estimator iw reweights off-policy samples.*add --off_policy"):
        parse_config(["--estimator", "iw"])
    with pytest.raises(UserError, match="--estimator iw"):
        parse_config(["--world", "arithmetic", "--estimator", "iw", "--objectives", "rpo,dro"])
    assert parse_config(["--world", "arithmetic", "--estimator", "iw", "--off_policy"]).align.estimator == "iw"
    assert parse_config(["--estimator", "iw", "--dataset", "d.jsonl"]).collect.dataset == "d.jsonl"  # its own data
    # the reviews world's off-policy generator has no known μ; per-token means are no importance weights
    with pytest.raises(UserError, match="the reviews world does not know"):
        parse_config(["--estimator", "iw", "--off_policy"])
    with pytest.raises(UserError, match="needs summed log-probs"):
        parse_config(["--world", "arithmetic", "--estimator", "iw", "--off_policy", "--length_normalize"])
    assert parse_config(["--estimator", "iw", "--objectives", "sft,dro"]).align.estimator == "iw"  # no RPO: moot
    cfg = parse_config(["--dro_value", "shared", "--clip_separately"])
    assert (cfg.align.dro_value, cfg.align.clip_separately) == ("shared", True)


def test_saved_progress_is_resumed_only_when_asked(tiny, tmp_path):
    st, base, data = tiny
    cfg = dataclasses.replace(st.cfg.align, steps=4, checkpoint_every=2)
    state = str(tmp_path / "rpo.state")
    Alignment("rpo", base, data, cfg, lr=1e-3, tau=0.5, seed=0, eot=st.enc.eot_token).train(
        state_path=state, until=2, log=lambda *x: None)
    said = []
    fresh = Alignment("rpo", base, data, cfg, lr=1e-3, tau=0.5, seed=0, eot=st.enc.eot_token)
    fresh.train(state_path=state, resume=False, log=said.append, until=1)
    assert fresh.loop.step == 1 and not any("resumed" in s for s in said)
    again = Alignment("rpo", base, data, cfg, lr=1e-3, tau=0.5, seed=0, eot=st.enc.eot_token)
    again.train(state_path=state, resume=True, log=said.append, until=3)
    assert "rpo: resumed at step 2" in said and again.loop.step == 3
