"""python train.py — the whole recipe, top to bottom.

Pretrain a tiny GPT on a toy world, collect single-trajectory feedback (prompt, one response,
one reward) from it, align copies of it with SFT, KTO, DRO and RPO, evaluate every policy on
held-out prompts, and report. Each step is one call to a stage in `rpo_mini/stages.py`; every
stage caches what it builds under `--out`, keyed by the settings that made it, so a rerun
redoes only what changed. The settings and their help: `python train.py --help`.
"""

import dataclasses
import sys
import time

from rpo_mini.config import Config, objectives, parse_config, seeds, to_dict
from rpo_mini.runtime import UserError
from rpo_mini.training import Interrupted


def run(cfg: Config, log=None) -> dict:
    """Every stage, then the comparison; returns what is written to metrics.json."""
    from tqdm import tqdm  # the heavy imports wait until the flags are parsed (--help stays instant)

    from rpo_mini import exact, report, stages
    from rpo_mini.data import read_jsonl, reward_scale
    from rpo_mini.evaluate import summarize
    from rpo_mini.worlds import make_world

    t_start = time.perf_counter()
    ctx = stages.context(cfg.run, log or tqdm.write)  # device, dtype, processes, output folder
    world = make_world(cfg.world)  # 1. the corpus and the train / validation / test prompts
    ctx.log(f"device {ctx.device}, dtype {str(ctx.dtype).replace('torch.', '')}, world {world.name}, "
            f"objectives {cfg.run.objectives}, seeds {cfg.run.seeds}, out {cfg.run.out}")
    reward = cfg.collect.reward or world.default_reward
    if reward not in world.rewards():
        raise UserError(f"--reward {reward!r} is not a reward of the {world.name} world; "
                        f"choose from {', '.join(world.rewards())}")
    if cfg.align.estimator == "exact" and world.responses() is None:
        raise UserError(f"--estimator exact needs an exact world (--world arithmetic): the {world.name} "
                        f"world's responses cannot be enumerated")

    # 2. A byte-level BPE trained on the corpus, wrapped in a tiktoken.Encoding.
    tok = stages.tokenizer(ctx, world, cfg.tokenizer)
    model_cfg = stages.model_config(world, tok.value, cfg.model, cfg.collect.max_new_tokens)
    if cfg.collect.dataset:  # a user's dataset is checked before minutes of pretraining, not after
        lone = read_jsonl(cfg.collect.dataset, model_cfg.block_size, model_cfg.response_grammar).lone_prompts()
        if lone and cfg.align.estimator == "loo" and "rpo" in objectives(cfg):
            raise UserError(f"--estimator loo needs two or more responses per prompt, and {lone} prompt(s) "
                            f"of --dataset {cfg.collect.dataset} have one: use another estimator or more data")

    # 3. The base model: next-token pretraining on the corpus. It is π_ref for everything below.
    base = stages.base_model(ctx, world, tok, model_cfg, cfg.pretrain, cfg.run.seed)

    # 4. The dataset: K responses per training prompt sampled from π_ref, each with its reward.
    #    RPO needs K > 1: it estimates each prompt's log-partition from that prompt's K rewards.
    data = stages.dataset(ctx, world, tok, base, cfg.collect, cfg.run.seed)

    # 5. (--sweep) Tune each objective's learning rate and own knob on the *validation* prompts.
    align_cfg, sweep = cfg.align, None
    if cfg.run.sweep:
        sweep = stages.sweep(ctx, world, tok, base, data, cfg, objectives(cfg))
        align_cfg = stages.with_sweep(cfg.align, sweep["chosen"])

    test_prompts = world.test_prompts[:cfg.eval.eval_prompts or None]  # every policy is measured on these

    # 6. In an exact world, the ground truth: π_ref's probability and the reward of every possible
    #    response to every test prompt, so each policy's reward, KL and distance to the optimum π*
    #    are sums (rpo_mini/exact.py). RPO's "exact" estimator reads log Z(x) of the training prompts.
    #    Each policy is measured against the optimum at the τ it trained with (KTO and SFT have none:
    #    at the τ whose optimum spends their KL); the objectives' τ acts on z-scored rewards, which
    #    `scale.raw_tau` turns into reward units.
    oracle = stages.oracle(ctx, world, tok, base, test_prompts, reward) if ctx.dist.is_main else None
    scale = reward_scale(data.value.rewards, align_cfg.rewards_zscore)
    train_oracle = None
    if align_cfg.estimator == "exact" and "rpo" in objectives(cfg):
        train_oracle = stages.oracle(ctx, world, tok, base, sorted({r["prompt"] for r in data.value.records}), reward)

    def exact_of(model, tau):  # tau: the policy's own τ, in the units it trained in (None: it has none)
        return exact.compare(oracle, oracle.table(model, ctx.autocast), scale.raw_tau(tau)) if oracle else {}
    ref_exact = exact.point(oracle, oracle.ref) if oracle else {}

    # 7. For each seed, align a fresh copy of the base with every objective, then sample every
    #    policy (π_ref too) on the test prompts and score the samples. Under torchrun every
    #    process trains; evaluation and the report are rank 0's job.
    #    RLOO, GRPO, A*-PO (and RPO, DRO with --online) sample the training prompts afresh every step.
    runs, histories = {}, {}
    fresh = stages.fresh_sampling(world, tok, cfg.collect)
    for seed in seeds(cfg):
        ref_s = None
        if ctx.dist.is_main:
            ref_s = stages.evaluate(ctx, "reference", base, base.value, seed, world, tok, cfg.eval,
                                    cfg.collect.max_new_tokens, test_prompts)
            runs.setdefault("reference", []).append(summarize(ref_s, world, reward, ref_s) | ref_exact
                                                    | {"seconds": 0.0, "samples": examples(ref_s)})
        # A quick look at a few validation prompts during training (reward, KL): the training curves.
        probe = stages.validation_probe(ctx, world, tok, base.value, world.val_prompts[:32],
                                        cfg.collect.max_new_tokens, reward, seed)
        for obj in objectives(cfg):
            policy, history = stages.policy(ctx, obj, seed, base, data, align_cfg, tok, world, probe,
                                            train_oracle if obj == "rpo" else None, fresh)
            histories.setdefault(obj, []).append(history)
            if ctx.dist.is_main:
                s = stages.evaluate(ctx, obj, policy, base.value, seed, world, tok, cfg.eval,
                                    cfg.collect.max_new_tokens, test_prompts)
                runs.setdefault(obj, []).append(summarize(s, world, reward, ref_s)
                                                | exact_of(policy.value, align_cfg.tau_for(obj))
                                                | {"seconds": history["seconds"], "checkpoint": policy.path,
                                                   "generations": sum(history.get("generations", {}).values()),
                                                   "samples": examples(s)})
    if not ctx.dist.is_main:
        return {}

    # 8. The report: mean ± interval per policy, metrics.json, report.md, plots, the table.
    metrics = report.aggregate(runs)
    if oracle:
        taus = {o: align_cfg.tau_for(o) for o in objectives(cfg) if align_cfg.tau_for(o) is not None}
        metrics["exact"] = {"prompts": len(test_prompts), "reward": reward, "reward_scale": scale.scale, "taus": taus,
                            "optimal": [exact.point(oracle, oracle.optimal(scale.raw_tau(t))) | {"tau": t}
                                        for t in sorted(set(taus.values()))],
                            "frontier": oracle.frontier(exact.FRONTIER_TAUS)}
    sections = dataclasses.asdict(cfg) | {"model": dataclasses.asdict(base.value.config), "align": to_dict(align_cfg)}
    metrics["config"] = {k: sections[k] for k in ("run", "world", "tokenizer", "model", "pretrain", "collect",
                                                  "align", "eval")}
    metrics["artifacts"] = {"tokenizer": tok.path, "base": base.path, "dataset": data.path}
    metrics["timings"] = ctx.timings | {"total": time.perf_counter() - t_start}
    metrics["device"] = str(ctx.device) + (f" × {ctx.dist.world_size} processes" if ctx.dist.world_size > 1 else "")
    report.write_all(ctx.out, metrics, histories, data.value, world, reward, sweep, ctx.log)
    return metrics


def examples(samples: dict, n_prompts: int = 4) -> list:
    """The first sample of the first few test prompts: the same prompts for every policy."""
    n = samples["n"]
    return [[samples["prompts"][i], samples["texts"][i]] for i in range(0, min(len(samples["texts"]), n_prompts * n), n)]


def main(argv=None) -> int:
    try:
        run(parse_config(argv))
    except Interrupted as e:
        print(f"\n{e}. Rerun the same command with --resume to continue.", file=sys.stderr)
        return 130
    except (UserError, FloatingPointError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
