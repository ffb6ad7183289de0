"""Shared fixtures: one tiny world, tokenizer, base model and dataset, built once per session."""

from types import SimpleNamespace

import pytest

from rpo_mini.config import QUICK, Config, apply


def tiny_config(out, **align) -> Config:
    cfg = apply(Config(), QUICK)
    apply(cfg, {"pretrain": {"pretrain_steps": 40}, "collect": {"n_prompts": 16},
                "align": {"steps": 4, "eval_every": 1000, **align}})
    cfg.run.out = str(out)
    cfg.run.device = "cpu"
    return cfg


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(st, base model, dataset) of a tiny quick run on the CPU; `st` holds the rest: cfg, ctx,
    world, tok (the tokenizer artifact) and enc, base_artifact, data_artifact, autocast."""
    from rpo_mini import stages

    cfg = tiny_config(tmp_path_factory.mktemp("tiny"))
    m = stages.materials(cfg)
    st = SimpleNamespace(cfg=cfg, ctx=m.ctx, world=m.world, tok=m.tok, enc=m.tok.value, base_artifact=m.base,
                         data_artifact=m.data, autocast=m.ctx.autocast)
    return st, m.base.value, m.data.value
