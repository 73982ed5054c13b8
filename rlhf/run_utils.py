"""Run plumbing around the training loop: seeding, LR schedule, stop signals, progress bar, command line."""

from __future__ import annotations

import math
import os
import random
import shlex
import signal
import sys
import threading

import numpy as np
import torch

from rlhf.config import Config, to_dict


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(schedule: str, warmup: int, total: int):
    """Linear warm-up over `warmup` optimizer steps, then constant, or linear / cosine decay to 0 at `total`."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


class StopRequest:
    """SIGTERM (pre-emption) or Ctrl-C: finish the current step, save a checkpoint, exit cleanly."""

    def __init__(self):
        self.requested, self.name, self._old = False, "", {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        self.requested, self.name = True, signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}


def command_line() -> str:
    """How this process was started, as a person would type it again."""
    args = " ".join(shlex.quote(a) for a in sys.argv[1:])
    if sys.argv[0].endswith(os.path.join("rlhf", "train.py")):
        return f"python -m rlhf.train {args}"
    return f"python {shlex.quote(sys.argv[0])} {args}".strip()


def progress_bar(total: int, start: int, enabled: bool, desc: str = "train"):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True)


def flat_config(cfg: Config) -> dict:
    """Dotted keys to scalars, the shape trackers want for hyperparameters."""

    out = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk("", to_dict(cfg))
    return out
