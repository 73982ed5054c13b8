"""A complete custom reward, plugged into a recipe by path:

    rewards:
      - fn: reward_models.numeric:numeric_answer_reward
        weight: 1.0
      - fn: examples/custom_reward.py:concise_answer
        weight: 0.2
        kwargs: {max_chars: 12}
      - fn: examples/custom_reward.py:ContainsOperands
        weight: 0.1

or on the command line:

    python -m rlhf.train recipes/grpo_arithmetic_smollm2.yaml "rewards=[
        {fn: reward_models.numeric:numeric_answer_reward},
        {fn: 'examples/custom_reward.py:concise_answer', weight: 0.2}]"

A reward function receives the prompts, the completions and, by name, every other column of the dataset for those
rows (here the arithmetic task's `answer`, `a`, `op`, `b`). It returns one float per completion, or None where it does
not apply (None adds nothing to the weighted sum and is left out of `reward/<name>/mean`).
"""

from __future__ import annotations


def concise_answer(
    prompts: list[str], completions: list[str], answer: list[str], max_chars: int = 12, **_
) -> list[float]:
    """1.0 for a completion that is just the answer (optionally with whitespace), fading to 0 as it grows."""
    scores = []
    for completion, gold in zip(completions, answer):
        text = completion.strip()
        if text == str(gold):
            scores.append(1.0)
        else:
            scores.append(max(0.0, 1.0 - len(text) / max_chars) * 0.5)
    return scores


class ContainsOperands:
    """A class reward: built once with the recipe's kwargs (load a model here), then called on every batch."""

    def __init__(self, bonus: float = 1.0):
        self.bonus = bonus

    def __call__(
        self, prompts: list[str], completions: list[str], a: list[int] | None = None, b: list[int] | None = None, **_
    ) -> list[float | None]:
        if a is None or b is None:  # not the arithmetic task: this reward does not apply
            return [None] * len(completions)
        return [self.bonus if f"{x}" in c and f"{y}" in c else 0.0 for c, x, y in zip(completions, a, b)]
