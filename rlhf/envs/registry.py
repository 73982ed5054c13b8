"""The table of environments and the recipe's `env.name` -> a factory of fresh environments.

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
    name: str, kwargs: dict[str, Any] | None = None, tools: list[Any] | None = None
) -> Callable[[], Environment]:
    """`env_factory` for the recipe's env section: `tools`, when given, is passed to the constructor as `tools`."""
    kwargs = dict(kwargs or {})
    if tools:
        if "tools" in kwargs:
            raise ValueError("give the tools once: env.tools or env.kwargs.tools, not both")
        kwargs["tools"] = list(tools)
    return env_factory(name, kwargs)
