"""The GPT: causality, the KV cache, learning, initial loss."""

import math

import pytest
import torch

from rpo_mini.model import GPT, GPTConfig

EOT = 0


def tiny(n_layer=2, vocab=50, block=32, **kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=2, n_embd=32, **kw)).eval()


def test_causality_future_tokens_never_change_past_logits():
    model = tiny()
    x = torch.randint(1, 50, (2, 16))
    y = x.clone()
    y[:, 9:] = torch.randint(1, 50, (2, 7))
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-6)
    assert not torch.allclose(a[:, 9:], b[:, 9:], atol=1e-3)  # the test can see a change


def test_kv_cache_sampling_equals_full_recompute():
    model = tiny()
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]  # ragged: exercises left padding
    outs = []
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(123)
        outs.append(model.generate(prompts, 12, EOT, generator=g, use_cache=use_cache, return_logprobs=True))
    (t1, lp1), (t2, lp2) = outs
    assert torch.equal(t1, t2)
    assert torch.allclose(lp1, lp2, atol=1e-5)


def test_sampled_logprobs_match_an_unpadded_forward():
    """Each row, run alone and unpadded through forward(), gives the log-probs generate() recorded."""
    model = tiny()
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]
    g = torch.Generator().manual_seed(7)
    new, logps = model.generate(prompts, 10, EOT, generator=g, return_logprobs=True)
    for b, p in enumerate(prompts):
        row = new[b].tolist()
        n = row.index(EOT) + 1 if EOT in row else len(row)
        seq = torch.tensor([p + row[:n]])
        with torch.no_grad():
            logp = torch.log_softmax(model(seq)[0, len(p) - 1:-1], -1)
        expected = logp.gather(1, seq[0, len(p):, None]).squeeze(1)
        assert torch.allclose(logps[b, :n], expected, atol=1e-5)
        assert (logps[b, n:] == 0).all() and (new[b, n:] == EOT).all()


def test_generation_is_reproducible_under_a_seed_and_varies_across_seeds():
    model = tiny()
    run = lambda s: model.generate([[1, 2, 3]] * 4, 10, EOT, generator=torch.Generator().manual_seed(s))
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_top_k_one_is_greedy():
    model = tiny()
    new = model.generate([[1, 2, 3]], 5, EOT, top_k=1, generator=torch.Generator().manual_seed(0))
    seq = [1, 2, 3]
    for _ in range(new.size(1)):
        with torch.no_grad():
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        if seq[-1] == EOT:
            break
    assert new[0, :len(seq) - 3].tolist() == seq[3:]


def test_one_layer_model_overfits_a_tiny_batch_and_every_parameter_gets_a_gradient():
    model = tiny(n_layer=1).train()
    x = torch.randint(1, 50, (4, 12))
    targets = torch.roll(x, -1, 1)
    targets[:, -1] = -1
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _, first = model(x, targets)
    first.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for _ in range(100):
        opt.zero_grad()
        _, loss = model(x, targets)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first.item()


def test_fresh_model_loss_is_near_ln_vocab():
    model = tiny(vocab=300)
    x = torch.randint(0, 300, (8, 32))
    _, loss = model(x, torch.roll(x, -1, 1))
    assert abs(loss.item() - math.log(300)) < 0.1


def test_masked_targets_are_ignored():
    model = tiny()
    x = torch.randint(1, 50, (2, 10))
    t = torch.roll(x, -1, 1)
    t2 = t.clone()
    t2[:, 5:] = -1
    logits, loss = model(x, t2)
    expected = torch.nn.functional.cross_entropy(logits[:, :5].reshape(-1, 50), t[:, :5].reshape(-1))
    assert torch.allclose(loss, expected, atol=1e-6)


def test_hidden_states_feed_the_head_and_flops_count():
    model = tiny()
    x = torch.randint(1, 50, (2, 8))
    with torch.no_grad():
        assert torch.allclose(model.lm_head(model.hidden_states(x)), model(x), atol=1e-6)
    cfg = model.config
    # count by hand: per block 12·C² weights + biases/LN; tied head; no position embedding
    C, L, V = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    n = V * C + L * (12 * C * C + 13 * C) + 2 * C
    assert model.num_params() == n
    assert model.flops_per_token(8) == 6 * n + 12 * L * 8 * C


def test_too_long_input_is_refused_with_a_clear_message():
    model = tiny(block=8)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size"):
        model.generate([[1, 2, 3]], 6, EOT)


@pytest.mark.parametrize("temperature, top_k", [(0.5, None), (2.0, None), (1.0, 4), (0.7, 3)])
def test_sampled_logprobs_are_under_the_tempered_and_truncated_distribution(temperature, top_k):
    """generate() samples from softmax(logits / T) restricted to the top k: the log-probs it
    records are those of that distribution, recomputed here from an unpadded forward, and every
    token it picks is one of the top k."""
    model = tiny()
    prompts = [[5, 6, 7], [8, 9]]
    new, logps = model.generate(prompts, 8, EOT, temperature=temperature, top_k=top_k,
                                generator=torch.Generator().manual_seed(3), return_logprobs=True)
    for b, p in enumerate(prompts):
        row = new[b].tolist()
        n = row.index(EOT) + 1 if EOT in row else len(row)
        seq = p + row[:n]
        with torch.no_grad():
            logits = model(torch.tensor([seq]))[0, len(p) - 1:-1].double() / temperature
        if top_k is not None:
            kth = logits.topk(top_k, -1).values[:, -1:]
            assert all(logits[j, tok] >= kth[j, 0] for j, tok in enumerate(row[:n]))
            logits = logits.masked_fill(logits < kth, float("-inf"))
        expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(row[:n])[:, None]).squeeze(1)
        assert torch.allclose(logps[b, :n].double(), expected, atol=1e-4)


def test_sampling_frequencies_follow_the_tempered_distribution():
    model = tiny()
    with torch.no_grad():
        model.wte.weight.mul_(5)  # (tied with the head) sharper logits, so temperature matters
        logits = model(torch.tensor([[1, 2, 3]]))[0, -1].double()
    for t in (0.5, 1.0, 2.0):
        first = model.generate([[1, 2, 3]] * 3000, 1, EOT, temperature=t, generator=torch.Generator().manual_seed(0))
        freq = torch.bincount(first[:, 0], minlength=50).double() / 3000
        want = torch.softmax(logits / t, -1)
        assert (freq - want).abs().sum() / 2 < 0.06, t  # total variation: sampling noise only
    assert (torch.softmax(logits / 0.5, -1) - torch.softmax(logits / 2.0, -1)).abs().sum() / 2 > 0.3


def test_weight_tying_the_head_is_the_embedding_and_gradients_reach_it_through_the_head():
    model = tiny().train()
    assert model.lm_head.weight is model.wte.weight
    h = torch.randn(1, 3, model.config.n_embd)  # features that do not come from the embedding
    model.lm_head(h).sum().backward()
    assert torch.allclose(model.wte.weight.grad, h.sum((0, 1)).expand_as(model.wte.weight))


def test_value_network_reads_the_last_prompt_token_and_starts_at_zero():
    from rpo_mini.model import ValueModel

    torch.manual_seed(0)
    value = ValueModel(tiny().config).eval()
    prompts = [[5, 6, 7, 8], [9, 10]]
    padded = torch.tensor([[5, 6, 7, 8], [9, 10, EOT, EOT]])
    last = torch.tensor([3, 1])
    with torch.no_grad():
        assert value(padded, last).tolist() == [0.0, 0.0]
        value.head.weight.normal_()
        value.head.bias.fill_(0.5)
        got = value(padded, last)
        for b, p in enumerate(prompts):  # each prompt alone, unpadded
            h = value.trunk.hidden_states(torch.tensor([p]))[0, -1]
            assert got[b].item() == pytest.approx((value.head.weight[0] @ h).item() + 0.5, abs=1e-5)


def test_pooled_value_head_is_the_head_of_the_mean_prompt_state_and_ignores_padding():
    """V(x) = head(mean of hidden[b, :last_index[b] + 1]): zero at init, then checked against a
    float64 loop over each row's real positions; the padded positions may hold anything."""
    from rpo_mini.model import PooledValueHead

    g = torch.Generator().manual_seed(0)
    B, P, C = 3, 6, 8
    hidden = torch.randn(B, P, C, generator=g)
    last = torch.tensor([5, 1, 3])  # prompts of 6, 2 and 4 tokens, right-padded to 6
    head = PooledValueHead(C)
    assert head(hidden, last).tolist() == [0.0, 0.0, 0.0]
    assert [p.shape for p in head.parameters()] == [torch.Size([1, C]), torch.Size([1])]  # a head, nothing else
    with torch.no_grad():
        head.head.weight.copy_(torch.randn(1, C, generator=g))
        head.head.bias.fill_(-0.7)
    w, bias = head.head.weight[0].double().tolist(), -0.7
    got = head(hidden, last)
    for b in range(B):
        n = int(last[b]) + 1
        mean = [sum(float(hidden[b, t, c]) for t in range(n)) / n for c in range(C)]
        assert got[b].item() == pytest.approx(sum(wc * mc for wc, mc in zip(w, mean)) + bias, abs=1e-5)
    noisy = hidden.clone()
    for b in range(B):
        noisy[b, int(last[b]) + 1:] = 1e3 * torch.randn(P - int(last[b]) - 1, C, generator=g)
    assert torch.equal(head(noisy, last), got)
    noisy[1, 1] += 1.0  # a real position does count
    assert head(noisy, last)[1].item() != pytest.approx(got[1].item(), abs=1e-4)
