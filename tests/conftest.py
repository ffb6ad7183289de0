"""Shared fixtures: one tiny world, tokenizer, base model and dataset, built once per session."""

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
    """(stages, base model, dataset) of a tiny quick run on the CPU."""
    from rpo_mini.pipeline import Stages

    st = Stages(tiny_config(tmp_path_factory.mktemp("tiny")), log=lambda *a: None)
    st.tokenizer()
    base = st.base()
    return st, base, st.dataset(base)
