"""An OpenEnv environment (https://github.com/meta-pytorch/OpenEnv) as an rlhf environment, run in this process.

OpenEnv's server-side environments are classes with `reset(seed=None, episode_id=None, **kwargs) -> Observation` and
`step(action) -> Observation`, where the action is the environment's own Action model (e.g. a `CodeAction(code=...)`)
and the observation a model carrying `done`, `reward` and `metadata` next to its own fields. This adapter drives
such a class directly: the policy's turn text becomes `ActionClass(**{action_field: text})`, the observation's fields
become the next chat message, its `reward` this turn's reward and its `done` the end of the episode.

Nothing from OpenEnv is imported here (the classes are named by import path and used by their shape), so the adapter
costs no dependency; the environment's own package must be importable. Not covered: environments that only run
behind OpenEnv's server (in a container or a Space): its HTTP endpoints are stateless, one fresh environment per
request, and episodes run over its WebSocket session protocol, which needs OpenEnv's client and a reachable server.

    env:
      name: rlhf.interop.openenv:OpenEnvAdapter
      kwargs: {env: coding_env.server:CodeExecutionEnvironment, action: coding_env.models:CodeAction,
               action_field: code, observation_fields: [stdout, stderr]}
"""

from __future__ import annotations

from typing import Any

from rlhf.envs.base import StepResult

RESERVED = ("done", "reward", "metadata")


def _resolve(path: str, what: str) -> Any:
    from rlhf.rewards import import_object

    return import_object(path, f"OpenEnvAdapter {what}={path!r}", ValueError)


class OpenEnvAdapter:
    """One OpenEnv environment instance per episode, driven turn by turn.

    env / action: import paths of the Environment class and its Action class (`pkg.mod:Name`); env_kwargs: the
    environment's constructor arguments; action_field: the Action field that receives the turn's text;
    observation_fields: the Observation fields shown to the policy, in order (none: every field but done, reward and
    metadata); reset_columns: dataset columns passed to `reset` as keywords (e.g. `seed`, `task_id`);
    include_row_messages: put the row's chat messages (system prompt and prompt) before the first observation;
    observation_role: the chat role of observations."""

    def __init__(
        self,
        env: str,
        action: str,
        action_field: str = "message",
        env_kwargs: dict | None = None,
        observation_fields: list[str] | None = None,
        reset_columns: list[str] | None = None,
        include_row_messages: bool = True,
        observation_role: str = "user",
    ):
        env_cls = _resolve(env, "env")
        self.action_cls = _resolve(action, "action")
        for method in ("reset", "step"):
            if not callable(getattr(env_cls, method, None)):
                raise TypeError(f"OpenEnvAdapter env={env!r} has no `{method}`: not an OpenEnv Environment class")
        self.env = env_cls(**(env_kwargs or {}))
        self.action_field = action_field
        self.observation_fields = list(observation_fields) if observation_fields else None
        self.reset_columns = list(reset_columns or [])
        self.include_row_messages = include_row_messages
        self.observation_role = observation_role
        self.total_reward = 0.0
        self.turns = 0

    def reset(self, row: dict) -> list[dict]:
        missing = [c for c in self.reset_columns if c not in row]
        if missing:
            raise KeyError(f"OpenEnvAdapter reset_columns {missing} are not columns of the row ({', '.join(row)})")
        observation = self.env.reset(**{c: row[c] for c in self.reset_columns})
        messages = [dict(m) for m in row.get("messages", [])] if self.include_row_messages else []
        text = self.render(observation)
        if text:
            messages.append({"role": self.observation_role, "content": text})
        if not messages:
            raise ValueError("OpenEnvAdapter: the first observation is empty and include_row_messages is off")
        return messages

    def step(self, action_text: str) -> StepResult:
        try:
            action = self.action_cls(**{self.action_field: action_text})
        except Exception as e:  # a pydantic ValidationError or a TypeError naming the field
            raise ValueError(
                f"OpenEnvAdapter: cannot build {self.action_cls.__name__}({self.action_field}=...): {e}"
            ) from e
        observation = self.env.step(action)
        reward = float(getattr(observation, "reward", None) or 0.0)
        done = bool(getattr(observation, "done", False))
        self.total_reward += reward
        self.turns += 1
        if done and callable(getattr(self.env, "close", None)):
            self.env.close()
        return StepResult(observation=None if done else self.render(observation), reward=reward, done=done)

    def render(self, observation: Any) -> str:
        """The observation's fields as text: one field alone as its value, several as `name: value` lines."""
        fields = _fields(observation)
        names = self.observation_fields or [k for k in fields if k not in RESERVED]
        unknown = [n for n in names if n not in fields]
        if unknown:
            raise KeyError(f"OpenEnvAdapter observation_fields {unknown} not in the observation ({', '.join(fields)})")
        values = [(n, fields[n]) for n in names if fields[n] not in (None, "")]
        if len(names) == 1:
            return "" if not values else str(values[0][1])
        return "\n".join(f"{n}: {v}" for n, v in values)

    def metrics(self) -> dict[str, float]:
        return {"openenv_reward": self.total_reward, "openenv_turns": float(self.turns)}


def _fields(observation: Any) -> dict[str, Any]:
    if hasattr(observation, "model_dump"):  # pydantic, as OpenEnv's Observation models are
        return dict(observation.model_dump())
    if isinstance(observation, dict):
        return dict(observation)
    return dict(vars(observation))
