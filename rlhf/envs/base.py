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

A single-turn task is the degenerate environment (`SingleTurnEnv`: the row's messages, then done after one turn,
reward 0), so the recipe's reward functions and an environment's reward compose: the episode's score is the weighted
reward functions plus `env.reward_weight` times the environment's reward. Environments are named in a recipe by a name
in `ENVIRONMENTS` or by import path (`my_pkg.envs:MyEnv`, `path/to/file.py:MyEnv`), with `env.kwargs` passed to the
constructor.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


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
