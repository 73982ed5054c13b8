"""The table of built-in tools and `build_tools`, which turns recipe entries into tool instances."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from rlhf.tools.base import Tool
from rlhf.tools.calculator import Calculator
from rlhf.tools.calls import NAME_PATTERN
from rlhf.tools.python_tool import PythonExecutor

# one row per built-in tool: recipe name -> class (instantiated with the entry's kwargs)
TOOLS: dict[str, type] = {"calculator": Calculator, "python": PythonExecutor}
SPEC_KEYS = ("name", "fn", "kwargs")


class FunctionTool:
    """A plain function `f(arguments: str) -> str` as a tool: named after the function, described by the first
    line of its docstring."""

    def __init__(self, fn: Callable[[str], str], name: str | None = None, description: str | None = None):
        self.fn = fn
        self.name = name or fn.__name__
        doc = (inspect.getdoc(fn) or "").strip()
        self.description = description or (doc.splitlines()[0] if doc else self.name)

    def __call__(self, arguments: str) -> str:
        return self.fn(arguments)


def build_tools(specs: list[str | dict]) -> dict[str, Tool]:
    """Tool instances by name, from recipe entries.

    An entry is a name in `TOOLS` (`"calculator"`), an import path (`"my_pkg.tools:Search"`, `"tools.py:lookup"`),
    or a dict `{"name": <either>, "kwargs": {...}}` (`"fn"` may stand for `"name"`). A class is instantiated with
    the kwargs; a function becomes a `FunctionTool`; an instance is used as it is. Raises ValueError naming the bad
    entry and the fix."""
    tools: dict[str, Tool] = {}
    for spec in specs:
        tool = _build_one(spec)
        if tool.name in tools:
            raise ValueError(f"tools: two tools named {tool.name!r}; give one another name")
        tools[tool.name] = tool
    return tools


def _build_one(spec: str | dict) -> Tool:
    if isinstance(spec, str):
        target, kwargs = spec, {}
    elif isinstance(spec, dict):
        unknown = sorted(set(spec) - set(SPEC_KEYS))
        if unknown or ("name" in spec) == ("fn" in spec):
            raise ValueError(f"tools entry {spec!r}: write {{name: calculator | pkg.mod:Class, kwargs: {{...}}}}")
        target, kwargs = spec.get("name", spec.get("fn")), dict(spec.get("kwargs") or {})
    else:
        raise ValueError(f"tools entry {spec!r}: a tool name, an import path or a dict with `name` and `kwargs`")
    obj = TOOLS.get(target) or _import(target)
    if inspect.isclass(obj):
        tool = obj(**kwargs)
    elif kwargs:
        raise ValueError(f"tools entry {target!r}: kwargs are for a class; {target} is not one")
    elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
        tool = FunctionTool(obj)
    else:
        tool = obj
    _check_tool(tool, target)
    return tool


def _check_tool(tool: Any, target: str) -> None:
    for attr in ("name", "description"):
        if not isinstance(getattr(tool, attr, None), str):
            raise ValueError(f"tool {target!r}: needs a string attribute `{attr}`")
    if not callable(tool):
        raise ValueError(f"tool {target!r}: needs `__call__(self, arguments: str) -> str`")
    if not NAME_PATTERN.fullmatch(tool.name):
        raise ValueError(f"tool {target!r}: name {tool.name!r} must be letters, digits, `_`, `.` or `-` (it is a tag)")


def _import(path: str) -> Any:
    """`pkg.module:name` or `path/to/file.py:name` -> the object (the same loader as reward functions')."""
    if ":" not in path:
        raise ValueError(f"tool {path!r}: not a built-in ({', '.join(TOOLS)}); name others as `pkg.module:Class`")
    from rlhf.rewards import import_object

    return import_object(path, f"tool {path!r}", ValueError)
