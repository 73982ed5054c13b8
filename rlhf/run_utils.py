"""Run plumbing around the training loop: seeding, LR schedule, stop signals, progress bar, command line."""

from __future__ import annotations

import contextlib
import math
import os
import random
import shlex
import signal
import sys
import threading
from collections.abc import Iterator

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


class StopNow(BaseException):
    """Raised by the signal handler inside an abortable stage: the current step's unfinished work is dropped.

    A BaseException, so that no `except Exception` on the way (a reward wrapper, a library) can swallow it."""


class StopRequest:
    """SIGTERM (pre-emption) or Ctrl-C: save a checkpoint and exit cleanly, within seconds.

    Outside an abortable stage the request is a flag the loop checks at its next stage boundary (the update, which
    changes the weights, always runs to its end: a few seconds). Inside `abortable()` (the stages before the update
    and the evaluation, where the weights are those of the last completed step) a request raises StopNow at once, so a
    long rollout or evaluation never holds a pre-empted run past its grace period. With several processes the handler
    only sets the flag (raising mid-collective would leave the other ranks waiting); the ranks agree on it at fixed
    points with a sum over ranks."""

    def __init__(self, can_abort: bool = True):
        self.requested, self.name, self._old = False, "", {}
        self.can_abort, self._abortable = can_abort, False
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT and not self._abortable:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        self.requested, self.name = True, signal.Signals(signum).name
        if self._abortable:
            raise StopNow(self.name)

    @contextlib.contextmanager
    def abortable(self) -> Iterator[None]:
        """A stage whose work may be dropped on a stop request (single process only; elsewhere a no-op)."""
        if not self.can_abort or not self._old:
            yield
            return
        if self.requested:
            raise StopNow(self.name)
        self._abortable = True
        try:
            yield
        finally:
            self._abortable = False

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
