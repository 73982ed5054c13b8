"""Environments the tests name by file path in `env.name`, as a user would."""

from __future__ import annotations

from rlhf.envs import StepResult


class CountdownEnv:
    """Answers every turn with `observation <n>` until `turns` turns were taken; reward 0.25 per turn. With
    `by_row`, a row's episode lasts 1 + (a % turns) turns, so episodes of one step end at different turns."""

    def __init__(self, turns: int = 3, by_row: bool = False):
        self.turns, self.by_row, self.taken = turns, by_row, 0

    def reset(self, row: dict) -> list[dict]:
        if self.by_row:
            self.turns = 1 + int(row["a"]) % self.turns
        return [dict(m) for m in row["messages"]]

    def step(self, action_text: str) -> StepResult:
        self.taken += 1
        return StepResult(f"observation {self.taken}", reward=0.25, done=self.taken >= self.turns)

    def metrics(self) -> dict[str, float]:
        return {"taken": float(self.taken)}
