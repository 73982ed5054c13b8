"""Length shaping rewards, composable with any correctness reward in a recipe.

They read `completion_length` (tokens, counted by the trainer including the final EOS) from the columns the trainer
passes to every reward function.
"""

from __future__ import annotations


def overlong_penalty(
    prompts: list[str],
    completions: list[str],
    completion_length: list[int],
    max_tokens: int,
    buffer: int,
    penalty: float = 1.0,
    **_,
) -> list[float]:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, eq. 13).

    0 up to max_tokens - buffer tokens, then a linear ramp down to -penalty at max_tokens, and -penalty beyond, so a
    completion that is about to be cut learns to finish instead of being judged only by a truncated answer."""
    if not 0 < buffer <= max_tokens:
        raise ValueError(
            f"overlong_penalty: need 0 < buffer <= max_tokens, got buffer={buffer}, max_tokens={max_tokens}"
        )
    start = max_tokens - buffer
    out = []
    for n in completion_length:
        if n <= start:
            out.append(0.0)
        elif n <= max_tokens:
            out.append((start - n) / buffer * penalty)
        else:
            out.append(-penalty)
    return out


def length_penalty(
    prompts: list[str], completions: list[str], completion_length: list[int], target: int, coef: float = 1.0, **_
) -> list[float]:
    """-coef x (tokens beyond `target`) / target: a plain push toward shorter answers, 0 at or under the target."""
    if target <= 0:
        raise ValueError(f"length_penalty: target must be > 0 tokens, got {target}")
    return [-coef * max(0, n - target) / target for n in completion_length]
