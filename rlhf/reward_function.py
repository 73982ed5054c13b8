"""One reward function as the trainer calls it (the contract is in `rlhf.rewards`): which keywords it takes and
whether prompts and completions go first by position, the call in a daemon thread under its timeout, the values
checked (one finite float or None per row), and a failing batch retried row by row so the error names a row.

Also the names every call shares: `PASSED_NAMES`, `RewardError`, `as_text`, `call_inputs`, `to_float`.
"""

from __future__ import annotations

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

__all__ = ["PASSED_NAMES", "RewardError", "RewardFunction", "as_text", "call_inputs", "to_float"]

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


@dataclass
class RewardFunction:
    fn: Callable[..., Any]
    name: str
    weight: float = 1.0
    on_error: str = "raise"  # "raise" | "zero"
    timeout: float = 120.0
    errors: int = 0  # rows scored 0 because of an error or timeout (cumulative)
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to every call (a function's recipe kwargs)
    _plans: dict = field(default_factory=dict, repr=False)
    _abandoned: list = field(default_factory=list, repr=False)  # threads of timed-out calls, maybe still running
    _warned: set = field(default_factory=set, repr=False)

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

    def _invoke(self, inputs: dict[str, list]) -> Any:
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
        return self._run(args, kwargs)

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
                box["out"] = self.fn(*args, **kwargs)
            except BaseException as e:  # handed to the caller's thread
                box["err"] = e
            finally:
                done.set()

        thread = threading.Thread(target=target, name=f"reward-{self.name}", daemon=True)
        thread.start()
        if not done.wait(self.timeout):
            self._abandoned = [t for t in self._abandoned if t.is_alive()] + [thread]
            raise TimeoutError(
                f"took longer than its timeout of {self.timeout:g}s (rewards[].timeout); the call is abandoned "
                f"({len(self._abandoned)} of its calls still running in the background)"
            )
        if "err" in box:
            raise box["err"]
        return box["out"]

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

    def _score(self, inputs: dict[str, list], prompt_texts: list) -> list[float | None]:
        n = len(inputs["completions"])
        try:
            scores = self._check(self._invoke(inputs), n)
        except TimeoutError as e:
            first = f", the first prompt {as_text(prompt_texts[0])[:80]!r}" if prompt_texts else ""
            rows = f"the batch of {n} rows (rows 0-{n - 1}{first})"
            return self._fail(e, rows, n)
        except RewardError:
            raise
        except Exception as e:
            scores = self._per_row(inputs, prompt_texts, e)
        if n and all(v is None for v in scores) and "all_none" not in self._warned:
            self._warned.add("all_none")
            log.warning(
                "reward function %r returned None for every row of a batch of %d: it adds nothing to the reward. "
                "If that is not intended, check that it applies to this dataset (columns: %s). Warned once.",
                self.name,
                n,
                ", ".join(sorted(set(inputs) - set(PASSED_NAMES))) or "(none)",
            )
        return scores

    def _per_row(self, inputs: dict[str, list], prompt_texts: list, batch_error: Exception) -> list[float | None]:
        # Find the rows that fail, so the message names one and on_error: zero spares the good rows.
        n = len(inputs["completions"])
        scores: list[float | None] = []
        for i in range(n):
            try:
                scores.extend(self._check(self._invoke({k: v[i : i + 1] for k, v in inputs.items()}), 1))
            except RewardError:
                raise
            except Exception as e:
                scores.extend(self._fail(e, f"row {i} (prompt {as_text(prompt_texts[i])[:80]!r})", 1))
        if self.on_error == "raise":  # every row alone succeeded: the failure is in batching
            return self._fail(batch_error, f"the batch of {n} rows (each row alone succeeds)", n)
        return scores

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
