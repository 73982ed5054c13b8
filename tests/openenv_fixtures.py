"""An environment shaped like an OpenEnv server-side environment (pydantic Action / Observation models with `done`,
`reward` and `metadata`, `reset(seed=None, episode_id=None, **kwargs)`, `step(action)`), without OpenEnv installed."""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, Field


class GuessAction(BaseModel):
    guess: str


class GuessObservation(BaseModel):
    feedback: str = ""
    attempts: int = 0
    done: bool = False
    reward: float | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class GuessingEnvironment:
    """Guess a number in [1, high]: feedback `higher` / `lower`, reward 1 and done on the right guess, done after
    `max_attempts` guesses otherwise; an unreadable guess costs an attempt and says so."""

    def __init__(self, high: int = 10, max_attempts: int = 4):
        self.high, self.max_attempts = high, max_attempts
        self.closed = False

    def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs) -> GuessObservation:
        self.target = random.Random(seed).randint(1, self.high)
        self.attempts = 0
        return GuessObservation(feedback=f"Guess a number from 1 to {self.high}.")

    def step(self, action: GuessAction, timeout_s: float | None = None, **kwargs) -> GuessObservation:
        self.attempts += 1
        try:
            guess = int(action.guess.strip())
        except ValueError:
            feedback = "not a number"
        else:
            if guess == self.target:
                return GuessObservation(feedback="correct", attempts=self.attempts, done=True, reward=1.0)
            feedback = "higher" if guess < self.target else "lower"
        done = self.attempts >= self.max_attempts
        return GuessObservation(feedback=feedback, attempts=self.attempts, done=done, reward=0.0)

    def close(self) -> None:
        self.closed = True
