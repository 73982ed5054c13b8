"""Reward plumbing: user functions by import path, weighted, timed, checked, each logged on its own.

The contract (the same as TRL's GRPOTrainer, so a reward written for TRL runs unchanged):

    def fn(prompts, completions, completion_ids, **kwargs) -> list[float | None]

A reward function is called once per batch, by keyword, with one entry per completion in every list:

- `prompts`: the prompt of each completion (repeated for the completions of one prompt);
- `completions`: the generated text;
- `completion_ids`: the completion's token ids (a list of ints per row, without padding);
- `completion_length`: the completion's length in tokens, with the final EOS (for length shaping);
- every other column of the dataset by its name (`answer`, `solution`, ...);
- the recipe entry's `kwargs` (for a function; a class gets them in its constructor instead).

A function with `**kwargs` gets all of these; one without gets only the keywords it names, so
`def f(completions, answer)` is fine. A function whose first two parameters have other names
(`def f(p, c, **columns)`) is called positionally with the prompts and completions first, as before.
`check_reward_signatures` checks every function against the dataset's columns at start-up and names what is missing.

Conversational datasets (the prompt column holds chat messages): `prompts` are the message lists the model was
prompted with (`[{"role": "user", "content": ...}, ...]`, data.system_prompt first when set: the PromptSet's
`prompt_messages`, which the trainer and the evaluation pass) and each completion is
`[{"role": "assistant", "content": text}]`; plain-text datasets get plain strings. `as_text` turns either form into
a string; the built-in rewards (reward_models) take either.

A class is instantiated once with the recipe's kwargs (load a model there) and its instance is called the same way.

Return one value per completion: a float, int, bool, numpy scalar or one-element tensor, or the whole batch as a
list, a 1-D numpy array or a 1-D tensor. `None` means "does not apply to this row": it adds nothing to the weighted
sum and is left out of `reward/<name>/mean`; a function that returns None for every row of a batch is warned about
once. Values must be finite.

Errors: a function that raises or runs past its `timeout` (seconds per call) stops the run with an error naming the
function, the rows and the cause (`on_error: raise`), or scores those rows 0 and counts them in
`reward/<name>/errors` (`on_error: zero`). A timed-out call is abandoned in a daemon thread, so it never keeps the
process alive at exit; it cannot be killed, so a function that may hang while holding the interpreter lock (a
runaway regular expression) or on a resource it shares with later calls should do that work in a subprocess.

Metrics: a reward function or instance may have a `metrics()` method returning `{key: float}`; `reward_metrics`
collects them as `reward/<name>/<key>` for the training log each step.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import math
import numbers
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger("rlhf")

# Keywords every call gets besides the dataset's columns (`completion_ids` and `completion_length` come from a rollout)
PASSED_NAMES = ("prompts", "completions", "completion_ids", "completion_length")


class RewardError(RuntimeError):
    """A reward function failed; the message names the function, the row and the cause."""


def import_object(path: str, label: str | None = None, error: type[Exception] = RewardError) -> Any:
    """`pkg.module:name` or `path/to/file.py:name` -> the object. Failures raise `error` with a message starting
    `label: ` (default `reward 'path'`); engines, environments and tools pass their own key and ValueError."""
    label = f"reward {path!r}" if label is None else label
    if ":" not in path:
        raise error(f"{label}: write it as `package.module:function` or `file.py:function`")
    module_path, name = path.rsplit(":", 1)
    if module_path.endswith(".py"):
        file = Path(module_path)
        if not file.is_file():
            raise error(f"{label}: file {module_path!r} not found")
        mod_name = f"_rlhf_user_{file.stem}_{abs(hash(str(file.resolve())))}"
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_path)
        except ImportError as e:
            raise error(f"{label}: cannot import module {module_path!r}: {e}") from e
    if not hasattr(module, name):
        raise error(f"{label}: module {module_path!r} has no attribute {name!r}")
    return getattr(module, name)


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


def _to_float(v: Any) -> float | None:
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
        return self._score(_inputs(prompts, completions, columns, completion_ids, prompt_messages), prompts)

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
            f = _to_float(v)
            if f is None:
                raise RewardError(f"reward function {self.name!r} returned {v!r} for row {i}; return a float or None")
            if not math.isfinite(f):
                raise RewardError(f"reward function {self.name!r} returned {f} for row {i}; rewards must be finite")
            checked.append(f)
        return checked


def _inputs(
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


def build_reward_functions(specs: list) -> list[RewardFunction]:
    """From recipe entries (objects with fn, weight, kwargs, on_error, timeout, name) to callables."""
    out = []
    for spec in specs:
        obj = import_object(spec.fn)
        kwargs = dict(spec.kwargs or {})
        if inspect.isclass(obj):
            fn, call_kwargs, default_name = obj(**kwargs), {}, obj.__name__
        else:
            fn, call_kwargs, default_name = obj, kwargs, getattr(obj, "__name__", spec.fn)
        out.append(
            RewardFunction(fn, spec.name or default_name, spec.weight, spec.on_error, spec.timeout, kwargs=call_kwargs)
        )
    names = [r.name for r in out]
    if len(set(names)) != len(names):
        raise RewardError(f"two reward functions share a name in {names}; give each a distinct `name`")
    return out


def check_reward_signatures(reward_fns: list[RewardFunction], columns: list[str]) -> None:
    """Before any model loads: every function can be called with what a step passes (prompts, completions,
    completion_ids, completion_length, these dataset columns, its recipe kwargs), else a RewardError naming the
    function, the missing argument and the columns there are."""
    clash = sorted(set(columns) & set(PASSED_NAMES))
    if clash:
        raise RewardError(
            f"the dataset has columns named {', '.join(clash)}, which reward functions receive from the trainer "
            "instead; rename them with data.rename_columns"
        )
    available = set(PASSED_NAMES) | set(columns)
    for rf in reward_fns:
        problem = rf.signature_problem(available, columns)
        if problem:
            raise RewardError(problem)


def reward_metrics(reward_fns: list[RewardFunction]) -> dict[str, float]:
    """`{reward/<name>/<key>: value}` from each reward object's `metrics()` (when it has one). A `metrics()` that
    raises or returns something else is warned about (once per function) and skipped."""
    out: dict[str, float] = {}
    for rf in reward_fns:
        metrics = getattr(rf.fn, "metrics", None)
        if not callable(metrics):
            continue
        try:
            values = metrics()
            if not isinstance(values, dict):
                raise TypeError(f"returned {type(values).__name__}, not a dict of floats")
            for key, value in values.items():
                f = _to_float(value)
                if f is None:
                    raise TypeError(f"returned {value!r} for {key!r}, not a float")
                out[f"reward/{rf.name}/{key}"] = f
        except Exception as e:
            if "metrics" not in rf._warned:
                rf._warned.add("metrics")
                log.warning("reward function %r: metrics() failed (%s: %s); skipped", rf.name, type(e).__name__, e)
    return out


def score(
    reward_fns: list[RewardFunction],
    prompts: list[str],
    completions: list[str],
    columns: dict[str, list],
    completion_ids: list[list[int]] | None = None,
    prompt_messages: list | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of all reward functions: (total [N] float32, {name: [N] float32 with NaN where None}).

    Every list has one row per completion. `prompt_messages` (chat message lists) makes the call conversational:
    the functions get them as `prompts` and each completion as `[{"role": "assistant", "content": text}]`."""
    n = len(completions)
    inputs = _inputs(prompts, completions, columns, completion_ids, prompt_messages)
    total = torch.zeros(n, dtype=torch.float32)
    per_fn = {}
    for rf in reward_fns:
        values = rf._score(inputs, prompts)
        t = torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float32)
        per_fn[rf.name] = t
        total += rf.weight * torch.nan_to_num(t, nan=0.0)
    return total, per_fn


def score_rollout(
    reward_fns: list[RewardFunction],
    prompts: list[str],
    columns: dict[str, list],
    rollout,
    group_size: int,
    prompt_messages: list | None = None,
    completions: list[str] | None = None,
    extra: dict[str, tuple[Tensor, float]] | None = None,
) -> tuple[Tensor, dict[str, Tensor], list[str]]:
    """Score a rollout of `group_size` completions per prompt: each prompt's text and dataset columns are repeated
    for its completions; `completion_ids` (the rollout's tokens, without padding) and `completion_length` (tokens,
    with the final EOS) are added. `prompt_messages`, one chat message list per prompt, is given for a
    conversational dataset (see `score`). `completions` replaces the rollout's texts as what the functions score
    (a multi-turn episode's last turn). `extra` adds rewards computed elsewhere, {name: ([N] values, weight)} (an
    environment's), to the total and to the per-name results. Returns (total [N], per-function [N] each, the
    repeated prompt texts)."""
    repeat = lambda values: [v for v in values for _ in range(group_size)]
    repeated = repeat(prompts)
    cols = {key: repeat(vals) for key, vals in columns.items()}
    cols["completion_length"] = rollout.lengths.tolist()
    ids = getattr(rollout, "completion_ids", None)
    completion_ids = None
    if ids is not None:
        mask = rollout.completion_mask.bool()
        completion_ids = [row[m].tolist() for row, m in zip(ids.cpu(), mask.cpu())]
    messages = None if prompt_messages is None else repeat(prompt_messages)
    texts = rollout.texts if completions is None else completions
    total, per_fn = score(reward_fns, repeated, texts, cols, completion_ids, messages)
    for name, (values, weight) in (extra or {}).items():
        total = total + weight * values.float()
        per_fn[name] = values.float()
    return total, per_fn, repeated
