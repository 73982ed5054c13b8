"""Multi-turn episodes: the runner's loop with a scripted engine, the action mask token by token, observation tokens
as the chat template renders them, the tool environment, and the trainer on multi-turn episodes (token in, token out:
the recomputed log-probs of sampled tokens equal the sampler's)."""

import json
from pathlib import Path

import pytest
import torch

from rlhf.config import ConfigError, load_config
from rlhf.data import encode_prompt
from rlhf.envs import StepResult, build_env
from rlhf.rollout import Rollout, SamplingParams
from rlhf.rollout.episodes import ObservationTokens, run_episodes
from tests.conftest import tiny_run

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"
ENVS = REPO / "tests" / "env_fixtures.py"


class ScriptedEngine:
    """A fake engine: call k returns, for every row, the ids `script[k]` (cut at `sampling.max_new_tokens`) with
    log-prob -0.5 - k per token; it records the prompts it was given."""

    def __init__(self, tokenizer, script: list[list[int]]):
        self.tokenizer, self.script, self.calls = tokenizer, script, []

    def generate(self, prompts, group_size, sampling, batch_size=None) -> Rollout:
        k = len(self.calls)
        self.calls.append(([list(p) for p in prompts], group_size, sampling))
        ids = self.script[k][: sampling.max_new_tokens]
        B = len(prompts) * group_size
        return Rollout(
            prompt_ids=torch.zeros(B, 1, dtype=torch.long),
            prompt_mask=torch.ones(B, 1, dtype=torch.long),
            completion_ids=torch.tensor([ids] * B),
            completion_mask=torch.ones(B, len(ids), dtype=torch.long),
            logprobs=torch.full((B, len(ids)), -0.5 - k),
            truncated=torch.zeros(B, dtype=torch.bool),
            texts=[self.tokenizer.decode(ids, skip_special_tokens=True)] * B,
            group_size=group_size,
        )

    def weights_updated(self) -> None: ...

    def close(self) -> None: ...


class ScriptedEnv:
    """Observation `obs <n>` after turns 1 and 2, done after turn 3; rewards 1, 2, 3; records the actions."""

    def __init__(self):
        self.actions = []

    def reset(self, row):
        return row["messages"]

    def step(self, action_text):
        self.actions.append(action_text)
        n = len(self.actions)
        return StepResult(None if n == 3 else f"obs {n}", reward=float(n), done=n == 3)


def _rows(n: int) -> list[dict]:
    return [{"answer": str(i), "messages": [{"role": "user", "content": f"question {i}"}]} for i in range(n)]


def test_three_turn_episode_action_mask_token_by_token(tokenizer):
    """Sampled ids carry action mask 1 and the engine's log-probs; observation ids carry 0 and 0; the observation ids
    are exactly the template's observation turn; the next turn's prompt is the history's ids, never re-encoded."""
    t1, t2, t3 = (tokenizer(s, add_special_tokens=False)["input_ids"] for s in ("a b", "c", "d e f"))
    engine = ScriptedEngine(tokenizer, [t1, t2, t3])
    envs = []
    make = lambda: envs.append(ScriptedEnv()) or envs[-1]  # noqa: E731
    ep = run_episodes(engine, tokenizer, make, _rows(2), 2, SamplingParams(max_new_tokens=8), 3, 100)
    render = ObservationTokens(tokenizer)
    o1, o2 = render("obs 1", t1[-1]), render("obs 2", t2[-1])
    assert tokenizer.decode(o1).startswith("<|im_end|>\n<|im_start|>user\nobs 1<|im_end|>")
    assert tokenizer.decode(o1).endswith("<|im_start|>assistant\n")
    expected = t1 + o1 + t2 + o2 + t3
    mask = [1] * len(t1) + [0] * len(o1) + [1] * len(t2) + [0] * len(o2) + [1] * len(t3)
    logps = [-0.5] * len(t1) + [0.0] * len(o1) + [-1.5] * len(t2) + [0.0] * len(o2) + [-2.5] * len(t3)
    r = ep.rollout
    assert r.completion_ids.shape == (4, len(expected))
    for b in range(4):
        assert r.completion_ids[b].tolist() == expected
        assert r.action_mask[b].tolist() == mask  # token by token
        assert r.completion_mask[b].tolist() == [1] * len(expected)
        assert r.logprobs[b].tolist() == pytest.approx(logps)
    assert ep.engine_calls == 3 and len(engine.calls) == 3
    prompt0 = encode_prompt(tokenizer, _rows(2)[0]["messages"])
    assert engine.calls[0][0] == [prompt0, encode_prompt(tokenizer, _rows(2)[1]["messages"])]
    assert engine.calls[0][1] == 2 and engine.calls[1][1] == 1  # turn 1: G per prompt; later: one per history
    assert engine.calls[1][0][0] == prompt0 + t1 + o1
    assert engine.calls[2][0][1] == prompt0 + t1 + o1 + t2 + o2  # row 1 of call 3 = episode 1 (prompt 0's second)
    assert ep.env_rewards.tolist() == [6.0] * 4 and ep.stats["turns"].tolist() == [3.0] * 4
    assert envs[0].actions == ["a b", "c", "d e f"]
    assert ep.final_texts == ["d e f"] * 4
    assert r.group_size == 2 and not r.truncated.any()


def test_observation_tokens_equal_the_template_rendering(tokenizer):
    """prompt + sampled action (ending at a stop string) + observation ids == the chat template's tokens of the
    whole conversation, so the trainer sees what the model would see in a real chat."""
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Compute 12 * 3."}]
    action = tokenizer("<calculator>12*3</calculator>", add_special_tokens=False)["input_ids"]
    obs = ObservationTokens(tokenizer)("36", action[-1])
    whole = msgs + [
        {"role": "assistant", "content": "<calculator>12*3</calculator>"},
        {"role": "user", "content": "36"},
    ]
    assert encode_prompt(tokenizer, msgs) + action + obs == encode_prompt(tokenizer, whole)
    # an action that closed its own turn with the end-of-turn token does not get it twice
    closed = action + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert encode_prompt(tokenizer, msgs) + closed + ObservationTokens(tokenizer)("36", closed[-1]) == (
        encode_prompt(tokenizer, whole)
    )


def test_budget_turns_and_truncation(tokenizer):
    """A turn is capped by the episode's token budget; an episode that still wants turns at max_turns is truncated;
    episodes that end leave the batch (fewer rows in the next engine call)."""
    t = tokenizer("x y z w", add_special_tokens=False)["input_ids"]
    engine = ScriptedEngine(tokenizer, [t, t, t])
    ep = run_episodes(engine, tokenizer, lambda: ScriptedEnv(), _rows(1), 1, SamplingParams(max_new_tokens=8), 2, 100)
    assert ep.rollout.truncated.tolist() == [True] and ep.stats["turns"].tolist() == [2.0]
    engine = ScriptedEngine(tokenizer, [t, t, t])
    ep = run_episodes(engine, tokenizer, lambda: ScriptedEnv(), _rows(1), 1, SamplingParams(max_new_tokens=8), 3, 3)
    assert ep.rollout.completion_ids.shape[1] == 3 and ep.rollout.truncated.tolist() == [True]
    assert engine.calls[0][2].max_new_tokens == 3  # capped by the budget
    # row 0 stops after one turn, row 1 goes on: the second call decodes one history
    make = build_env(f"{ENVS}:CountdownEnv", {"turns": 2, "by_row": True})
    rows = [{**r, "a": i} for i, r in enumerate(_rows(2))]
    engine = ScriptedEngine(tokenizer, [t, t])
    ep = run_episodes(engine, tokenizer, make, rows, 1, SamplingParams(max_new_tokens=8), 2, 100)
    assert [len(c[0]) for c in engine.calls] == [2, 1]
    assert ep.stats["taken"].tolist() == [1.0, 2.0] and ep.env_rewards.tolist() == [0.25, 0.5]


def test_lockstep_dummy_call_when_this_rank_is_done(tokenizer):
    """When another rank still has running episodes, a rank whose episodes ended makes a one-token call per turn."""
    t = tokenizer("x", add_special_tokens=False)["input_ids"]
    engine = ScriptedEngine(tokenizer, [t] * 3)
    make = build_env("single_turn")
    ep = run_episodes(
        engine, tokenizer, make, _rows(1), 1, SamplingParams(max_new_tokens=8), 3, 100, any_running=lambda f: True
    )
    assert ep.engine_calls == 3 and [c[2].max_new_tokens for c in engine.calls] == [8, 1, 1]
    assert ep.stats["turns"].tolist() == [1.0]
    # a rank with no prompts at all (an uneven evaluation shard) takes part in the turns too
    engine = ScriptedEngine(tokenizer, [t] * 2)
    ep = run_episodes(engine, tokenizer, make, [], 1, SamplingParams(max_new_tokens=8), 2, 100, lambda f: True)
    assert ep.engine_calls == 2 and ep.rollout.completion_ids.shape[0] == 0 and ep.final_texts == []


def test_tool_env_runs_calls_and_reports(tokenizer):
    make = build_env("tools", {"examples": [{"role": "user", "content": "ex"}]}, ["calculator"])
    env = make()
    msgs = env.reset({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"}]})
    assert msgs[0]["role"] == "system" and msgs[0]["content"].startswith("Be brief.")
    assert "<calculator>" in msgs[0]["content"] and msgs[1:] == [{"role": "user", "content": "ex"}, msgs[-1]]
    assert env.stop_strings == ["</calculator>"]
    r = env.step("let me see <calculator>347*28</calculator>")
    assert (r.observation, r.done) == ("9716", False)
    r = env.step("<calculator>1/0</calculator>")
    assert r.observation.startswith("error:") and not r.done
    assert env.step("9716").done
    assert env.metrics() == {"called_tool": 1.0, "tool_calls": 2.0, "tool_errors": 1.0, "answered": 1.0}
    assert make().metrics()["called_tool"] == 0.0  # a fresh environment per episode


def test_env_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="env.name"):
        load_config(RECIPE, ["env.tools=[calculator]"])
    with pytest.raises(ConfigError, match="env.max_turns"):
        load_config(RECIPE, ["env.name=tools", "env.max_turns=0"])
    with pytest.raises(ValueError, match="did you mean `tools`"):
        build_env("tool")
    with pytest.raises(TypeError, match="env.kwargs"):
        build_env(f"{ENVS}:CountdownEnv", {"turnz": 2})


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "algorithm", ["grpo", "ppo", "grpo+dynamic_sampling"], ids=["grpo", "ppo", "grpo-dynamic-sampling"]
)
def test_trainer_multi_turn_token_in_token_out(algorithm, tiny_model_dir, tmp_path):
    """Three-turn episodes through the built-in engine: the trainer's recomputed log-probs of the sampled tokens equal
    the sampler's (mismatch ~0), observation tokens are in the episodes, env metrics are logged, eval runs episodes.
    With dynamic sampling, the per-episode numbers follow the rows it keeps."""
    from rlhf.trainer import Trainer

    out = tmp_path / "run"
    name, *dynamic = algorithm.split("+")
    over = [
        *tiny_run(tiny_model_dir, out),
        f"algorithm.name={name}",
        *(["algorithm.dynamic_sampling=true"] if dynamic else []),
        f"env.name={ENVS}:CountdownEnv",
        "env.max_turns=3",
        "env.max_tokens=80",
        "train.max_steps=2",
        "eval.every=2",
        "eval.num_samples=3",
    ]
    Trainer(load_config(RECIPE, over)).train()
    rows = _metrics(out)
    train = [r for r in rows if "loss/policy" in r]
    assert len(train) == 2
    for r in train:
        assert r["rollout/mismatch_abs_max"] < 1e-4
        assert r["env/turns"] == 3.0 and r["env/observation_tokens"] > 0 and r["env/taken"] == 3.0
        assert r["env/reward"] == pytest.approx(0.75)
    assert rows[0]["eval/env/turns"] == 3.0 and "eval/accuracy" in rows[-1]


def test_resume_in_the_middle_of_a_multi_turn_run(tiny_model_dir, tmp_path):
    """4 steps of multi-turn episodes == 2 steps, then a resume for the other 2 (same metrics row by row)."""
    from rlhf.trainer import Trainer
    from tests.test_resume import _assert_same_rows, _over

    env = [f"env.name={ENVS}:CountdownEnv", "env.kwargs={turns: 3, by_row: true}", "env.max_tokens=48"]
    full, part = tmp_path / "full", tmp_path / "part"
    Trainer(load_config(RECIPE, _over(tiny_model_dir, full, "train.max_steps=4", *env))).train()
    Trainer(load_config(RECIPE, _over(tiny_model_dir, part, "train.max_steps=2", *env))).train()
    Trainer(
        load_config(RECIPE, _over(tiny_model_dir, part, "train.max_steps=4", "train.resume_from=latest", *env))
    ).train()
    _assert_same_rows(full, part)
    turns = [r["env/turns"] for r in _metrics(full) if "env/turns" in r]
    assert max(turns) > 1.0 and min(turns) < 3.0  # multi-turn, and not every episode took the most turns


def test_tool_use_chart(tmp_path):
    from rlhf.plots import plot_run

    rows = [{"step": s, "env/called_tool": s / 10, "env/turns": 1 + s / 10} for s in range(1, 6)]
    rows += [{"step": 5, "eval/env/called_tool": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert tmp_path / "plots" / "tool_calls.png" in plot_run(tmp_path)


def test_evaluate_command_runs_the_recipes_episodes(tiny_model_dir, tmp_path):
    """`python -m rlhf.evaluate --recipe` scores the recipe's held-out prompts with its environment and tools."""
    from rlhf.evaluate import main

    out = tmp_path / "eval"
    recipe = REPO / "recipes" / "grpo_calculator_smollm2.yaml"
    args = ["--recipe", str(recipe), "--model", tiny_model_dir, "--dtype", "float32", "--limit", "3"]
    assert main([*args, "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["num_prompts"] == 3 and "with env tools" in results["dataset"]
    assert {"pass@1", "env/called_tool", "env/turns"} <= set(results["metrics"])
    sample = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert sample["prompt"].startswith("Compute ") and " * " in sample["prompt"]


def test_score_rollout_scores_the_last_turn_and_adds_the_environment_reward():
    """Reward functions see `completions` (the last turn) instead of the episode text; the environment's reward adds
    with its weight and is reported under its own name."""
    from types import SimpleNamespace

    from rlhf.config import RewardSpec
    from rlhf.rewards import build_reward_functions, score_rollout

    fns = build_reward_functions([RewardSpec(fn="reward_models.numeric:numeric_answer_reward", weight=2.0)])
    roll = SimpleNamespace(texts=["<calculator>2*3</calculator> 6 -> 7", "x"], lengths=torch.tensor([9, 1]))
    total, per_fn, _ = score_rollout(
        fns, ["q"], {"answer": ["6"]}, roll, 2, completions=["6", "5"], extra={"env": (torch.tensor([0.5, 1.0]), 0.1)}
    )
    assert per_fn["numeric_answer_reward"].tolist() == [1.0, 0.0]
    assert total.tolist() == pytest.approx([2.0 + 0.05, 0.1])
    assert per_fn["env"].tolist() == [0.5, 1.0]
