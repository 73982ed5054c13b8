"""TRL-style environment classes (`environment_factory`) and reward functions the tests name by file path."""

from __future__ import annotations

import asyncio

CLOSED: list[int] = []  # id() of every closed instance, in order
RESETS: list[dict] = []  # the keywords every reset() received


class CountingEnv:
    """Tools `add`, `shout` and `fail`; reset needs the row's `answer` and extends the prompt; get_reward = calls."""

    def reset(self, answer: str, **kwargs) -> str:
        RESETS.append({"answer": answer, **kwargs})
        self.calls = 0
        return " Use the tools."

    def add(self, a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: The first integer.
            b: The second integer.
        """
        self.calls += 1
        return a + b

    async def shout(self, text: str, times: int = 1) -> str:
        """Repeat a text in capitals.

        Args:
            text: What to shout.
            times: How many times.
        """
        await asyncio.sleep(0)
        self.calls += 1
        return " ".join([text.upper()] * times)

    def fail(self) -> str:
        """A tool that always breaks."""
        raise ValueError("boom")

    def get_reward(self) -> float:
        return float(self.calls)

    def close(self) -> None:
        CLOSED.append(id(self))


class GameEnv:
    def reset(self, **kwargs) -> None:
        RESETS.append(dict(kwargs))
        self.moves = []

    def move(self, direction: str) -> str:
        """Move one tile.

        Args:
            direction: One of up, down, left, right.
        """
        self.moves.append(direction)
        return f"moved {direction}"

    def get_reward(self) -> float:
        return 10.0 * len(self.moves)


class CodingEnv:
    def reset(self, **kwargs) -> str:
        RESETS.append(dict(kwargs))
        return " (coding)"

    def run_code(self, code: str) -> str:
        """Run Python code.

        Args:
            code: The source.
        """
        return "ran"


class NoToolsEnv:
    def reset(self, **kwargs) -> None:
        pass

    def _helper(self) -> None:
        pass


class UndocumentedEnv:
    def reset(self, **kwargs) -> None:
        pass

    def look(self, where: str) -> str:
        return where


def calls_reward(completions, environments, **kwargs) -> list[float]:
    """Reads the episodes' instances: the number of tool calls each made."""
    return [float(env.calls) for env in environments]


SEEN: list[str] = []  # the environment classes calls_or_moves received


def calls_or_moves(completions, environments, **kwargs) -> list[float]:
    SEEN.extend(type(env).__name__ for env in environments)
    return [float(len(getattr(env, "moves", []))) for env in environments]
