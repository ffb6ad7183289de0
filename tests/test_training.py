"""The training utilities and the shared loop, against values worked out by hand."""

import math

import pytest
import torch

from rpo_mini import training
from rpo_mini.pretrain import document_batch, pretrain


def test_learning_rate_schedule_by_hand():
    # warm-up 4 of 12 steps to peak 1.0, then cosine from 1.0 down to 0.1
    got = [training.lr_at(s, 12, 1.0, 4) for s in (0, 1, 2, 3, 4, 8, 12, 40)]
    assert got == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 0.55, 0.1, 0.1])
    assert training.lr_at(6, 12, 2.0, 4) == pytest.approx(2.0 * (0.1 + 0.45 * (1 + math.cos(math.pi / 4))))


def test_clipping_scales_the_joint_norm_to_the_limit_and_leaves_small_gradients_alone():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])  # joint norm 5
    assert training.grad_norm([a, b]).item() == pytest.approx(5.0)
    training.clip_grads([a, b], 1.0)
    assert a.grad.tolist() == pytest.approx([0.6, 0.0]) and b.grad.tolist() == pytest.approx([0.8])
    training.clip_grads([a, b], 2.0)  # already within the limit: untouched
    assert a.grad.tolist() == pytest.approx([0.6, 0.0])
    training.clip_grads([a, b], 0.0)  # 0 = off
    assert b.grad.tolist() == pytest.approx([0.8])
    c = torch.zeros(3, requires_grad=True)  # no gradient: ignored, not an error
    assert training.grad_norm([a, b, c]).item() == pytest.approx(1.0)


def _two_modules(grad_a, grad_b):
    a, b = torch.nn.Module(), torch.nn.Module()
    a.w = torch.nn.Parameter(torch.zeros(len(grad_a)))
    b.v, b.u = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(len(grad_b) - 1))
    a.w.grad, b.v.grad, b.u.grad = torch.tensor(grad_a), torch.tensor(grad_b[:1]), torch.tensor(grad_b[1:])
    return a, b


def _grads(m):
    return [x for p in m.parameters() for x in p.grad.tolist()]


def test_clip_modules_jointly_scales_both_by_one_factor_to_the_joint_limit():
    a, b = _two_modules([3.0, 4.0], [0.0, 12.0, 0.0])  # norms 5 and 12, joint 13
    training.clip_modules({"a": a, "b": b}, 1.0, separate=False)
    assert _grads(a) == pytest.approx([3 / 13, 4 / 13], rel=1e-5)
    assert _grads(b) == pytest.approx([0.0, 12 / 13, 0.0], rel=1e-5)
    joint = math.sqrt(sum(x * x for m in (a, b) for x in _grads(m)))
    assert joint == pytest.approx(1.0, rel=1e-5)
    training.clip_modules({"a": a, "b": b}, 2.0, separate=False)  # within the limit: untouched
    assert _grads(a) == pytest.approx([3 / 13, 4 / 13], rel=1e-5)


def test_clip_modules_separately_gives_each_module_min_of_its_norm_and_the_limit():
    a, b = _two_modules([3.0, 4.0], [0.0, 12.0, 0.0])  # norms 5 and 12
    training.clip_modules({"a": a, "b": b}, 6.0, separate=True)
    assert _grads(a) == [3.0, 4.0]                                    # 5 ≤ 6: untouched
    assert _grads(b) == pytest.approx([0.0, 6.0, 0.0], rel=1e-5)      # 12 → 6
    # jointly the same limit would have scaled both by 6 / 13
    a, b = _two_modules([3.0, 4.0], [0.0, 12.0, 0.0])
    training.clip_modules({"a": a, "b": b}, 6.0, separate=False)
    assert _grads(a) == pytest.approx([18 / 13, 24 / 13], rel=1e-5)
    a, b = _two_modules([3.0, 4.0], [0.0, 12.0, 0.0])
    training.clip_modules({"a": a, "b": b}, 0.0, separate=True)       # 0 = off
    assert _grads(a) == [3.0, 4.0] and _grads(b) == [0.0, 12.0, 0.0]


@pytest.mark.parametrize("separate", [False, True])
def test_the_loop_clips_its_modules_jointly_or_separately(separate):
    """Gradients 10 on each of 4 weights (norm 20) and 100 on one (norm 100), clip 1, SGD at lr 1:
    apart, each module moves by a step of norm 1; together both scale by 1 / √(20² + 100²)."""
    a, b = torch.nn.Module(), torch.nn.Module()
    a.w, b.v = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD(list(a.parameters()) + list(b.parameters()), lr=1.0)
    loop = training.Loop("toy", {"a": a, "b": b}, opt, 1, 1.0, 1, 1.0, clip_separately=separate)
    assert loop.clip_separately is separate
    loop.run(lambda step: ((10 * a.w).sum() + (100 * b.v).sum(), {}), lambda *x: None)
    scale = (1 / 20, 1 / 100) if separate else (1 / math.sqrt(20 ** 2 + 100 ** 2),) * 2
    assert a.w.tolist() == pytest.approx([-10 * scale[0]] * 4, rel=1e-5)
    assert b.v.tolist() == pytest.approx([-100 * scale[1]], rel=1e-5)
    assert training.Loop("toy", {"a": a}, opt, 1, 1.0, 1, 1.0).clip_separately is False  # the default


def test_optimizer_decays_matrices_only_with_the_documented_betas():
    lin = torch.nn.Linear(3, 2)
    opt = training.make_optimizer(lin.parameters(), 0.5, weight_decay=0.1)
    decay, other = opt.param_groups
    assert [p.shape for p in decay["params"]] == [torch.Size([2, 3])] and decay["weight_decay"] == 0.1
    assert [p.shape for p in other["params"]] == [torch.Size([2])] and other["weight_decay"] == 0.0
    assert decay["lr"] == 0.5 and decay["betas"] == (0.9, 0.95)


def test_batches_walk_one_shuffle_per_epoch_in_consecutive_slices():
    n, bs = 10, 4
    flat = torch.cat([training.batch_indices(s, bs, n, seed=3) for s in range(5)]).tolist()  # 20 = 2 epochs
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # a new shuffle each epoch
    assert training.batch_indices(2, bs, n, seed=3).tolist() == flat[8:12]  # crosses the epoch boundary
    assert training.batch_indices(0, bs, n, seed=4).tolist() != flat[:4]


def _loop(steps=1, clip=1.0, warmup=1, peak=1.0, **kw):
    m = torch.nn.Module()
    m.w = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD(m.parameters(), lr=peak)
    return m, training.Loop("toy", {"m": m}, opt, steps, peak, warmup, clip, **kw)


def test_the_loop_clips_then_steps_with_the_scheduled_rate():
    seen = []
    m, loop = _loop(steps=1, clip=1.0)
    loop.run(lambda step: ((10 * m.w).sum(), {}), lambda step, info, norms, lr: seen.append((norms["m"].item(), lr)))
    assert seen == [(pytest.approx(20.0), pytest.approx(1.0))]   # the norm before clipping, lr at step 0
    assert m.w.tolist() == pytest.approx([-0.5] * 4)              # gradient 10 each, clipped to norm 1
    m, loop = _loop(steps=1, clip=0.0)
    loop.run(lambda step: ((10 * m.w).sum(), {}), lambda *a: None)
    assert m.w.tolist() == pytest.approx([-10.0] * 4)             # no clip


def test_the_loop_stops_on_a_nan_naming_the_step():
    m, loop = _loop(steps=5)
    loss = lambda step: ((m.w * (float("nan") if step == 3 else 1.0)).sum(), {})  # noqa: E731
    with pytest.raises(FloatingPointError, match="toy: the loss became nan at step 3"):
        loop.run(loss, lambda *a: None)
    assert loop.step == 3


def test_the_loop_saves_state_periodically_and_resumes_from_it(tmp_path):
    path = str(tmp_path / "state.pt")
    m, loop = _loop(steps=6, save_every=2, state_path=path)
    loop.history = []
    loss = lambda model: lambda step: ((model.w * (step + 1)).sum(), {})  # noqa: E731
    loop.run(loss(m), lambda step, *a: loop.history.append(step), until=3)
    m2, loop2 = _loop(steps=6, save_every=2, state_path=path)
    assert loop2.resume() and loop2.step == 2 and loop2.history == [1, 2]
    loop.run(loss(m), lambda *a: None)  # the original goes on to the end ...
    loop2.run(loss(m2), lambda *a: None)  # ... and the resumed one reaches the same parameters
    assert torch.equal(m.w, m2.w)


def test_document_batch_shifts_targets_and_masks_padding():
    tokens, targets = document_batch([[5, 6, 7, 0], [8, 0]], torch.tensor([0, 1]), eot=0)
    assert tokens.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert targets.tolist() == [[6, 7, 0], [0, -1, -1]]


def test_pretraining_learns_and_records_its_schedule():
    from rpo_mini.config import PretrainConfig
    from rpo_mini.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=12, block_size=8, n_layer=1, n_head=1, n_embd=16))
    docs = [[1, 2, 3, 4, 0], [5, 6, 7, 0], [1, 2, 3, 4, 0], [8, 9, 0]] * 4
    cfg = PretrainConfig(pretrain_steps=100, pretrain_batch_size=4, pretrain_lr=1e-2)
    history = pretrain(model, docs, 0, cfg, seed=0, device="cpu", autocast=lambda: torch.autocast("cpu", enabled=False),
                       log=lambda *a: None)
    assert [h["step"] for h in history] == [25, 50, 75, 100]
    # warm-up of 100 // 20 = 5 steps, then cosine: the lr recorded at step s is the one of step s − 1
    cos = lambda s: 1e-2 * (0.1 + 0.45 * (1 + math.cos(math.pi * (s - 5) / 95)))  # noqa: E731
    assert [h["lr"] for h in history] == pytest.approx([cos(24), cos(49), cos(74), cos(99)])
    assert history[-1]["loss"] < 0.5 * math.log(12)


def test_pretraining_clips_every_step_at_one(monkeypatch):
    from rpo_mini.config import PretrainConfig
    from rpo_mini.model import GPT, GPTConfig

    limits, real = [], training.clip_grads
    monkeypatch.setattr(training, "clip_grads", lambda params, max_norm: (limits.append(max_norm), real(params, max_norm)))
    model = GPT(GPTConfig(vocab_size=12, block_size=8, n_layer=1, n_head=1, n_embd=16))
    pretrain(model, [[1, 2, 3, 0]] * 4, 0, PretrainConfig(pretrain_steps=3, pretrain_batch_size=2), seed=0,
             device="cpu", autocast=lambda: torch.autocast("cpu", enabled=False), log=lambda *a: None)
    assert limits == [1.0, 1.0, 1.0]
