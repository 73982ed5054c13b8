"""Telling a stop of the trainer from a tool's own failure, and cleaning up when the trainer is terminated mid-call.

`watch_signals()` wraps a tool call. Inside it, SIGINT and SIGTERM delivered to this process are recorded and then
handled exactly as before (the previous handler runs: the trainer's `StopRequest`, Python's `KeyboardInterrupt`, ...).
`run_tool_call` reads the record: a `KeyboardInterrupt` or `SystemExit` out of a tool while no signal reached the
trainer is the call's failure (an `error:` observation); after a real signal it is the trainer's stop and propagates.
A SIGTERM whose action was the default one (end the process at once) first unwinds the call, so its `finally`
clauses run (the child killed, its temporary folder removed), and then ends the process the way the default would."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

WATCHED = (signal.SIGINT, signal.SIGTERM)


class Terminated(BaseException):
    """Raised inside a watched call by a SIGTERM whose previous action was to end the process."""


@dataclass
class SignalLog:
    """The watched signals that reached this process during the call."""

    received: list[int] = field(default_factory=list)


@contextlib.contextmanager
def watch_signals() -> Iterator[SignalLog]:
    """Record SIGINT / SIGTERM during the block and chain to the previous handlers (main thread only; elsewhere the
    log stays empty and nothing is installed)."""
    log = SignalLog()
    if threading.current_thread() is not threading.main_thread():
        yield log
        return
    previous = {sig: signal.getsignal(sig) for sig in WATCHED}

    def handle(signum: int, frame) -> None:
        log.received.append(signum)
        old = previous[signum]
        if callable(old):
            old(signum, frame)
        elif old == signal.SIG_DFL:
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

    for sig in WATCHED:
        signal.signal(sig, handle)
    try:
        yield log
    except Terminated:
        _restore(previous)
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            os.kill(os.getpid(), signal.SIGTERM)  # the default action, now that the call has cleaned up
        raise
    finally:
        _restore(previous)


def _restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
