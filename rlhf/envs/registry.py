"""The table of environments and the recipe's `env.name` (or `env.factory`) -> a factory of fresh environments.

Environments are named in a recipe by a name in `ENVIRONMENTS` or by import path (`my_pkg.envs:MyEnv`,
`path/to/file.py:MyEnv`), with `env.kwargs` passed to the constructor (the interface is in `rlhf.envs.base`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from rlhf.envs.base import Environment, SingleTurnEnv


def _tool_env() -> type:
    from rlhf.envs.tool_env import ToolEnv

    return ToolEnv


# name -> a function returning the environment class: one row per built-in environment
ENVIRONMENTS: dict[str, Callable[[], type]] = {
    "single_turn": lambda: SingleTurnEnv,
    "tools": _tool_env,
}


def resolve_env(name: str) -> type:
    """The environment class for `env.name`: a name in ENVIRONMENTS or `package.module:Class` / `file.py:Class`."""
    if name in ENVIRONMENTS:
        return ENVIRONMENTS[name]()
    if ":" in name:
        from rlhf.rewards import import_object

        return import_object(name, f"env.name={name!r}", ValueError)
    close = difflib.get_close_matches(name, list(ENVIRONMENTS), n=1)
    hint = f"did you mean `{close[0]}`?" if close else "or give an import path `package.module:Class`"
    raise ValueError(f"env.name={name!r} is not one of {', '.join(ENVIRONMENTS)}; {hint}")


def env_factory(name: str, kwargs: dict[str, Any] | None = None) -> Callable[[], Environment]:
    """A function making a fresh environment per episode; the class is resolved and checked once, here."""
    cls = resolve_env(name)
    kwargs = dict(kwargs or {})
    missing = [m for m in ("reset", "step") if not callable(getattr(cls, m, None))]
    if missing:
        raise TypeError(
            f"env.name={name!r} lacks {', '.join(missing)}: an environment implements rlhf.envs.Environment"
        )

    def make() -> Environment:
        return cls(**kwargs)

    try:
        make()  # a bad keyword is an error now, not in the middle of the first step
    except TypeError as e:
        raise TypeError(f"env.name={name!r} with env.kwargs={kwargs}: {e}") from None
    return make


def build_env(
    name: str | None,
    kwargs: dict[str, Any] | None = None,
    tools: list[Any] | None = None,
    factory: str | dict[str, str] | None = None,
    tokenizer=None,
    columns: list[dict[str, list]] | None = None,
) -> Callable[[], Environment]:
    """The recipe's env section -> a factory of fresh environments. `name`: `env_factory` (with `tools`, when given,
    passed to the constructor as `tools`). `factory`: a TRL-style environment class or `{name: class}` mapping
    (`rlhf.envs.factory`, which needs the `tokenizer` to see whether its chat template renders tools); `columns`,
    the datasets' columns, are checked against it (the `environment` column, reset's arguments)."""
    if factory is not None:
        if name is not None or tools:
            raise ValueError(
                "env.factory makes the environment and its tools: leave env.name and env.tools unset (a tool is a "
                "method of the factory's class)"
            )
        from rlhf.envs.factory import FactoryEnvMaker

        maker = FactoryEnvMaker(factory, kwargs, tokenizer)
        for cols in columns or []:
            maker.check_columns(cols)
        return maker
    kwargs = dict(kwargs or {})
    if tools:
        if "tools" in kwargs:
            raise ValueError("give the tools once: env.tools or env.kwargs.tools, not both")
        kwargs["tools"] = list(tools)
    return env_factory(name, kwargs)


def env_config_problem(
    name: str | None,
    factory: str | dict[str, str] | None,
    kwargs: dict[str, Any],
    tools: list[Any],
    max_turns: int,
    max_tokens: int,
) -> str | None:
    """What is wrong with a recipe's env section on its face (before anything is imported), or None."""
    if max_turns < 1:
        return "env.max_turns must be >= 1"
    if max_tokens < 1:
        return "env.max_tokens must be >= 1 (episode tokens after the prompt)"
    if name is None and factory is None and (kwargs or tools):
        return "env.kwargs / env.tools are set but env.name is not: name the environment (e.g. env.name=tools)"
    if factory is not None and (name is not None or tools):
        return "env.factory makes the environment and its tools: leave env.name and env.tools unset"
    for path in factory.values() if isinstance(factory, dict) else [factory] if factory is not None else []:
        if ":" not in str(path):
            return f"env.factory {path!r}: write it as `package.module:Class` or `file.py:Class`"
    return None
