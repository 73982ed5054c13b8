"""The OpenEnv adapter (rlhf.interop.openenv) on an environment shaped like OpenEnv's: alone, and in the episode
runner."""

import random

import pytest
import torch
from test_episodes import ScriptedEngine

from rlhf.envs import build_env
from rlhf.interop.openenv import OpenEnvAdapter
from rlhf.rollout import SamplingParams
from rlhf.rollout.episodes import run_episodes

ENV = "tests.openenv_fixtures:GuessingEnvironment"
ACTION = "tests.openenv_fixtures:GuessAction"
ROW = {"seed": 3, "messages": [{"role": "system", "content": "Reply with a number."}]}


def _adapter(**kwargs):
    return OpenEnvAdapter(ENV, ACTION, action_field="guess", reset_columns=["seed"], **kwargs)


def test_episode_turn_by_turn():
    target = random.Random(3).randint(1, 10)
    env = _adapter(observation_fields=["feedback"])
    assert env.reset(ROW) == [ROW["messages"][0], {"role": "user", "content": "Guess a number from 1 to 10."}]
    low = env.step("0")
    assert (low.observation, low.reward, low.done) == ("higher", 0.0, False)
    assert env.step("eleven").observation == "not a number"
    right = env.step(f" {target}\n")
    assert (right.observation, right.reward, right.done) == (None, 1.0, True)
    assert env.metrics() == {"openenv_reward": 1.0, "openenv_turns": 3.0}
    assert env.env.closed  # closed when the episode ends


def test_all_fields_and_running_out_of_attempts():
    env = _adapter(include_row_messages=False, env_kwargs={"max_attempts": 2})
    assert env.reset(ROW) == [{"role": "user", "content": "feedback: Guess a number from 1 to 10.\nattempts: 0"}]
    assert env.step("0").observation == "feedback: higher\nattempts: 1"
    last = env.step("0")
    assert last.done and last.observation is None and last.reward == 0.0


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="env='tests.openenv_fixtures:Nope'.*no attribute 'Nope'"):
        OpenEnvAdapter("tests.openenv_fixtures:Nope", ACTION)
    with pytest.raises(TypeError, match="has no `reset`"):
        OpenEnvAdapter(ACTION, ACTION)
    with pytest.raises(KeyError, match=r"reset_columns \['task_id'\]"):
        OpenEnvAdapter(ENV, ACTION, reset_columns=["task_id"]).reset(ROW)
    with pytest.raises(KeyError, match=r"observation_fields \['stdout'\]"):
        _adapter(observation_fields=["stdout"]).reset(ROW)
    env = OpenEnvAdapter(ENV, ACTION, action_field="message")
    env.reset(ROW)
    with pytest.raises(ValueError, match=r"cannot build GuessAction\(message=...\)"):
        env.step("5")


def test_in_the_episode_runner(tokenizer):
    """Named by import path like any environment; the runner feeds it the decoded turns and masks its answers."""
    make = build_env("rlhf.interop.openenv:OpenEnvAdapter", {"env": ENV, "action": ACTION, "action_field": "guess"})
    guess = tokenizer.encode("0", add_special_tokens=False)
    engine = ScriptedEngine(tokenizer, [guess] * 3)
    rows = [{"messages": [{"role": "user", "content": "Play."}]}]
    ep = run_episodes(engine, tokenizer, make, rows, 2, SamplingParams(max_new_tokens=4), 3, 200)
    assert len(engine.calls) == 3  # "0" is never right for a target in 1..10: feedback every turn, 3 turns
    mask, ids = ep.rollout.action_mask, ep.rollout.completion_ids
    assert mask.shape[0] == 2 and int(mask[0].sum()) == 3 * len(guess)  # only the sampled tokens train
    feedback = tokenizer.decode(ids[0][mask[0] == 0].tolist())
    assert "higher" in feedback and torch.equal(mask[0], mask[1])
    assert ep.env_rewards.tolist() == [0.0, 0.0] and ep.stats["openenv_turns"].tolist() == [3.0, 3.0]
