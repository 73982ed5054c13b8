"""Reward plumbing: user functions by import path, weighted, timed, checked, each logged on its own.

A reward function has the signature

    def fn(prompts: list[str], completions: list[str], **columns) -> list[float | None]

where `columns` are the dataset's other columns for those rows. `None` means "does not apply to this row" and adds
nothing to the sum. A class is instantiated once with the recipe's kwargs and then called like a function.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


class RewardError(RuntimeError):
    """A reward function failed; the message names the function, the row and the cause."""


def import_object(path: str) -> Any:
    """`pkg.module:name` or `path/to/file.py:name` -> the object."""
    if ":" not in path:
        raise RewardError(f"reward {path!r}: write it as `package.module:function` or `file.py:function`")
    module_path, name = path.rsplit(":", 1)
    if module_path.endswith(".py"):
        file = Path(module_path)
        if not file.is_file():
            raise RewardError(f"reward {path!r}: file {module_path!r} not found")
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
            raise RewardError(f"reward {path!r}: cannot import module {module_path!r}: {e}") from e
    if not hasattr(module, name):
        raise RewardError(f"reward {path!r}: module {module_path!r} has no attribute {name!r}")
    return getattr(module, name)


@dataclass
class RewardFunction:
    fn: Callable[..., list]
    name: str
    weight: float = 1.0
    on_error: str = "raise"  # "raise" | "zero"
    timeout: float = 120.0
    errors: int = 0  # rows scored 0 because of an error or timeout (cumulative)
    _pool: concurrent.futures.ThreadPoolExecutor | None = field(default=None, repr=False)

    def _call(self, prompts: list[str], completions: list[str], columns: dict[str, list]) -> list:
        # A separate thread gives a wall-clock limit that works off the main thread and on every rank; a hung call
        # cannot be killed, so its thread is abandoned and a fresh pool serves the next call.
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"reward-{self.name}")
        future = self._pool.submit(self.fn, prompts, completions, **columns)
        try:
            return future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            raise TimeoutError(f"took longer than its timeout of {self.timeout:g}s (rewards[].timeout)") from None

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, list]) -> list[float | None]:
        n = len(completions)
        try:
            return self._check(self._call(prompts, completions, columns), n)
        except TimeoutError as e:
            return self._fail(e, f"the batch of {n} rows", n)
        except RewardError:
            raise
        except Exception as e:
            batch_error = e
        # Find the rows that fail, so the message names one and on_error: zero spares the good rows.
        scores: list[float | None] = []
        for i in range(n):
            try:
                row_cols = {k: v[i : i + 1] for k, v in columns.items()}
                scores.extend(self._check(self._call(prompts[i : i + 1], completions[i : i + 1], row_cols), 1))
            except RewardError:
                raise
            except Exception as e:
                scores.extend(self._fail(e, f"row {i} (prompt {prompts[i][:80]!r})", 1))
        if self.on_error == "raise":  # every row alone succeeded: the failure is in batching
            return self._fail(batch_error, f"the batch of {n} rows (each row alone succeeds)", n)
        return scores

    def _fail(self, e: BaseException, where: str, n: int) -> list[float]:
        if self.on_error == "zero":
            self.errors += n
            return [0.0] * n
        raise RewardError(
            f"reward function {self.name!r} failed on {where}: {type(e).__name__}: {e}. Fix the function, or set "
            "`on_error: zero` in its recipe entry to score such rows 0 and count them."
        ) from e

    def _check(self, out: Any, n: int) -> list[float | None]:
        if isinstance(out, Tensor):
            out = out.tolist()
        if not isinstance(out, (list, tuple)) or len(out) != n:
            got = f"{len(out)} values" if isinstance(out, (list, tuple)) else type(out).__name__
            raise RewardError(
                f"reward function {self.name!r} returned {got} for {n} completions; return one per completion"
            )
        checked = []
        for i, v in enumerate(out):
            if v is None:
                checked.append(None)
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise RewardError(f"reward function {self.name!r} returned {v!r} for row {i}; return a float or None")
            if not math.isfinite(v):
                raise RewardError(f"reward function {self.name!r} returned {v} for row {i}; rewards must be finite")
            checked.append(float(v))
        return checked


def build_reward_functions(specs: list) -> list[RewardFunction]:
    """From recipe entries (objects with fn, weight, kwargs, on_error, timeout, name) to callables."""
    out = []
    for spec in specs:
        obj = import_object(spec.fn)
        kwargs = dict(spec.kwargs or {})
        if inspect.isclass(obj):
            fn = obj(**kwargs)
            default_name = obj.__name__
        else:
            fn = (lambda f, kw: lambda p, c, **cols: f(p, c, **{**cols, **kw}))(obj, kwargs) if kwargs else obj
            default_name = getattr(obj, "__name__", spec.fn)
        out.append(RewardFunction(fn, spec.name or default_name, spec.weight, spec.on_error, spec.timeout))
    names = [r.name for r in out]
    if len(set(names)) != len(names):
        raise RewardError(f"two reward functions share a name in {names}; give each a distinct `name`")
    return out


def score(
    reward_fns: list[RewardFunction], prompts: list[str], completions: list[str], columns: dict[str, list]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of all reward functions: (total [N] float32, {name: [N] float32 with NaN where None})."""
    n = len(completions)
    total = torch.zeros(n, dtype=torch.float32)
    per_fn = {}
    for rf in reward_fns:
        values = rf(prompts, completions, columns)
        t = torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float32)
        per_fn[rf.name] = t
        total += rf.weight * torch.nan_to_num(t, nan=0.0)
    return total, per_fn


def score_rollout(
    reward_fns: list[RewardFunction], prompts: list[str], columns: dict[str, list], rollout, group_size: int
) -> tuple[Tensor, dict[str, Tensor], list[str]]:
    """Score a rollout of `group_size` completions per prompt: each prompt's text and dataset columns are repeated
    for its completions, and `completion_length` (tokens, with the final EOS) is added for length-shaping rewards.
    Returns (total [N], per-function [N] each, the repeated prompts)."""
    repeated = [p for p in prompts for _ in range(group_size)]
    cols = {key: [v for v in vals for _ in range(group_size)] for key, vals in columns.items()}
    cols["completion_length"] = rollout.lengths.tolist()
    total, per_fn = score(reward_fns, repeated, rollout.texts, cols)
    return total, per_fn, repeated
