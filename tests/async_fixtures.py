"""Reward functions the asynchronous-rollout tests plug in by file path."""

import os
import time


def slow_on_rank_one(prompts, completions, **columns):
    """Rank 1's rollouts take $SLOW_ROLLOUT_S seconds longer (a slower rollout on one rank); rank 0's do not."""
    if os.environ.get("RANK", "0") == "1":
        time.sleep(float(os.environ.get("SLOW_ROLLOUT_S", "0.5")))
    return [len(c) / 10.0 for c in completions]


def hangs_on_second_call(prompts, completions, **columns):
    """Answers once, then never again (a scoring service that stopped answering)."""
    hangs_on_second_call.calls = getattr(hangs_on_second_call, "calls", 0) + 1
    if hangs_on_second_call.calls >= 2:
        time.sleep(10**6)
    return [len(c) / 10.0 for c in completions]
