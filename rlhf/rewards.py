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

Async: an `async def` function (or an instance whose `__call__` is `async def`) is awaited, its calls concurrent with
the other async functions' in one event loop and with the synchronous functions (`rlhf.reward_async`), under the
same timeout and `on_error` rules; `batch_size` splits a batch into calls of that many rows and `max_concurrency`
caps an async function's calls in flight.

Environments: in a run with an environment, a function that accepts `environments` (or `**kwargs`) receives the
episodes' environment instances, one per completion (for `env.factory`, the factory's instances), as TRL passes them.

Metrics: a reward function or instance may have a `metrics()` method returning `{key: float}`; `reward_metrics`
collects them as `reward/<name>/<key>` for the training log each step.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlhf.reward_async import AsyncScoring
from rlhf.reward_function import PASSED_NAMES, RewardError, RewardFunction, as_text, call_inputs, to_float

__all__ = [
    "PASSED_NAMES",
    "RewardError",
    "RewardFunction",
    "as_text",
    "build_reward_functions",
    "check_reward_signatures",
    "import_object",
    "reward_metrics",
    "score",
    "score_rollout",
]

log = logging.getLogger("rlhf")
ENVIRONMENTS = "environments"  # the keyword that hands reward functions the episodes' environment instances


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


def build_reward_functions(specs: list) -> list[RewardFunction]:
    """From recipe entries (objects with fn, weight, kwargs, on_error, timeout, name; batch_size and max_concurrency
    when they have them) to callables."""
    out = []
    for spec in specs:
        obj = import_object(spec.fn)
        kwargs = dict(spec.kwargs or {})
        if inspect.isclass(obj):
            fn, call_kwargs, default_name = obj(**kwargs), {}, obj.__name__
        else:
            fn, call_kwargs, default_name = obj, kwargs, getattr(obj, "__name__", spec.fn)
        out.append(
            RewardFunction(
                fn,
                spec.name or default_name,
                spec.weight,
                spec.on_error,
                spec.timeout,
                kwargs=call_kwargs,
                batch_size=getattr(spec, "batch_size", 0),
                max_concurrency=getattr(spec, "max_concurrency", 0),
            )  # fmt: skip
        )
    names = [r.name for r in out]
    if len(set(names)) != len(names):
        raise RewardError(f"two reward functions share a name in {names}; give each a distinct `name`")
    return out


def check_reward_signatures(reward_fns: list[RewardFunction], columns: list[str], environments: bool = False) -> None:
    """Before any model loads: every function can be called with what a step passes (prompts, completions,
    completion_ids, completion_length, these dataset columns, its recipe kwargs, and `environments` when the
    episodes have an environment), else a RewardError naming the function, the missing argument and the columns."""
    clash = sorted(set(columns) & {*PASSED_NAMES, ENVIRONMENTS})
    if clash:
        raise RewardError(
            f"the dataset has columns named {', '.join(clash)}, which reward functions receive from the trainer "
            "instead; rename them with data.rename_columns"
        )
    available = set(PASSED_NAMES) | set(columns) | ({ENVIRONMENTS} if environments else set())
    for rf in reward_fns:
        problem = rf.signature_problem(available, columns)
        if problem and not environments and ENVIRONMENTS in rf.plan(available).missing:
            problem = (
                f"reward `{rf.name}` needs `{ENVIRONMENTS}`, the episodes' environment instances, which only a run "
                "with an environment passes (env.factory or env.name)"
            )
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
                f = to_float(value)
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
    the functions get them as `prompts` and each completion as `[{"role": "assistant", "content": text}]`. Async
    functions are awaited concurrently in one event loop while the synchronous ones run (`rlhf.reward_async`)."""
    n = len(completions)
    inputs = call_inputs(prompts, completions, columns, completion_ids, prompt_messages)
    async_fns = [rf for rf in reward_fns if rf.is_async]
    pending = AsyncScoring(async_fns, inputs, prompts) if async_fns and n else None
    values = {rf.name: rf._score(inputs, prompts) for rf in reward_fns if pending is None or not rf.is_async}
    if pending is not None:
        values |= pending.result()
    total = torch.zeros(n, dtype=torch.float32)
    per_fn = {}
    for rf in reward_fns:  # summed in the recipe's order, whichever finished first
        t = torch.tensor([math.nan if v is None else v for v in values[rf.name]], dtype=torch.float32)
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
    environments: list | None = None,
) -> tuple[Tensor, dict[str, Tensor], list[str]]:
    """Score a rollout of `group_size` completions per prompt: each prompt's text and dataset columns are repeated
    for its completions; `completion_ids` (the rollout's tokens, without padding) and `completion_length` (tokens,
    with the final EOS) are added. `prompt_messages`, one chat message list per prompt, is given for a
    conversational dataset (see `score`). `completions` replaces the rollout's texts as what the functions score
    (a multi-turn episode's last turn). `extra` adds rewards computed elsewhere, {name: ([N] values, weight)} (an
    environment's), to the total and to the per-name results. `environments` ([N], one per completion) reach the
    functions that accept an `environments` keyword (TRL's `environment_factory` convention). Returns (total [N],
    per-function [N] each, the repeated prompt texts)."""
    repeat = lambda values: [v for v in values for _ in range(group_size)]
    repeated = repeat(prompts)
    cols = {key: repeat(vals) for key, vals in columns.items()}
    cols["completion_length"] = rollout.lengths.tolist()
    if environments is not None:
        cols[ENVIRONMENTS] = list(environments)
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
