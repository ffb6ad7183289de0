"""python train.py — pretrain a tiny GPT on a toy world, collect single-trajectory feedback,
align it with SFT, KTO, DRO and RPO, evaluate all of them on held-out prompts, and report.

Thin on purpose: the configuration is `rpo_mini/config.py`, the stages `rpo_mini/pipeline.py`.
"""

import sys

from rpo_mini.config import UserError, parse_config
from rpo_mini.training import Interrupted


def main(argv=None) -> int:
    try:
        cfg = parse_config(argv)
        from rpo_mini.pipeline import run  # after parsing, so --help stays instant

        run(cfg)
    except Interrupted as e:
        print(f"\n{e}. Rerun the same command with --resume to continue.", file=sys.stderr)
        return 130
    except (UserError, FloatingPointError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
