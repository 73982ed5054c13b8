"""Rollout engines the tests plug in through `rollout.engine` by file path, as a user would."""

from __future__ import annotations

import torch

from rlhf.rollout import BuiltinEngine, Rollout, SamplingParams


class CountingEngine(BuiltinEngine):
    """The built-in engine, counting what the trainer tells it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.generate_calls = self.weights_updates = self.closes = 0

    def generate(self, prompts, group_size, sampling, batch_size=None) -> Rollout:
        self.generate_calls += 1
        return super().generate(prompts, group_size, sampling, batch_size)

    def weights_updated(self) -> None:
        self.weights_updates += 1

    def close(self) -> None:
        self.closes += 1


class GappedEngine(BuiltinEngine):
    """Pretends the middle third of every sampled episode was inserted by an environment: those tokens keep their
    place in the episode (so the trainer's forward sees the same context) but leave the action mask, and their
    behaviour log-probs are 0, as an engine reports for tokens it did not sample."""

    def generate(self, prompts, group_size, sampling: SamplingParams, batch_size=None) -> Rollout:
        roll = super().generate(prompts, group_size, sampling, batch_size)
        action = roll.completion_mask.clone()
        for row, n in enumerate(roll.lengths.tolist()):
            if n >= 3:
                action[row, n // 3 : 2 * n // 3] = 0
        roll.action_mask = action
        roll.logprobs = roll.logprobs * action
        return roll


def gapped(action: torch.Tensor) -> bool:
    """Whether some row has a 0 between two 1s."""
    for row in action.tolist():
        ones = [i for i, v in enumerate(row) if v]
        if ones and len(ones) != ones[-1] - ones[0] + 1:
            return True
    return False
