"""Reward functions the tests plug in by file path, as a user would."""


def length_reward(prompts, completions, **columns):
    # varies between completions of one prompt, so GRPO advantages are non-zero even for a random tiny model
    return [len(c) / 10.0 for c in completions]


def raising_reward(prompts, completions, **columns):
    raise ValueError("boom: the scorer is broken")
