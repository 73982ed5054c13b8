"""Tools a policy can call during a multi-turn episode: the call parser, the built-in tools and their registry.

    calls = parse_tool_calls(completion_text, tools)          # [ToolCall(name, arguments, span)]
    observation = run_tool_call(calls[0], tools)               # result text, or "error: ..."; never raises

`rlhf.tools.calls` explains the two call formats; `rlhf.tools.python_tool` the sandbox of the `python` tool."""

from rlhf.tools.base import Tool, ToolCall, ToolError, text_argument
from rlhf.tools.calculator import Calculator
from rlhf.tools.calls import parse_tool_calls, run_tool_call, stop_strings, tool_prompt, tool_schemas, truncate
from rlhf.tools.python_tool import PythonExecutor
from rlhf.tools.registry import TOOLS, FunctionTool, build_tools

__all__ = [
    "TOOLS",
    "Calculator",
    "FunctionTool",
    "PythonExecutor",
    "Tool",
    "ToolCall",
    "ToolError",
    "build_tools",
    "parse_tool_calls",
    "run_tool_call",
    "stop_strings",
    "text_argument",
    "tool_prompt",
    "tool_schemas",
    "truncate",
]
