"""Finding tool calls in a completion, running them, and telling the model how to make them.

Two call formats (`style`):

- `"tags"`: `<NAME>ARGS</NAME>` for a registered tool NAME, e.g. `<calculator>347*28</calculator>`. Only registered
  names are recognised, so ordinary text with angle brackets is never taken for a call; the format is short
  enough for a small model to copy from one worked example.
- `"json"`: the Hermes / Qwen format, `<tool_call>{"name": "calculator", "arguments": {"expression": "347*28"}}
  </tool_call>`, for models whose chat template defines tool calls (pass `tool_schemas(tools)` to
  `apply_chat_template(..., tools=...)` so the template describes them in its own words).

Reading rules, the same in both styles: calls are found left to right and never overlap; a call ends at the first
closing tag after its opening tag; when its name's opening tag appears again before that close, the later one starts
the call (the earlier is unclosed text), so of two nested calls of one name the inner one is taken; an opening tag
without a closing tag (a turn cut off by the token budget) is not a call.

Robustness: parsing takes time linear in the text (up to a log factor), whatever the model wrote; a call body longer
than `MAX_CALL_CHARS` or a JSON body nested deeper than `MAX_JSON_DEPTH` is answered with an error instead of being
read; no exception from parsing or from a tool stops training (`run_tool_call` turns them into `error:` results)."""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterable

from rlhf.tools.base import Tool, ToolCall, ToolError
from rlhf.tools.signals import watch_signals

STYLES = ("tags", "json")
JSON_TAG = "tool_call"
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
MAX_CALL_CHARS = 100_000  # a call body longer than this is answered with an error, not read
MAX_JSON_DEPTH = 64  # brackets nested deeper than this in a JSON call are an error (json would recurse on them)


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"tool call style {style!r}: use one of {', '.join(STYLES)}")


def _tagged_spans(text: str, names: Iterable[str]) -> list[tuple[str, int, int, int, int]]:
    """(name, call start, argument start, argument end, call end) of each complete `<name>...</name>`, left to right.

    Every tag is found once with a regex and looked up by bisection, so unclosed tags cost O(n log n), not O(n^2)."""
    names = sorted(set(names), key=len, reverse=True)
    if not names:
        return []
    alternatives = "|".join(re.escape(n) for n in names)
    opens: dict[str, list[int]] = {}
    closes: dict[str, list[int]] = {}
    for m in re.finditer(f"<(/?)({alternatives})>", text):
        (closes if m.group(1) else opens).setdefault(m.group(2), []).append(m.start())
    found, pos = [], 0
    for start, name in sorted((s, n) for n, starts in opens.items() for s in starts):
        if start < pos:
            continue
        after = start + len(name) + 2
        ends = closes.get(name, [])
        k = bisect.bisect_left(ends, after)
        if k == len(ends):
            continue  # unclosed: not a call
        close = ends[k]
        same = opens[name]
        begin = same[bisect.bisect_left(same, close) - 1]  # the last opening of this name before the close
        end = close + len(name) + 3
        found.append((name, begin, begin + len(name) + 2, close, end))
        pos = end
    return found


def parse_tool_calls(text: str, tools: Iterable[str], style: str = "tags") -> list[ToolCall]:
    """The tool calls in `text`, in order.

    `tools` are the registered names (the `"tags"` style only recognises these; the `"json"` style returns every
    call so an unknown name is answered with an error). A JSON-style call whose body is not a JSON object with a
    string `name` is returned with `error` set and an empty name."""
    _check_style(style)
    if style == "tags":
        return [_tag_call(n, text[a:b], (s, e)) for n, s, a, b, e in _tagged_spans(text, tools)]
    calls = []
    for _, start, arg_start, arg_end, end in _tagged_spans(text, [JSON_TAG]):
        calls.append(_json_call(text[arg_start:arg_end], (start, end)))
    return calls


def _too_long(body: str) -> str | None:
    if len(body) > MAX_CALL_CHARS:
        return f"the call is {len(body)} characters long, past the limit of {MAX_CALL_CHARS}"
    return None


def _tag_call(name: str, body: str, span: tuple[int, int]) -> ToolCall:
    error = _too_long(body)
    return ToolCall(name, "" if error else body, span, error=error)


def json_depth(body: str) -> int:
    """The deepest nesting of `[` / `{` in a JSON text (brackets inside strings ignored)."""
    depth = deepest = 0
    for token in re.finditer(r'"(?:[^"\\]|\\.)*"?|[\[{]|[\]}]', body):
        char = token.group()[0]
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _json_call(body: str, span: tuple[int, int]) -> ToolCall:
    error = _too_long(body)
    if error is None and body.count("[") + body.count("{") > MAX_JSON_DEPTH and json_depth(body) > MAX_JSON_DEPTH:
        error = f"the tool call nests brackets deeper than {MAX_JSON_DEPTH} levels"
    if error is not None:
        return ToolCall("", "", span, error=error)
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as e:
        return ToolCall("", body, span, error=f"the tool call is not valid JSON ({e})")
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return ToolCall("", body, span, error='a tool call is a JSON object {"name": ..., "arguments": {...}}')
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        return ToolCall(value["name"], arguments, span)
    return ToolCall(value["name"], json.dumps(arguments, ensure_ascii=False), span)


def run_tool_call(call: ToolCall, tools: dict[str, Tool], max_chars: int = 1000) -> str:
    """The observation text for one call; never raises, unless the trainer itself was signalled during the call.

    An unknown tool, an unreadable call, a `ToolError` or any other exception from the tool becomes a text starting
    `error:`, and so does a `KeyboardInterrupt` / `SystemExit` out of the tool while no SIGINT / SIGTERM reached this
    process (`rlhf.tools.signals`); after such a signal the trainer's stop propagates. The result is cut to
    `max_chars` characters (the start and the end kept, a marker in the middle saying how many characters were cut)."""
    if call.error is not None:
        return truncate(f"error: {call.error}", max_chars)
    tool = tools.get(call.name)
    if tool is None:
        known = ", ".join(sorted(tools)) or "none"
        return truncate(f"error: unknown tool {call.name!r}; the tools are: {known}", max_chars)
    with watch_signals() as signals:
        try:
            result = tool(call.arguments)
            return truncate(result if isinstance(result, str) else str(result), max_chars)
        except ToolError as e:
            return truncate(f"error: {e}", max_chars)
        except (KeyboardInterrupt, SystemExit) as e:
            if signals.received:
                raise  # the trainer was told to stop: not the call's business
            return truncate(f"error: {call.name} was interrupted ({type(e).__name__})", max_chars)
        except Exception as e:  # a user tool's bug is the model's observation, never the trainer's crash
            return truncate(f"error: {call.name} failed: {_describe(e)}", max_chars)


def _describe(error: BaseException) -> str:
    try:
        return f"{type(error).__name__}: {error}"
    except Exception:  # an exception whose str() fails
        return type(error).__name__


def truncate(text: str, max_chars: int) -> str:
    """`text` if it fits, else its first and last parts around `[... N characters cut ...]` (at most `max_chars`
    characters of the original kept)."""
    if max_chars <= 0:
        raise ValueError(f"max_chars={max_chars}: must be positive")
    if len(text) <= max_chars:
        return text
    head = (max_chars + 1) // 2
    tail = max_chars - head
    cut = len(text) - max_chars
    return f"{text[:head]}\n[... {cut} characters cut ...]\n{text[len(text) - tail :] if tail else ''}"


def stop_strings(tools: Iterable[str], style: str = "tags") -> list[str]:
    """The closing tags that end a decode turn at a complete call (the engine keeps the stop string)."""
    _check_style(style)
    return [f"</{name}>" for name in sorted(set(tools))] if style == "tags" else [f"</{JSON_TAG}>"]


def tool_schemas(tools: dict[str, Tool]) -> list[dict]:
    """OpenAI-style function schemas (one string parameter each), for `apply_chat_template(..., tools=...)`."""
    return [
        {
            "type": "function",
            "function": {
                "name": name,
                "description": tool.description,
                "parameters": {
                    "type": "object",
                    "properties": {_argument(tool): {"type": "string"}},
                    "required": [_argument(tool)],
                },
            },
        }
        for name, tool in tools.items()
    ]


def tool_prompt(tools: dict[str, Tool], style: str = "tags") -> str:
    """The system-prompt text: the tools, one line each, the call format and one example call (the first tool's)."""
    _check_style(style)
    if not tools:
        raise ValueError("tool_prompt: no tools given")
    name, tool = next(iter(tools.items()))
    example = getattr(tool, "example", None) or "..."
    lines = ["You can use these tools:"]
    lines += [f"- {n}: {t.description}" for n, t in tools.items()]
    if style == "tags":
        lines.append("To use a tool, write its name as a tag around the input, for example:")
        lines.append(f"<{name}>{example}</{name}>")
    else:
        call = {"name": name, "arguments": {_argument(tool): example}}
        lines.append(f"To use a tool, write a JSON object in {JSON_TAG} tags, for example:")
        lines.append(f"<{JSON_TAG}>{json.dumps(call, ensure_ascii=False)}</{JSON_TAG}>")
    lines.append("The result comes back in the next message.")
    return "\n".join(lines)


def _argument(tool: Tool) -> str:
    return getattr(tool, "argument", None) or "input"
