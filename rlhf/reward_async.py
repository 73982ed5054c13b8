"""Async reward functions: `async def` functions (and objects whose `__call__` is `async def`) awaited concurrently.

One scoring (`rlhf.rewards.score`: one batch of rows, every function) starts one event loop in a daemon thread, which
awaits every async function's calls at once (`asyncio.gather`) while the synchronous functions run in the caller's
thread as before. A function's calls are its `batch_size` chunks of rows (one call with every row by default, TRL's
convention; `batch_size: 1` = one call per row), at most `max_concurrency` of them in flight at once (0 = no limit).
The rules are the synchronous ones (`rlhf.reward_function`): each call has `timeout` seconds (the call is cancelled
past it, not abandoned), a call that raises is retried row by row (concurrently) so the error names a row, and
`on_error` decides between stopping the run and scoring the failed rows 0 (counted in `reward/<name>/errors`).

A coroutine that blocks the event loop (`time.sleep`, a blocking client) cannot be cancelled: past the time every
call could legitimately take, the functions that have not finished fail their whole batch as timed out and the loop
is abandoned in its thread (what its calls do when they wake is not waited for). Use asyncio-aware clients
(`httpx.AsyncClient`, `openai.AsyncOpenAI`) in async rewards.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import threading
import time
from typing import Any

import torch

from rlhf.reward_function import RewardError, RewardFunction, row_slice

__all__ = ["AsyncScoring", "score_async"]


async def _call(rf: RewardFunction, inputs: dict[str, list], limit: asyncio.Semaphore | None) -> Any:
    """One call of `rf` on `inputs`, under its concurrency limit and its timeout (TimeoutError past it)."""
    args, kwargs = rf.call_args(inputs)
    async with limit if limit is not None else contextlib.nullcontext():
        try:
            out = rf.fn(*args, **kwargs)
            return await asyncio.wait_for(out, rf.timeout) if inspect.isawaitable(out) else out
        except TimeoutError:
            raise TimeoutError(f"{rf.timeout_text()}; the call was cancelled") from None


async def _row(rf: RewardFunction, part: dict[str, list], i: int, limit: asyncio.Semaphore | None) -> Any:
    try:
        return rf._check(await _call(rf, row_slice(part, i, i + 1), limit), 1)
    except RewardError:
        raise
    except Exception as e:
        return e


async def _chunk(
    rf: RewardFunction, inputs: dict[str, list], texts: list, lo: int, hi: int, limit: asyncio.Semaphore | None
) -> list[float | None]:
    part = row_slice(inputs, lo, hi)
    try:
        return rf._check(await _call(rf, part, limit), hi - lo)
    except TimeoutError as e:
        return rf._fail(e, rf.rows_text(texts[lo:hi], lo), hi - lo)
    except RewardError:
        raise
    except Exception as e:
        rows = await asyncio.gather(*(_row(rf, part, i, limit) for i in range(hi - lo)))
        return rf.settle_rows(list(rows), e, texts[lo:hi], lo)


async def score_async(rf: RewardFunction, inputs: dict[str, list], prompt_texts: list) -> list[float | None]:
    """Scores of every row by an async function: its chunks' calls gathered, at most `max_concurrency` at once."""
    limit = asyncio.Semaphore(rf.max_concurrency) if rf.max_concurrency > 0 else None
    chunks = rf.chunks(len(inputs["completions"]))
    parts = await asyncio.gather(*(_chunk(rf, inputs, prompt_texts, lo, hi, limit) for lo, hi in chunks))
    scores = [v for part in parts for v in part]
    rf.warn_if_all_none(scores, inputs)
    return scores


def _patience(rf: RewardFunction, n: int) -> float:
    """Seconds every call of `rf` on n rows may take when each keeps to its timeout: the chunks' calls, then a
    row-by-row retry, each in waves of `max_concurrency`."""
    calls = len(rf.chunks(n)) + n
    waves = math.ceil(calls / rf.max_concurrency) if rf.max_concurrency > 0 else 2
    return rf.timeout * waves


class AsyncScoring:
    """The async functions' scores of one batch, computed in a daemon thread's event loop while the caller runs the
    synchronous functions; `result()` waits for them: {name: scores}, or raises the first function's RewardError."""

    def __init__(self, reward_fns: list[RewardFunction], inputs: dict[str, list], prompt_texts: list):
        self.fns, self.inputs, self.texts = reward_fns, inputs, prompt_texts
        self.results: dict[str, Any] = {}
        self.done = threading.Event()
        n = len(inputs["completions"])
        self.deadline = max(_patience(rf, n) for rf in reward_fns) + 2.0
        self.device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        self.thread = threading.Thread(target=self._loop, name="reward-async", daemon=True)
        self.started = time.monotonic()
        self.thread.start()

    async def _one(self, rf: RewardFunction) -> None:
        try:
            self.results[rf.name] = await score_async(rf, self.inputs, self.texts)
        except BaseException as e:  # handed to the caller's thread
            self.results[rf.name] = e

    async def _all(self) -> None:
        await asyncio.gather(*(self._one(rf) for rf in self.fns))

    def _loop(self) -> None:
        try:
            if self.device is not None:
                torch.cuda.set_device(self.device)
            asyncio.run(self._all())
        finally:
            self.done.set()

    def result(self) -> dict[str, list[float | None]]:
        self.done.wait(max(0.0, self.deadline - (time.monotonic() - self.started)))
        out: dict[str, list[float | None]] = {}
        results = dict(self.results)
        for rf in self.fns:
            value = results.get(rf.name)
            if value is None:  # the loop is blocked: a coroutine that does not yield
                n = len(self.inputs["completions"])
                error = TimeoutError(
                    f"{rf.timeout_text()}: its calls did not finish within {self.deadline:g}s, the time all of them "
                    "may take; an async reward function blocked the event loop (use an asyncio client, or a plain "
                    "`def`); the loop is abandoned"
                )
                value = rf._fail(error, rf.rows_text(self.texts, 0), n)
            if isinstance(value, BaseException):
                raise value
            out[rf.name] = value
        return out
