"""Typed Python callables as tools: the JSON schema from type hints and a Google-style docstring, the call's arguments
read, checked and converted by type.

This is the tool convention of the Hugging Face ecosystem (transformers' `get_json_schema`, which chat templates'
`tools=` and TRL's `GRPOTrainer(tools=..., environment_factory=...)` use):

    def add(self, a: int, b: int) -> int:
        '''Add two integers.

        Args:
            a: The first integer.
            b: The second integer.
        '''

`TypedTool(fn)` is an `rlhf.tools.Tool`: its `schema` is `{"type": "function", "function": {"name", "description",
"parameters"}}`. Calling it with the call's argument text (a JSON object `{"a": 2, "b": 3}`, or for a tool with one
(required) parameter the value alone, `<square>4</square>`) checks the arguments against the signature (unknown,
missing), converts each by its type hint (`"3"` -> 3 for an `int`, `2.0` -> 2, `"true"` -> True; a wrong type is
refused) and calls the function (an `async def` one is run to completion). Every problem is a `ToolError` naming the
argument, so `rlhf.tools.run_tool_call` turns it into an `error: ...` observation for the model."""

from __future__ import annotations

import asyncio
import inspect
import json
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin

from rlhf.tools.base import ToolError
from rlhf.tools.calls import JSON_TAG

_P = inspect.Parameter
_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
EXAMPLE_VALUES = {"integer": 1, "number": 1.5, "string": "text", "boolean": True, "array": [], "object": {}}


def run_awaitable(value: Any) -> Any:
    """`value`, or what it resolves to when it is awaitable (run in a fresh event loop)."""
    if not inspect.isawaitable(value):
        return value

    async def wait() -> Any:
        return await value

    return asyncio.run(wait())


def json_schema(fn: Callable, label: str) -> dict:
    """transformers' `get_json_schema(fn)`, with its errors (no docstring, an argument without a description or a
    type hint) raised as ValueError naming `label` and the fix."""
    from transformers.utils import get_json_schema

    try:
        return get_json_schema(fn)
    except Exception as e:
        raise ValueError(
            f"{label}: cannot describe it as a tool ({e}). A tool method needs a type hint on every argument and a "
            "Google-style docstring: a first line saying what it does and an `Args:` section with one line per "
            "argument"
        ) from None


class TypedTool:
    """A typed callable as a tool: `name` and `description` from the schema, `schema` for the chat template, and
    `__call__(arguments: str) -> str` (the result as text: a string as it is, others as JSON when they serialise,
    else `str()`)."""

    def __init__(self, fn: Callable, label: str | None = None):
        self.fn = fn
        self.label = label or getattr(fn, "__qualname__", repr(fn))
        self.schema = json_schema(fn, self.label)
        function = self.schema["function"]
        self.name: str = function["name"]
        self.description: str = function.get("description") or self.name
        self.signature = inspect.signature(fn)
        try:
            self.hints = typing.get_type_hints(fn)
        except Exception:  # an unresolvable forward reference: values are passed unconverted
            self.hints = {}
        params = [p for p in self.signature.parameters.values() if p.kind not in (_P.VAR_POSITIONAL, _P.VAR_KEYWORD)]
        self.params = [p.name for p in params]
        self.required = [p.name for p in params if p.default is _P.empty]
        self.takes_any = any(p.kind == _P.VAR_KEYWORD for p in self.signature.parameters.values())

    def example_arguments(self) -> dict:
        """One placeholder value per required argument (for the prompt's example call)."""
        props = self.schema["function"]["parameters"].get("properties", {})
        return {n: EXAMPLE_VALUES.get(props.get(n, {}).get("type"), "...") for n in self.required}

    def arguments(self, text: str) -> dict[str, Any]:
        """The keyword arguments of a call, from its argument text, checked and converted; ToolError otherwise."""
        stripped = text.strip()
        value: Any = None
        if stripped.startswith("{"):
            try:
                value = json.loads(stripped)
            except ValueError:
                value = None
        single = self.params[0] if len(self.params) == 1 else self.required[0] if len(self.required) == 1 else None
        if isinstance(value, dict) and (single is None or set(value) <= set(self.params)):
            given = value
        elif single is not None:
            given = {single: stripped}
        elif not stripped:
            given = {}
        else:
            raise ToolError(
                f"{self.name} takes a JSON object of arguments {json.dumps(self.example_arguments())}, got "
                f"{stripped[:200]!r}"
            )
        unknown = [k for k in given if k not in self.params]
        if unknown and not self.takes_any:
            raise ToolError(
                f"{self.name} has no argument {', '.join(map(repr, unknown))}; its arguments are "
                f"{', '.join(self.params) or '(none)'}"
            )
        missing = [k for k in self.required if k not in given]
        if missing:
            raise ToolError(f"{self.name} is missing the argument {', '.join(map(repr, missing))}")
        return {k: convert(v, self.hints.get(k, Any), f"{self.name}: argument {k!r}") for k, v in given.items()}

    def __call__(self, arguments: str) -> str:
        result = run_awaitable(self.fn(**self.arguments(arguments)))
        if isinstance(result, str):
            return result
        try:
            return json.dumps(result, ensure_ascii=False)
        except (TypeError, ValueError):
            return str(result)


def convert(value: Any, hint: Any, label: str) -> Any:
    """`value` (decoded JSON or call text) as the type `hint` says, converting only where the meaning is plain
    (`"3"` -> 3, `2.0` -> 2, `"true"` -> True, a JSON text of a list -> the list); ToolError naming `label`."""
    origin = get_origin(hint)
    if hint is Any or hint is inspect.Parameter.empty or hint is object:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(value, option, label)
            except ToolError:
                continue
        names = " or ".join(_type_word(o) for o in options if o is not type(None))
        raise ToolError(f"{label} must be {names}, got {_show(value)}")
    if origin is Literal:
        choices = get_args(hint)
        for choice in choices:
            if value == choice or (isinstance(value, str) and not isinstance(choice, str) and value == str(choice)):
                return choice
        raise ToolError(f"{label} must be one of {', '.join(map(repr, choices))}, got {_show(value)}")
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple, set, frozenset):
        items = _decoded(value, list)
        if not isinstance(items, list):
            raise ToolError(f"{label} must be a list, got {_show(value)}")
        args = get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(items):
                raise ToolError(f"{label} must be a list of {len(args)} values, got {len(items)}")
            return tuple(convert(v, a, f"{label}[{i}]") for i, (v, a) in enumerate(zip(items, args)))
        item = args[0] if args else Any
        out = [convert(v, item, f"{label}[{i}]") for i, v in enumerate(items)]
        return (origin or hint)(out) if (origin or hint) is not list else out
    if origin is dict or hint is dict:
        mapping = _decoded(value, dict)
        if not isinstance(mapping, dict):
            raise ToolError(f"{label} must be a JSON object, got {_show(value)}")
        args = get_args(hint)
        vt = args[1] if len(args) == 2 else Any
        return {k: convert(v, vt, f"{label}[{k!r}]") for k, v in mapping.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return json.dumps(value)
    elif isinstance(hint, type):  # a class of its own (the schema step only lets plain types through)
        return value
    raise ToolError(f"{label} must be {_type_word(hint)}, got {_show(value)}")


def _decoded(value: Any, kind: type) -> Any:
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, kind) else value
    return value


def _type_word(hint: Any) -> str:
    return _TYPE_WORDS.get(hint) or getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _show(value: Any) -> str:
    return f"{type(value).__name__} {json.dumps(value, default=str)[:100]}"


def typed_tool_prompt(tools: dict[str, TypedTool], style: str) -> str:
    """The system-prompt text for templates without tool support: each tool's JSON schema on one line, the call
    format (`"tags"`: `<name>{JSON arguments}</name>`; `"json"`: Hermes `<tool_call>`) and an example call."""
    if not tools:
        raise ValueError("typed_tool_prompt: no tools given")
    tool = next(iter(tools.values()))
    example = json.dumps(tool.example_arguments(), ensure_ascii=False)
    lines = ["You can use these tools (JSON schemas):"]
    lines += [json.dumps(t.schema["function"], ensure_ascii=False) for t in tools.values()]
    if style == "tags":
        lines.append("To use a tool, write its name as a tag around a JSON object of its arguments, for example:")
        lines.append(f"<{tool.name}>{example}</{tool.name}>")
        lines.append("A tool with one argument also takes the value alone between its tags.")
    else:
        call = f'{{"name": "{tool.name}", "arguments": {example}}}'
        lines.append(f"To use a tool, write a JSON object in {JSON_TAG} tags, for example:")
        lines.append(f"<{JSON_TAG}>{call}</{JSON_TAG}>")
    lines.append("The result comes back in the next message.")
    return "\n".join(lines)
