"""`env.factory`: an environment class written for TRL's `GRPOTrainer(environment_factory=...)`, used unchanged.

The convention (TRL `docs/source/grpo_trainer.md`, "Environments"):

- the factory (a class, or any callable returning an instance; `env.kwargs` are passed to it) makes one instance per
  episode;
- `reset(**row) -> str | None` starts the episode. It receives the dataset row's columns and `prompt` (the prompt
  text) as keywords, only those its signature names unless it takes `**kwargs`; with a mapping of factories the
  `environment` column is left out. A returned string is appended, as it is (no separator), to the content of the
  last message of the row's prompt, as TRL does; None leaves the prompt as it is;
- every other public method (a name not starting with `_`, other than `reset`, `get_reward` and `close`) is a tool,
  described by its type hints and Google-style docstring (`rlhf.tools.typed`);
- optional `get_reward() -> float` scores the finished episode from the instance's state; it is called once after
  the episode's last turn, however the episode ended, and added to the episode's score with `env.reward_weight`
  (None counts 0);
- optional `close()` is called once per instance, after the step's rewards are computed;
- reward functions that accept `environments` receive the episodes' instances, one per completion.

A mapping `{name: factory}` picks the factory per row by the dataset's `environment` column; each row's prompt shows
only its environment's tools. The tools reach the model through the chat template's `tools=` when the template
renders them (calls are then read in the Hermes `<tool_call>` JSON format, results come back as `tool` messages where
the template has that role); otherwise each tool's JSON schema goes into the system prompt with the project's tag
format, `<name>{"a": 1}</name>` (`rlhf.tools.typed.typed_tool_prompt`), and results come back as user messages. A
bad call (unknown tool, unreadable, a missing, extra or wrongly typed argument, the method raising) is answered with
an `error: ...` observation. A turn without a call ends the episode (it is the answer the reward functions score).

Differences from TRL: a prompt's G episodes share their prompt here, so `reset` must give the same string for a row
in every instance (an environment that draws its task at random in `reset` should derive it from the row); the
dataset gives the prompts (the environment cannot own the data); instances are made per episode and closed, not
pooled and reused.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

from rlhf.envs.base import StepResult
from rlhf.tools.calls import parse_tool_calls, run_tool_call, stop_strings
from rlhf.tools.typed import TypedTool, run_awaitable, typed_tool_prompt

log = logging.getLogger("rlhf")

RESERVED = ("reset", "get_reward", "close")
ENV_COLUMN = "environment"


def tool_methods(instance: Any, label: str) -> dict[str, TypedTool]:
    """The instance's public methods but `reset`, `get_reward` and `close`, as tools, by name (sorted, as TRL)."""
    methods = inspect.getmembers(instance, inspect.ismethod)
    return {n: TypedTool(m, f"{label}.{n}") for n, m in methods if not n.startswith("_") and n not in RESERVED}


def template_takes_tools(tokenizer, schema: dict) -> bool:
    """Whether the chat template renders `tools=`: a prompt rendered with the schema differs from one without it and
    contains the tool's name."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    msgs = [{"role": "user", "content": "q"}]
    try:
        plain = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        with_tools = tokenizer.apply_chat_template(msgs, tools=[schema], tokenize=False, add_generation_prompt=True)
    except Exception:
        return False
    return with_tools != plain and schema["function"]["name"] in with_tools


def _tool_role(tokenizer) -> str:
    """`tool` when the template renders a tool message after an assistant turn, else `user`."""
    from rlhf.rollout.episodes import ObservationTokens

    try:
        return "tool" if "\x01result\x01" in ObservationTokens(tokenizer, "tool").text("\x01result\x01") else "user"
    except Exception:
        return "user"


def _reset_plan(reset: Callable) -> tuple[set[str] | None, list[str]]:
    """(the keywords `reset` takes, None = any; its required ones)."""
    params = inspect.signature(reset).parameters.values()
    P = inspect.Parameter
    if any(p.kind == P.VAR_KEYWORD for p in params):
        names = None
    else:
        names = {p.name for p in params if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)}
    required = [p.name for p in params if p.default is P.empty and p.kind not in (P.VAR_KEYWORD, P.VAR_POSITIONAL)]
    return names, required


class FactoryEnvMaker:
    """`make_env()` of an `env.factory`: resolves the factories and probes one instance of each at build time (so a
    bad path, a class without tools or an undescribable tool is an error before any model loads), decides how the
    tools reach the model, and makes fresh `FactoryEnv` adapters."""

    def __init__(self, factory: str | Mapping[str, str], kwargs: dict | None, tokenizer):
        from rlhf.rewards import import_object

        self.mapping = isinstance(factory, Mapping)
        paths = dict(factory) if self.mapping else {None: factory}
        if self.mapping and not paths:
            raise ValueError("env.factory: the mapping is empty; give {name: pkg.module:Class, ...}")
        if self.mapping and kwargs:
            raise ValueError("env.kwargs are for a single env.factory; with a mapping, give defaults in each class")
        self.kwargs = dict(kwargs or {})
        self.factories: dict[str | None, Callable] = {}
        self.labels: dict[str | None, str] = {}
        self.reset_plans: dict[str | None, tuple[set[str] | None, list[str]]] = {}
        names: set[str] = set()
        schema = None
        for name, path in paths.items():
            key = f"env.factory.{name}" if self.mapping else "env.factory"
            if not isinstance(path, str) or ":" not in path:
                raise ValueError(f"{key}={path!r}: write it as `package.module:Class` or `path/file.py:Class`")
            factory_fn = import_object(path, f"{key}={path!r}", ValueError)
            if not callable(factory_fn):
                raise ValueError(f"{key}={path!r} is not callable: name a class or a function returning an instance")
            self.factories[name], self.labels[name] = factory_fn, path
            probe = self._instance(name)
            try:
                if not callable(getattr(probe, "reset", None)):
                    raise ValueError(f"{key}={path!r}: the environment has no `reset(**row)` method")
                tools = tool_methods(probe, path)
                if not tools:
                    raise ValueError(
                        f"{key}={path!r} has no tools: every public method other than reset, get_reward and close is "
                        "a tool; give it at least one (with type hints and a Google-style docstring)"
                    )
                self.reset_plans[name] = _reset_plan(probe.reset)
                names |= set(tools)
                schema = schema or next(iter(tools.values())).schema
            finally:
                close_instance(probe, path)
        self.in_template = template_takes_tools(tokenizer, schema)
        self.style = "json" if self.in_template else "tags"
        self.observation_role = _tool_role(tokenizer) if self.in_template else "user"
        self.stop_strings = stop_strings(names, self.style)  # every environment's: the runner reads one list

    def _instance(self, name: str | None) -> Any:
        try:
            return self.factories[name](**self.kwargs)
        except TypeError as e:
            raise TypeError(f"env.factory={self.labels[name]!r} with env.kwargs={self.kwargs}: {e}") from None

    def check_columns(self, columns: Mapping[str, list]) -> None:
        """Errors at load, from a dataset's columns: the `environment` column of a mapping (present, known names)
        and the keywords `reset` requires."""
        if self.mapping:
            if ENV_COLUMN not in columns:
                raise ValueError(
                    f"env.factory is a mapping of {', '.join(map(str, self.factories))}: the dataset needs an "
                    f"`{ENV_COLUMN}` column naming each row's environment (it has: {', '.join(columns) or 'none'})"
                )
            unknown = sorted({str(v) for v in columns[ENV_COLUMN]} - set(map(str, self.factories)))
            if unknown:
                raise ValueError(
                    f"the dataset's `{ENV_COLUMN}` column names {', '.join(map(repr, unknown))}, not in env.factory "
                    f"({', '.join(map(str, self.factories))})"
                )
        offered = {"prompt", *columns} - ({ENV_COLUMN} if self.mapping else set())
        for name, (_, required) in self.reset_plans.items():
            missing = [r for r in required if r not in offered]
            if missing:
                raise ValueError(
                    f"env.factory {self.labels[name]!r}: reset() needs {', '.join(map(repr, missing))}, which is "
                    f"not a column of the dataset ({', '.join(sorted(offered))}); rename a column with "
                    "data.rename_columns or give the argument a default"
                )

    def __call__(self) -> FactoryEnv:
        return FactoryEnv(self)


class FactoryEnv:
    """One factory instance as an `rlhf.envs.Environment`: made at `reset(row)` (the row picks the factory of a
    mapping), its methods run as tools in `step`, `get_reward` as `final_reward`, `close` once. `unwrapped` is the
    user's instance (what reward functions receive as `environments`)."""

    def __init__(self, maker: FactoryEnvMaker, max_result_chars: int = 1000):
        self.maker = maker
        self.max_result_chars = max_result_chars
        self.stop_strings = list(maker.stop_strings)
        self.observation_role = maker.observation_role
        self.unwrapped: Any = None
        self.tools: dict[str, TypedTool] = {}
        self.tool_schemas: list[dict] | None = None
        self.label = ""
        self.calls = self.errors = 0
        self.answered = self.closed = False

    def reset(self, row: dict) -> list[dict]:
        """The row's messages, the string `reset` returned appended to the last one, the tools described (in the
        system message, or as `tool_schemas` for the chat template)."""
        m = self.maker
        name = row.get(ENV_COLUMN) if m.mapping else None
        if m.mapping and name not in m.factories:
            raise ValueError(f"row has `{ENV_COLUMN}`={name!r}, not one of env.factory's {', '.join(m.factories)}")
        self.label = m.labels[name]
        self.unwrapped = m._instance(name)
        self.tools = tool_methods(self.unwrapped, self.label)
        takes, _ = m.reset_plans[name]
        offered = {k: v for k, v in row.items() if k != "messages" and not (m.mapping and k == ENV_COLUMN)}
        kwargs = offered if takes is None else {k: v for k, v in offered.items() if k in takes}
        text = run_awaitable(self.unwrapped.reset(**kwargs))
        messages = [dict(msg) for msg in row["messages"]]
        if text is not None:
            if not isinstance(text, str):
                raise TypeError(f"{self.label}: reset() returned {type(text).__name__}; return a string or None")
            messages[-1] = {**messages[-1], "content": str(messages[-1]["content"]) + text}
        if m.in_template:
            self.tool_schemas = [t.schema for t in self.tools.values()]
            return messages
        prompt = typed_tool_prompt(self.tools, m.style)
        if messages and messages[0]["role"] == "system":
            first = messages.pop(0)["content"]
            prompt = f"{str(first).strip()}\n\n{prompt}" if str(first).strip() else prompt
        return [{"role": "system", "content": prompt}, *messages]

    def step(self, action_text: str) -> StepResult:
        calls = parse_tool_calls(action_text, self.tools, self.maker.style)
        if not calls:
            self.answered = True
            return StepResult(observation=None, done=True)
        results = [run_tool_call(call, self.tools, self.max_result_chars) for call in calls]
        self.calls += len(calls)
        self.errors += sum(r.startswith("error:") for r in results)
        if self.observation_role == "tool":
            return StepResult(observation=[{"role": "tool", "content": r} for r in results])
        return StepResult(observation="\n".join(results))

    def final_reward(self) -> float:
        """`get_reward()` of the instance (0 without one, or when it returns None)."""
        get_reward = getattr(self.unwrapped, "get_reward", None)
        if not callable(get_reward):
            return 0.0
        try:
            value = run_awaitable(get_reward())
        except Exception as e:
            raise RuntimeError(f"{self.label}: get_reward() failed: {type(e).__name__}: {e}") from e
        if value is None:
            return 0.0
        try:
            return float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{self.label}: get_reward() returned {value!r}; return a float or None") from None

    def metrics(self) -> dict[str, float]:
        return {
            "called_tool": float(self.calls > 0),
            "tool_calls": float(self.calls),
            "tool_errors": float(self.errors),
            "answered": float(self.answered),
        }

    def close(self) -> None:
        """`close()` of the instance, once (a failure is logged, not raised)."""
        if not self.closed and self.unwrapped is not None:
            self.closed = True
            close_instance(self.unwrapped, self.label)


def close_instance(instance: Any, label: str) -> None:
    close = getattr(instance, "close", None)
    if callable(close):
        try:
            run_awaitable(close())
        except Exception as e:
            log.warning("%s: close() failed: %s: %s", label, type(e).__name__, e)


__all__ = ["ENV_COLUMN", "FactoryEnv", "FactoryEnvMaker", "template_takes_tools", "tool_methods"]
