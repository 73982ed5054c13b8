"""A training run whose policy loss turns NaN after the first step, for a launched test:
usage: nan_worker.py RECIPE key=value ..."""

import sys
from dataclasses import replace

import rlhf.trainer as trainer_module
from rlhf.algorithms import ALGORITHMS
from rlhf.config import load_config

original = ALGORITHMS["grpo"].policy_loss
calls = {"n": 0}


def nan_after_first_step(*args, **kwargs):
    loss, metrics = original(*args, **kwargs)
    calls["n"] += 1
    return (loss * float("nan") if calls["n"] > 1 else loss), metrics


ALGORITHMS["grpo"] = replace(ALGORITHMS["grpo"], policy_loss=nan_after_first_step)
trainer_module.Trainer(load_config(sys.argv[1], sys.argv[2:])).train()
