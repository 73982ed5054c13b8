"""One reward function as the trainer calls it (the contract is in `rlhf.rewards`): which keywords it takes and
whether prompts and completions go first by position, the call in a daemon thread under its timeout, the values
checked (one finite float or None per row), and a failing batch retried row by row so the error names a row.
The rows go in `batch_size` chunks (one call for all by default); async functions are awaited by
`rlhf.reward_async`, which uses the same pieces (`call_args`, `chunks`, `settle_rows`, `_fail`).

Also the names every call shares: `PASSED_NAMES`, `RewardError`, `as_text`, `call_inputs`, `to_float`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import numbers
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "PASSED_NAMES",
    "RewardError",
    "RewardFunction",
    "as_text",
    "call_inputs",
    "is_async_callable",
    "row_slice",
    "to_float",
]

log = logging.getLogger("rlhf")

# Keywords every call gets besides the dataset's columns (`completion_ids` and `completion_length` come from a rollout)
PASSED_NAMES = ("prompts", "completions", "completion_ids", "completion_length")


class RewardError(RuntimeError):
    """A reward function failed; the message names the function, the row and the cause."""


def as_text(value: Any) -> str:
    """A prompt or completion as text: a string as it is, a chat message list as its last message's content."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and isinstance(value[-1], dict):
        return str(value[-1].get("content", ""))
    return str(value)


@dataclass(frozen=True)
class _CallPlan:
    """How to call a function given the keywords on offer: positionally first (prompts, completions) or not, which
    keywords to pass (None: all), and the required parameters nothing fills."""

    positional: bool
    names: frozenset[str] | None
    missing: tuple[str, ...]


def _plan_call(fn: Callable, available: Iterable[str]) -> _CallPlan:
    available = set(available)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature to read (some builtins): the historical positional call
        return _CallPlan(True, None, ())
    P = inspect.Parameter
    by_position = [p for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    positional = len(by_position) >= 2 and all(
        p.kind == P.POSITIONAL_ONLY or p.name not in available for p in by_position[:2]
    )
    skip = {p.name for p in by_position[:2]} if positional else set()
    takes_all = any(p.kind == P.VAR_KEYWORD for p in params)
    keyword = {p.name for p in params if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)} - skip
    missing = tuple(
        p.name
        for p in params
        if p.name not in skip
        and p.default is P.empty
        and (
            p.kind == P.POSITIONAL_ONLY
            or (p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY) and p.name not in available)
        )
    )
    return _CallPlan(positional, None if takes_all else frozenset(keyword), missing)


def _missing_message(name: str, missing: Iterable[str], columns: Iterable[str]) -> str:
    missing = list(missing)
    what = "argument" if len(missing) == 1 else "arguments"
    cols = ", ".join(sorted(columns)) or "(none)"
    return (
        f"reward `{name}` needs {what} {', '.join(f'`{m}`' for m in missing)}, but the dataset has columns: {cols}; "
        "rename a column with data.rename_columns or give it in kwargs"
    )


def _cuda_device() -> int | None:
    return torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None


def to_float(v: Any) -> float | None:
    """A number of any common kind as a float, or None when it is not one."""
    try:
        if isinstance(v, (bool, int, float)):
            return float(v)
        if isinstance(v, Tensor):
            return float(v.item()) if v.numel() == 1 and not v.is_complex() else None
        dtype = getattr(v, "dtype", None)  # numpy scalars and one-element arrays
        if getattr(dtype, "kind", None) in ("b", "i", "u", "f") and getattr(v, "size", 0) == 1:
            return float(v.item())
        if isinstance(v, numbers.Real):
            return float(v)
    except OverflowError:  # an int too large for a float
        return math.inf
    return None


def is_async_callable(fn: Any) -> bool:
    """An `async def` function (or a partial of one), or an object whose `__call__` is `async def`."""
    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isclass(fn):
        return False
    call = next((c.__dict__["__call__"] for c in type(fn).__mro__ if "__call__" in c.__dict__), None)
    return inspect.iscoroutinefunction(call)


def _resolved(value: Any) -> Any:
    """A call's result; an awaitable one (a coroutine returned by a function not declared async) run to its value."""
    if not inspect.isawaitable(value):
        return value

    async def wait() -> Any:
        return await value

    return asyncio.run(wait())


def row_slice(inputs: dict[str, list], lo: int, hi: int) -> dict[str, list]:
    """Rows [lo, hi) of every keyword list."""
    return {k: v[lo:hi] for k, v in inputs.items()}


@dataclass
class RewardFunction:
    fn: Callable[..., Any]
    name: str
    weight: float = 1.0
    on_error: str = "raise"  # "raise" | "zero"
    timeout: float = 120.0
    errors: int = 0  # rows scored 0 because of an error or timeout (cumulative)
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to every call (a function's recipe kwargs)
    batch_size: int = 0  # rows per call (0: every row of the batch in one call)
    max_concurrency: int = 0  # an async function's calls in flight at once (0: no limit)
    _plans: dict = field(default_factory=dict, repr=False)
    _abandoned: list = field(default_factory=list, repr=False)  # threads of timed-out calls, maybe still running
    _warned: set = field(default_factory=set, repr=False)

    @property
    def is_async(self) -> bool:
        """Whether calls are awaited (concurrently, in `rlhf.reward_async`) rather than run in a thread one by one."""
        return is_async_callable(self.fn)

    def plan(self, available: Iterable[str]) -> _CallPlan:
        key = frozenset(available) | frozenset(self.kwargs)
        if key not in self._plans:
            self._plans[key] = _plan_call(self.fn, key)
        return self._plans[key]

    def signature_problem(self, available: Iterable[str], columns: Iterable[str]) -> str | None:
        """Why the function cannot be called with these keywords (and its recipe kwargs), or None."""
        plan = self.plan(available)
        if plan.missing:
            return _missing_message(self.name, plan.missing, columns)
        unknown = [] if plan.names is None else sorted(k for k in self.kwargs if k not in plan.names)
        if unknown:
            return (
                f"reward `{self.name}` is given kwargs {', '.join(f'`{k}`' for k in unknown)} in its recipe entry, "
                "but has no parameter of that name (and no **kwargs)"
            )
        return None

    def call_args(self, inputs: dict[str, list]) -> tuple[tuple, dict]:
        """(positional, keyword) arguments of one call on `inputs`; RewardError when the signature cannot take them."""
        problem = self.signature_problem(inputs, set(inputs) - set(PASSED_NAMES))
        if problem:
            raise RewardError(problem)
        plan = self.plan(inputs)
        kwargs = {**inputs, **self.kwargs}
        args: tuple = ()
        if plan.positional:
            args = (kwargs.pop("prompts"), kwargs.pop("completions"))
        if plan.names is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in plan.names}
        return args, kwargs

    def _invoke(self, inputs: dict[str, list]) -> Any:
        return self._run(*self.call_args(inputs))

    def _run(self, args: tuple, kwargs: dict) -> Any:
        # A daemon thread gives a wall-clock limit that works off the main thread and on every rank. A hung call cannot
        # be killed: its thread is abandoned, and being a daemon it does not hold the interpreter open at exit.
        box: dict[str, Any] = {}
        done = threading.Event()
        device = _cuda_device()

        def target() -> None:
            try:
                if device is not None:
                    torch.cuda.set_device(device)
                box["out"] = _resolved(self.fn(*args, **kwargs))
            except BaseException as e:  # handed to the caller's thread
                box["err"] = e
            finally:
                done.set()

        thread = threading.Thread(target=target, name=f"reward-{self.name}", daemon=True)
        thread.start()
        if not done.wait(self.timeout):
            self._abandoned = [t for t in self._abandoned if t.is_alive()] + [thread]
            raise TimeoutError(
                f"{self.timeout_text()}; the call is abandoned ({len(self._abandoned)} of its calls still running in "
                "the background)"
            )
        if "err" in box:
            raise box["err"]
        return box["out"]

    def timeout_text(self) -> str:
        return f"took longer than its timeout of {self.timeout:g}s (rewards[].timeout)"

    def __call__(
        self,
        prompts: list,
        completions: list,
        columns: dict[str, list],
        completion_ids: list[list[int]] | None = None,
        prompt_messages: list | None = None,
    ) -> list[float | None]:
        """Scores of `completions` (texts) for `prompts` (texts, one per completion). With `prompt_messages` (one chat
        message list per completion) the function sees the conversational form, as TRL passes it."""
        return self._score(call_inputs(prompts, completions, columns, completion_ids, prompt_messages), prompts)

    def chunks(self, n: int) -> list[tuple[int, int]]:
        """The calls' row ranges [lo, hi) over n rows (`batch_size` rows each; one call for 0)."""
        size = self.batch_size if self.batch_size > 0 else max(n, 1)
        return [(lo, min(lo + size, n)) for lo in range(0, n, size)]

    def _score(self, inputs: dict[str, list], prompt_texts: list) -> list[float | None]:
        """The synchronous path: the calls one after the other, each in a thread under the timeout."""
        scores: list[float | None] = []
        for lo, hi in self.chunks(len(inputs["completions"])):
            part, texts = row_slice(inputs, lo, hi), prompt_texts[lo:hi]
            try:
                scores += self._check(self._invoke(part), hi - lo)
            except TimeoutError as e:
                scores += self._fail(e, self.rows_text(texts, lo), hi - lo)
            except RewardError:
                raise
            except Exception as e:
                rows = []
                for i in range(hi - lo):
                    try:
                        rows.append(self._check(self._invoke(row_slice(part, i, i + 1)), 1))
                    except RewardError:
                        raise
                    except Exception as row_error:  # raises here under on_error: raise
                        rows.append(self._fail(row_error, self.row_text(texts, lo, i), 1))
                scores += self.settle_rows(rows, e, texts, lo)
        self.warn_if_all_none(scores, inputs)
        return scores

    def rows_text(self, prompt_texts: list, offset: int) -> str:
        """`the batch of n rows (rows a-b, the first prompt '...')` for an error message."""
        n = len(prompt_texts)
        first = f", the first prompt {as_text(prompt_texts[0])[:80]!r}" if prompt_texts else ""
        return f"the batch of {n} rows (rows {offset}-{offset + n - 1}{first})"

    def row_text(self, prompt_texts: list, offset: int, i: int) -> str:
        return f"row {offset + i} (prompt {as_text(prompt_texts[i])[:80]!r})"

    def settle_rows(self, rows: list, batch_error: Exception, prompt_texts: list, offset: int) -> list[float | None]:
        """A failed call retried row by row (`rows`: each row's one score, or its exception), so the message names a
        row and on_error: zero spares the good rows."""
        scores: list[float | None] = []
        for i, row in enumerate(rows):
            if isinstance(row, BaseException):
                scores += self._fail(row, self.row_text(prompt_texts, offset, i), 1)
            else:
                scores += row
        if self.on_error == "raise":  # every row alone succeeded: the failure is in batching
            where = f"the batch of {len(rows)} rows (each row alone succeeds)"
            return self._fail(batch_error, where, len(rows))
        return scores

    def warn_if_all_none(self, scores: list[float | None], inputs: dict[str, list]) -> None:
        if scores and all(v is None for v in scores) and "all_none" not in self._warned:
            self._warned.add("all_none")
            log.warning(
                "reward function %r returned None for every row of a batch of %d: it adds nothing to the reward. "
                "If that is not intended, check that it applies to this dataset (columns: %s). Warned once.",
                self.name,
                len(scores),
                ", ".join(sorted(set(inputs) - set(PASSED_NAMES))) or "(none)",
            )

    def _fail(self, e: BaseException, where: str, n: int) -> list[float]:
        if self.on_error == "zero":
            self.errors += n
            if isinstance(e, TimeoutError):
                log.warning("reward function %r on %s: %s; scored 0 (on_error: zero)", self.name, where, e)
            return [0.0] * n
        raise RewardError(
            f"reward function {self.name!r} failed on {where}: {type(e).__name__}: {e}. Fix the function, or set "
            "`on_error: zero` in its recipe entry to score such rows 0 and count them."
        ) from e

    def _check(self, out: Any, n: int) -> list[float | None]:
        if isinstance(out, Tensor) or (hasattr(out, "ndim") and hasattr(out, "tolist")):  # a tensor or numpy array
            if out.ndim != 1:
                raise RewardError(
                    f"reward function {self.name!r} returned an array of shape {tuple(out.shape)} for {n} completions; "
                    "return one value per completion (a list or a 1-D array)"
                )
            out = out.tolist()
        if not isinstance(out, (list, tuple)) or len(out) != n:
            got = f"{len(out)} values" if isinstance(out, (list, tuple)) else type(out).__name__
            raise RewardError(
                f"reward function {self.name!r} returned {got} for {n} completions; return one per completion"
            )
        checked: list[float | None] = []
        for i, v in enumerate(out):
            if v is None:
                checked.append(None)
                continue
            f = to_float(v)
            if f is None:
                raise RewardError(f"reward function {self.name!r} returned {v!r} for row {i}; return a float or None")
            if not math.isfinite(f):
                raise RewardError(f"reward function {self.name!r} returned {f} for row {i}; rewards must be finite")
            checked.append(f)
        return checked


def call_inputs(
    prompts: list,
    completions: list,
    columns: dict[str, list],
    completion_ids: list[list[int]] | None,
    prompt_messages: list | None,
) -> dict[str, list]:
    """The keyword lists of one call: the columns, then the built-in names (which win over a column of that name)."""
    n = len(completions)
    conversational = prompt_messages is not None and all(isinstance(m, list) for m in prompt_messages)
    if conversational:
        prompts = [[dict(m) for m in msgs] for msgs in prompt_messages]
        completions = [[{"role": "assistant", "content": c}] for c in completions]
    inputs = {**columns, "prompts": list(prompts), "completions": list(completions)}
    if completion_ids is not None:
        inputs["completion_ids"] = completion_ids
    for key, values in inputs.items():
        if len(values) != n:
            raise RewardError(f"reward input `{key}` has {len(values)} rows for {n} completions")
    return inputs
