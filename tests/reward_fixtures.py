"""Reward functions the tests plug in by file path, as a user would."""


def length_reward(prompts, completions, **columns):
    # varies between completions of one prompt, so GRPO advantages are non-zero even for a random tiny model
    return [len(c) / 10.0 for c in completions]


def raising_reward(prompts, completions, **columns):
    raise ValueError("boom: the scorer is broken")


_calls = {"n": 0}


def fails_on_third_call(prompts, completions, **columns):
    # a scorer that breaks mid-run (a flaky service, a bad row): steps 1 and 2 succeed, step 3 raises
    _calls["n"] += 1
    if _calls["n"] >= 3:
        raise ConnectionError("scoring service went away")
    return [len(c) / 10.0 for c in completions]
