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


def hung_reward(prompts, completions, **columns):
    # a scorer that never answers (a dead service without a client timeout)
    import time

    time.sleep(10**6)
    return [0.0] * len(completions)


def reward_len(completions, **kwargs):
    # TRL's documentation example, as written for GRPOTrainer: keyword call, no prompts parameter
    return [-abs(20 - len(completion)) for completion in completions]


def reward_num_tokens(completion_ids, **kwargs):
    # TRL style, reading the token ids of each completion
    return [float(len(ids)) for ids in completion_ids]


def odd_answers_only(prompts, completions, answer, **columns):
    """Varies within a group only for problems whose answer is odd; every other group is all zeros (uninformative),
    so dynamic sampling has groups to drop."""
    return [len(c) / 10.0 if int(a) % 2 else 0.0 for c, a in zip(completions, answer)]


def constant_on_rank_one(prompts, completions, **columns):
    """Varies on rank 0; on rank 1 every group's rewards are equal, so that rank stays short under dynamic sampling."""
    import os

    if os.environ.get("RANK", "0") == "1":
        return [1.0] * len(completions)
    return [len(c) / 10.0 for c in completions]


def constant_reward(prompts, completions, **columns):
    """The same reward for everything: every advantage is zero."""
    return [1.0] * len(completions)


_stop_calls = {"n": 0}


def sigterm_on_call(prompts, completions, **columns):
    """Sends SIGTERM to this process on call number $SIGTERM_ON_CALL, then hangs: a long stage (rollout, reward,
    evaluation) that a pre-empted run must not wait for."""
    import os
    import signal
    import time

    _stop_calls["n"] += 1
    if _stop_calls["n"] == int(os.environ.get("SIGTERM_ON_CALL", "0")):
        with open(os.environ["SIGTERM_STAMP"], "w") as f:
            f.write(str(time.time()))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(600)
    return [len(c) / 10.0 for c in completions]
