"""Command line: `python -m rlhf.train RECIPE.yaml key.sub=value ...` (the same under `accelerate launch -m`)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from rlhf.checkpoint import CheckpointError
from rlhf.config import ConfigError, load_config
from rlhf.data import DataError
from rlhf.rewards import RewardError

USAGE = """usage: python -m rlhf.train RECIPE.yaml [key.sub=value ...]

  RECIPE.yaml     a recipe from recipes/ (or your own)
  key.sub=value   overrides, e.g. train.max_steps=10 optim.lr=2e-4 rollout.stop=[\"\\n\"]
The resolved config is written to <output_dir>/config.yaml; docs/CONFIG.md lists every key."""

USER_ERRORS = (ConfigError, DataError, RewardError, CheckpointError, FileNotFoundError, FloatingPointError)


def setup_logging() -> None:
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "datasets", "filelock", "accelerate", "torch.distributed", "deepspeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_cli(action: Callable[[], object], user_errors: tuple[type[BaseException], ...] = USER_ERRORS) -> int:
    """Run a command's body: a problem the user can fix is one `error: ...` line and exit code 2, not a traceback."""
    try:
        action()
    except user_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    recipe, overrides = argv[0], argv[1:]
    setup_logging()

    def train() -> None:
        cfg = load_config(recipe, overrides)  # every recipe error surfaces here, before any model loads
        from rlhf.trainer import Trainer

        Trainer(cfg, recipe=recipe).train()

    return run_cli(train)


if __name__ == "__main__":
    sys.exit(main())
