"""Async twins of tests/reward_fixtures.py's rewards, named by file path in recipes as a user would."""

from __future__ import annotations

import asyncio


async def async_length_reward(prompts, completions, **columns):
    await asyncio.sleep(0.01)  # waits on "a server"
    return [len(c) / 10.0 for c in completions]


def digit_reward(completions, **kwargs):
    return [float(sum(ch.isdigit() for ch in c)) for c in completions]


class AsyncDigitReward:
    """An instance whose `__call__` is async (as a judge client would be)."""

    async def __call__(self, completions, **kwargs):
        await asyncio.sleep(0.01)
        return digit_reward(completions)
