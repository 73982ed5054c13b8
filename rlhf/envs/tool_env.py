"""The tool-using environment (`env.name: tools`): the policy calls tools by writing calls in its turn, the
environment answers each turn's calls with the tools' results, and a turn without a call ends the episode (it is the
final answer, which the recipe's reward functions score).

Per episode it reports `called_tool` (1 when the policy made at least one call), `tool_calls`, `tool_errors` (results
starting `error:`: unknown tools, bad arguments, timeouts, crashes) and `answered` (1 when the episode ended with a
turn without a call rather than by running out of turns or tokens); they are logged as `env/<key>`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rlhf.envs.base import StepResult
from rlhf.tools import Tool, build_tools, parse_tool_calls, run_tool_call, stop_strings, tool_prompt


class ToolEnv:
    """Tools for the policy: the system prompt describes them (`rlhf.tools.tool_prompt`) and each turn's calls are run.

    tools: tool specs for `rlhf.tools.build_tools` (`calculator`, `python`, `pkg.mod:Class`, `{fn:..., kwargs:...}`);
    style: the call format, `tags` (`<calculator>347*28</calculator>`) or `json` (Hermes `<tool_call>`); examples:
    chat messages placed between the system prompt and the row's messages (a worked example of a call, its result and
    the answer shows a small model the format far better than a description); instructions: text appended to the
    system prompt after the tools' description; observation_role: the chat role of tool results (`user` suits
    templates without a tool role); max_result_chars: a result longer than this is cut; max_calls_per_turn: calls
    run per turn (the rest are answered with an error); call_reward: reward of an episode's first error-free call
    (0 = the recipe's reward functions alone decide)."""

    _built: ClassVar[dict[str, dict[str, Tool]]] = {}  # tools are built once per spec list, shared by episodes

    def __init__(
        self,
        tools: list[Any] | None = None,
        style: str = "tags",
        examples: list[dict] | None = None,
        instructions: str = "",
        observation_role: str = "user",
        max_result_chars: int = 1000,
        max_calls_per_turn: int = 1,
        call_reward: float = 0.0,
    ):
        if not tools:
            raise ValueError("the tools environment needs env.tools, e.g. [calculator]")
        key = repr(tools)
        if key not in self._built:
            self._built[key] = build_tools(list(tools))
        self.tools = self._built[key]
        self.style, self.examples, self.instructions = style, [dict(m) for m in examples or []], instructions
        self.observation_role, self.max_result_chars = observation_role, max_result_chars
        self.max_calls_per_turn, self.call_reward = max_calls_per_turn, call_reward
        self.stop_strings = stop_strings(self.tools, style)
        self.calls = self.errors = 0
        self.answered = False

    def system_prompt(self, existing: str | None) -> str:
        parts = [existing, tool_prompt(self.tools, self.style), self.instructions]
        return "\n\n".join(p.strip() for p in parts if p and p.strip())

    def reset(self, row: dict) -> list[dict]:
        """The row's messages with the tools described in the system message and the examples before the question."""
        messages = [dict(m) for m in row["messages"]]
        existing = messages.pop(0)["content"] if messages and messages[0]["role"] == "system" else None
        return [{"role": "system", "content": self.system_prompt(existing)}, *self.examples, *messages]

    def step(self, action_text: str) -> StepResult:
        calls = parse_tool_calls(action_text, self.tools, self.style)
        if not calls:
            self.answered = True
            return StepResult(observation=None, reward=0.0, done=True)
        results = []
        for n, call in enumerate(calls):
            if n < self.max_calls_per_turn:
                results.append(run_tool_call(call, self.tools, self.max_result_chars))
            else:
                results.append(f"error: only {self.max_calls_per_turn} call(s) per turn are run")
        errors = sum(r.startswith("error:") for r in results)
        reward = self.call_reward if self.calls == 0 and errors < len(results) else 0.0
        self.calls += len(calls)
        self.errors += errors
        return StepResult(observation="\n".join(results), reward=reward, done=False)

    def metrics(self) -> dict[str, float]:
        return {
            "called_tool": float(self.calls > 0),
            "tool_calls": float(self.calls),
            "tool_errors": float(self.errors),
            "answered": float(self.answered),
        }
