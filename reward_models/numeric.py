"""The built-in numeric-answer reward: the completion's final number against the dataset's `answer` column."""

from __future__ import annotations

import re
from fractions import Fraction

from rlhf.rewards import as_text

_BOXED = re.compile(r"\\boxed\s*\{([^{}]*)\}")
_HASHES = re.compile(r"####\s*([^\n]+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def final_number(text: str) -> str | None:
    """The answer a completion commits to: the last `\\boxed{}`, else the text after `####`, else the last number."""
    if not isinstance(text, str):
        return None
    for pattern in (_BOXED, _HASHES):
        found = pattern.findall(text)
        if found:
            numbers = _NUMBER.findall(found[-1])
            return numbers[-1] if numbers else found[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def to_fraction(text: str | None) -> Fraction | None:
    if text is None:
        return None
    try:
        return Fraction(text.replace(",", "").strip().rstrip("."))
    except (ValueError, ZeroDivisionError):
        return None


def numeric_answer_reward(prompts: list, completions: list, answer: list, **_) -> list[float]:
    """1.0 when the completion's final number equals the gold number exactly (as rationals), else 0.0.

    A completion is text or, from a conversational dataset, a message list (its last message is read). The gold
    `answer` may be a bare number or a GSM8K solution ending in `#### N`."""
    out = []
    for completion, gold in zip(completions, answer):
        g = to_fraction(final_number(str(gold)))
        p = to_fraction(final_number(as_text(completion)))
        out.append(1.0 if g is not None and p is not None and g == p else 0.0)
    return out
