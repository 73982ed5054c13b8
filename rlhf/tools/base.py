"""What a tool is: a named callable from argument text to result text, and the call the parser found."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class ToolError(RuntimeError):
    """A tool could not produce a result (bad arguments, a timeout, a crash); the message is shown to the model."""


@dataclass(frozen=True)
class ToolCall:
    """One tool call found in a completion.

    `name` is the tool's name (`"calculator"`); `arguments` the raw text between the tags, or for a JSON-style call its
    `arguments` value serialised (a string value is passed as it is); `span` the character span `[start, end)` of
    the whole call in the parsed text. `error` is set when the call could be located but not read (a JSON-style call
    whose body is not a JSON object with a `name`): `run_tool_call` answers it with that error."""

    name: str
    arguments: str
    span: tuple[int, int]
    error: str | None = None


@runtime_checkable
class Tool(Protocol):
    """A tool: `name` (its tag), `description` (one line for the system prompt) and `__call__(arguments) -> str`.

    Optional attributes read by the prompt builders: `argument` (the parameter name in a JSON-style call, default
    `"input"`) and `example` (an argument text for the prompt's example call)."""

    name: str
    description: str

    def __call__(self, arguments: str) -> str: ...


def text_argument(arguments: str, key: str) -> str:
    """The argument text a single-parameter tool works on.

    A JSON-style call arrives as a serialised object such as `{"expression": "2+3"}`: return the value under `key`
    (or the only value, when the object has one string value). Anything else is returned unchanged (the tool then
    reports what it cannot read), so the tag form
    `<calculator>2+3</calculator>` and the JSON form reach the tool as the same text."""
    stripped = arguments.strip()
    if not stripped.startswith("{"):
        return arguments
    try:
        value = json.loads(stripped)
    except ValueError:
        return arguments
    if not isinstance(value, dict):
        return arguments
    if isinstance(value.get(key), str):
        return value[key]
    strings = [v for v in value.values() if isinstance(v, str)]
    return strings[0] if len(value) == 1 and len(strings) == 1 else arguments
