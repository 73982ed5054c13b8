"""Scores a batch with a reward function that never returns, through the command-line error path:
usage: hung_reward_worker.py raise|zero

raise: prints `error: ...` and exits 2 after the timeout; zero: scores 0 (twice, so two calls are abandoned), prints
the totals and exits 0. Either way the abandoned calls must not keep the process alive."""

import sys
from pathlib import Path

import torch

from rlhf.config import RewardSpec
from rlhf.rewards import build_reward_functions, score_rollout
from rlhf.train import run_cli

FIXTURES = Path(__file__).resolve().parent / "reward_fixtures.py"


class Rollout:
    texts = ["a", "bb", "ccc", "dddd"]
    completion_ids = torch.tensor([[5, 0], [6, 7], [8, 0], [9, 9]])
    completion_mask = torch.tensor([[1, 0], [1, 1], [1, 0], [1, 1]])
    lengths = completion_mask.sum(-1)


def main() -> None:
    spec = RewardSpec(fn=f"{FIXTURES}:hung_reward", timeout=1.0, on_error=sys.argv[1])
    fns = build_reward_functions([spec])
    for _ in range(2):
        total, _, _ = score_rollout(fns, ["p0", "p1"], {"answer": ["1", "2"]}, Rollout(), group_size=2)
    print(f"total {total.tolist()} errors {fns[0].errors}", flush=True)


if __name__ == "__main__":
    sys.exit(run_cli(main))
