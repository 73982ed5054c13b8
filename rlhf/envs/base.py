"""The environment interface: what answers the policy between the turns of an episode.

An environment is created once per episode (a fresh instance, so it may keep the episode's state) and driven by the
episode runner (`rlhf.rollout.episodes`):

- `reset(row) -> list[dict]`: the first observation, as chat messages (`[{"role": ..., "content": ...}, ...]`), from
  the dataset row (its columns, plus `prompt`: the prompt text and `messages`: the chat messages the recipe's data
  section builds, system prompt included). The messages are rendered with the model's chat template.
- `step(action_text) -> StepResult`: the policy's turn as text (decoded from the sampled tokens, special tokens
  removed); returns the next observation (chat messages, a plain string = one message of the environment's role, or
  None), a reward for this turn and whether the episode is over. The episode's reward is the sum over its turns.
- optional `metrics() -> dict[str, float]`: numbers about the finished episode (averaged over a step's episodes and
  logged as `env/<key>`).
- optional attribute `stop_strings: list[str]`: strings that end a turn (e.g. a tool call's closing tag), added to
  `rollout.stop` while decoding.
- optional attribute `tool_schemas: list[dict]`, read after `reset`: JSON schemas of tools (OpenAI function format)
  passed to the chat template as `tools=` when the first prompt is rendered.
- optional `final_reward() -> float`: called once after the episode's last turn, however it ended (done, max_turns,
  token budget); added to the turns' rewards.
- optional `close()`: called once per episode after the step's rewards are computed (or when the episodes fail).
- optional attribute `unwrapped`: what reward functions receive in `environments=` (default: the environment).

A single-turn task is the degenerate environment (`SingleTurnEnv`: the row's messages, then done after one turn,
reward 0), so the recipe's reward functions and an environment's reward compose: the episode's score is the weighted
reward functions plus `env.reward_weight` times the environment's reward. The table of environments and the recipe's
`env.name` -> class resolution are in `rlhf.envs.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass
class StepResult:
    """One turn's answer: the next observation (messages, a string, or None), this turn's reward, episode over."""

    observation: list[dict] | str | None
    reward: float = 0.0
    done: bool = False


@runtime_checkable
class Environment(Protocol):
    def reset(self, row: dict) -> list[dict]: ...

    def step(self, action_text: str) -> StepResult: ...


class SingleTurnEnv:
    """One turn and done: the degenerate environment of an ordinary prompt -> completion task (reward 0; the recipe's
    reward functions score the completion)."""

    def reset(self, row: dict) -> list[dict]:
        return [dict(m) for m in row["messages"]]

    def step(self, action_text: str) -> StepResult:
        return StepResult(observation=None, reward=0.0, done=True)
