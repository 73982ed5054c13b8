"""`env.factory`: TRL-style environment classes used unchanged. The tool schema the model sees (in the system prompt
with the tag format, or through a chat template's `tools=`), typed arguments, bad calls as `error:` observations,
get_reward, close() once per instance, `environments=` for reward functions, a mapping chosen per row by the
`environment` column, errors at load, and the README's class training on the tiny model."""

import copy
import json
import shlex
from pathlib import Path
from typing import Literal

import pytest

from rlhf.config import ConfigError, RewardSpec, load_config
from rlhf.envs import build_env
from rlhf.rewards import RewardError, build_reward_functions, check_reward_signatures, score_rollout
from rlhf.rollout import SamplingParams
from rlhf.rollout.episodes import run_episodes
from rlhf.tools import ToolError
from rlhf.tools.typed import convert
from tests import factory_env_fixtures as fixtures
from tests.conftest import tiny_run
from tests.test_episodes import ScriptedEngine

REPO = Path(__file__).resolve().parents[1]
FIX = "tests.factory_env_fixtures"  # the module `fixtures` is, so the test sees what the classes record
RECIPE = REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"

# what transformers' get_json_schema makes of CountingEnv.add, written out by hand
ADD_SCHEMA = {
    "name": "add",
    "description": "Add two integers.",
    "parameters": {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "description": "The first integer."},
            "b": {"type": "integer", "description": "The second integer."},
        },
        "required": ["a", "b"],
    },
    "return": {"type": "integer"},
}
# a chat template with tool support in the Hermes style (as Qwen2.5's): schemas in a <tools> block, a `tool` role
TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nYou may call functions:\n<tools>\n{%- for t in tools %}\n{{ t | tojson }}"
    "{%- endfor %}\n</tools><|im_end|>\n{% endif %}{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "<|im_end|>\n{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _row(i: int) -> dict:
    return {"answer": str(i), "prompt": f"question {i}", "messages": [{"role": "user", "content": f"question {i}"}]}


@pytest.fixture(autouse=True)
def _clear():
    fixtures.CLOSED.clear()
    fixtures.RESETS.clear()
    fixtures.SEEN.clear()


def test_tag_format_schema_in_the_prompt_typed_calls_reward_close_and_environments(tokenizer):
    """SmolLM2's template has no tool support: each tool's JSON schema is in the system prompt with the tag format.
    Arguments are converted by type ("3" -> 3), an async tool runs, get_reward adds, environments reach a reward
    function, every instance is closed once after scoring."""
    maker = build_env(None, factory=f"{FIX}:CountingEnv", tokenizer=tokenizer, columns=[{"answer": ["1"]}])
    assert not maker.in_template and maker.stop_strings == ["</add>", "</fail>", "</shout>"]
    probe = list(fixtures.CLOSED)
    assert len(probe) == 1  # the instance probed at build time is closed too
    script = ['<add>{"a": 2, "b": "3"}</add>', '<shout>{"text": "hi", "times": 2}</shout>', "It is 5."]
    engine = ScriptedEngine(tokenizer, [_ids(tokenizer, s) for s in script])
    ep = run_episodes(engine, tokenizer, maker, [_row(7)], 2, SamplingParams(max_new_tokens=32), 3, 200)

    first = tokenizer.decode(engine.calls[0][0][0])
    assert json.dumps(ADD_SCHEMA) in first  # the schema the model saw
    assert '<add>{"a": 1, "b": 1}</add>' in first  # the example call
    assert "<|im_start|>user\nquestion 7 Use the tools.<|im_end|>" in first  # reset's string appended to the prompt
    assert fixtures.RESETS == [{"answer": "7", "prompt": "question 7"}] * 2  # one reset per episode, no `messages`
    assert "<|im_start|>user\n5<|im_end|>" in tokenizer.decode(engine.calls[1][0][0])
    assert "<|im_start|>user\nHI HI<|im_end|>" in tokenizer.decode(engine.calls[2][0][0])
    assert ep.env_rewards.tolist() == [2.0, 2.0]  # get_reward: two calls each
    assert ep.stats["tool_calls"].tolist() == [2.0, 2.0] and ep.stats["answered"].tolist() == [1.0, 1.0]

    fns = build_reward_functions([RewardSpec(fn=f"{FIX}:calls_reward")])
    check_reward_signatures(fns, ["answer"], environments=True)
    total, per_fn, _ = score_rollout(fns, ["question 7"], {"answer": ["7"]}, ep.rollout, 2, **ep.scoring(0.5))
    assert per_fn["calls_reward"].tolist() == [2.0, 2.0] and per_fn["env"].tolist() == [2.0, 2.0]
    assert total.tolist() == [3.0, 3.0]  # 2 + 0.5 * 2
    instances = [e.unwrapped for e in ep.envs]
    assert fixtures.CLOSED == probe  # not before scoring
    ep.close()
    ep.close()
    assert fixtures.CLOSED == probe + [id(i) for i in instances]  # once each


def test_bad_calls_become_error_observations(tokenizer):
    maker = build_env(None, factory=f"{FIX}:CountingEnv", tokenizer=tokenizer)
    env = maker()
    env.reset(_row(1))
    calls = [
        '<add>{"a": 1}</add>',
        '<add>{"a": 1, "b": 2, "c": 3}</add>',
        '<add>{"a": "x", "b": 1}</add>',
        "<fail></fail>",
        '<add>{"a": 2.0, "b": "4"}</add>',
        "<add>not json</add>",
        "<shout>hey</shout>",  # one required argument: the value alone
    ]
    result = env.step(" ".join(calls))
    assert not result.done and result.observation.split("\n") == [
        "error: add is missing the argument 'b'",
        "error: add has no argument 'c'; its arguments are a, b",
        "error: add: argument 'a' must be an integer, got str \"x\"",
        "error: fail failed: ValueError: boom",
        "6",
        'error: add takes a JSON object of arguments {"a": 1, "b": 1}, got \'not json\'',
        "HEY",
    ]
    assert env.metrics()["tool_errors"] == 5.0 and env.metrics()["tool_calls"] == 7.0
    assert env.step("the answer is 6").done
    env.close()


def test_template_with_tool_support_gets_the_schemas_and_tool_messages(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = TOOLS_TEMPLATE
    maker = build_env(None, factory=f"{FIX}:CountingEnv", tokenizer=tok)
    assert maker.in_template and maker.style == "json" and maker.observation_role == "tool"
    assert maker.stop_strings == ["</tool_call>"]
    script = [
        '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>',
        '<tool_call>{"name": "nope", "arguments": {}}</tool_call>',
        "5",
    ]
    engine = ScriptedEngine(tok, [_ids(tok, s) for s in script])
    ep = run_episodes(engine, tok, maker, [_row(3)], 1, SamplingParams(max_new_tokens=40), 3, 300)
    first = tok.decode(engine.calls[0][0][0])
    assert "<tools>" in first and json.dumps({"type": "function", "function": ADD_SCHEMA}) in first
    assert "You can use these tools" not in first  # not described twice
    assert "<|im_start|>tool\n5<|im_end|>" in tok.decode(engine.calls[1][0][0])
    third = tok.decode(engine.calls[2][0][0])
    assert "<|im_start|>tool\nerror: unknown tool 'nope'; the tools are: add, fail, shout<|im_end|>" in third
    assert ep.env_rewards.tolist() == [1.0]
    ep.close()


def test_mapping_picks_the_environment_per_row(tokenizer):
    """Each row's prompt shows only its environment's tools; reset does not get the `environment` column."""
    factory = {"game": f"{FIX}:GameEnv", "coding": f"{FIX}:CodingEnv"}
    maker = build_env(None, factory=factory, tokenizer=tokenizer, columns=[{"environment": ["game", "coding"]}])
    assert maker.stop_strings == ["</move>", "</run_code>"]
    rows = [{**_row(0), "environment": "game"}, {**_row(1), "environment": "coding"}]
    engine = ScriptedEngine(tokenizer, [_ids(tokenizer, "<move>up</move>"), _ids(tokenizer, "done")])
    ep = run_episodes(engine, tokenizer, maker, rows, 2, SamplingParams(max_new_tokens=16), 2, 200)
    game, coding = (tokenizer.decode(p) for p in engine.calls[0][0])
    assert '"name": "move"' in game and "run_code" not in game
    assert '"name": "run_code"' in coding and '"name": "move"' not in coding
    assert "question 1 (coding)<|im_end|>" in coding
    assert all("environment" not in r for r in fixtures.RESETS) and len(fixtures.RESETS) == 4
    assert [type(e.unwrapped).__name__ for e in ep.envs] == ["GameEnv", "GameEnv", "CodingEnv", "CodingEnv"]
    assert ep.env_rewards.tolist() == [10.0, 10.0, 0.0, 0.0]  # the game's get_reward; `move` is no coding tool
    assert len(engine.calls[1][0]) == 2  # the coding episodes answered in turn 1
    with pytest.raises(ValueError, match="needs an `environment` column"):
        maker.check_columns({"answer": ["1"]})
    with pytest.raises(ValueError, match="'chess', not in env.factory"):
        maker.check_columns({"environment": ["game", "chess"]})


def test_trainer_with_a_mapping_over_a_local_file(tiny_model_dir, tmp_path):
    """A run on a JSON-lines file whose `environment` column picks GameEnv or CodingEnv per row: trains a step, with
    evaluation, and reward functions see the instances; a row naming no known environment stops it before the model
    loads."""
    from rlhf.trainer import Trainer

    rows = [{"prompt": f"Task {i}.", "answer": str(i), "environment": ["game", "coding"][i % 2]} for i in range(8)]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    over = [
        *tiny_run(tiny_model_dir, out),
        f"data.path={data}",
        "eval.num_samples=2",
        f"env.factory={{game: '{FIX}:GameEnv', coding: '{FIX}:CodingEnv'}}",
        "env.max_turns=2",
        "env.max_tokens=24",
        "train.max_steps=1",
        "eval.every=1",
        f"rewards=[{{fn: '{FIX}:calls_or_moves'}}]",
    ]
    Trainer(load_config(RECIPE, over)).train()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/policy" in r for r in metrics) and any("eval/env/turns" in r for r in metrics)
    assert {"GameEnv", "CodingEnv"} <= set(fixtures.SEEN)  # both classes reached the reward function
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({**r, "environment": "chess"}) + "\n" for r in rows))
    with pytest.raises(ValueError, match="'chess', not in env.factory"):
        Trainer(load_config(RECIPE, [*over, f"data.path={bad}", f"output_dir={tmp_path / 'bad'}"]))


def test_errors_at_load(tokenizer):
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        build_env(None, factory="no_such_module_xyz:Env", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="has no attribute 'Missing'"):
        build_env(None, factory=f"{FIX}:Missing", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="has no tools"):
        build_env(None, factory=f"{FIX}:NoToolsEnv", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="UndocumentedEnv.look: cannot describe it as a tool"):
        build_env(None, factory=f"{FIX}:UndocumentedEnv", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="reset\\(\\) needs 'answer'"):
        build_env(None, factory=f"{FIX}:CountingEnv", tokenizer=tokenizer, columns=[{"question": ["q"]}])
    with pytest.raises(TypeError, match="env.kwargs"):
        build_env(None, {"size": 3}, factory=f"{FIX}:CountingEnv", tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="leave env.name and env.tools unset"):
        load_config(RECIPE, [f"env.factory={FIX}:CountingEnv", "env.tools=[calculator]"])
    with pytest.raises(ConfigError, match="env.factory 'CountingEnv'"):
        load_config(RECIPE, ["env.factory=CountingEnv"])
    fns = build_reward_functions([RewardSpec(fn=f"{FIX}:calls_reward")])
    with pytest.raises(RewardError, match="`environments`"):
        check_reward_signatures(fns, ["answer"])  # a single-turn run has no environments to pass


def test_arguments_are_converted_by_type():
    assert convert("3", int, "x") == 3 and convert(2.0, int, "x") == 2 and convert(2, float, "x") == 2.0
    assert convert("true", bool, "x") is True and convert(7, str, "x") == "7"
    assert convert("[1, 2]", list[int], "x") == [1, 2] and convert(None, int | None, "x") is None
    assert convert("b", Literal["a", "b"], "x") == "b" and convert({"k": "1"}, dict[str, int], "x") == {"k": 1}
    for value, hint in [(2.5, int), ("two", int), (True, int), ("yes", bool), ([1], str), ("c", Literal["a", "b"])]:
        with pytest.raises(ToolError, match="x"):
            convert(value, hint, "x")


def test_readme_class_schema_and_calls(tokenizer):
    """The README's CalculatorEnv as the model sees it: both tools' schemas in the prompt, a call answered."""
    multiply = {
        "name": "multiply",
        "description": "Multiply two numbers.",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "number", "description": "The first number."},
                "b": {"type": "number", "description": "The second number."},
            },
            "required": ["a", "b"],
        },
        "return": {"type": "number"},
    }
    maker = build_env(None, factory=f"{REPO}/examples/trl_calculator_env.py:CalculatorEnv", tokenizer=tokenizer)
    script = ['<multiply>{"a": 12, "b": 3}</multiply>', "36"]
    engine = ScriptedEngine(tokenizer, [_ids(tokenizer, s) for s in script])
    ep = run_episodes(engine, tokenizer, maker, [_row(1)], 1, SamplingParams(max_new_tokens=32), 3, 200)
    first = tokenizer.decode(engine.calls[0][0][0])
    assert json.dumps(multiply) in first and json.dumps({**multiply, "name": "add"}).replace("Multiply", "Add") in first
    assert "<|im_start|>user\n36.0<|im_end|>" in tokenizer.decode(engine.calls[1][0][0])
    assert ep.envs[0].unwrapped.calls == 1 and ep.stats["answered"].tolist() == [1.0]
    ep.close()


def _readme_section() -> str:
    """The README's first two ways (a TRL class, an rlhf.envs class); the agent subsection is tested elsewhere."""
    text = (REPO / "README.md").read_text()
    start = text.index("## Bring your own environment or agent")
    return text[start : text.index("### An agent program over the OpenAI-compatible endpoint", start)]


def _commands(section: str) -> list[list[str]]:
    """The `python -m rlhf.train ...` commands of the section's bash blocks, as argument lists."""
    out = []
    for block in section.split("```bash\n")[1:]:
        command = block.split("```", 1)[0].replace("\\\n", " ")
        args = shlex.split(command)
        out.append(args[args.index("rlhf.train") + 1 :])
    return out


def test_readme_examples_are_the_files_and_train(tiny_model_dir, tmp_path, monkeypatch):
    """The README shows examples/trl_calculator_env.py and examples/retry_env.py verbatim, and its commands train
    on the tiny model: the TRL class unchanged through env.factory (2 steps), the rlhf.envs class (1 step)."""
    from rlhf.trainer import Trainer

    section = _readme_section()
    for example in ("trl_calculator_env.py", "retry_env.py"):
        assert (REPO / "examples" / example).read_text() in section
    commands = _commands(section)
    assert len(commands) == 2 and any("env.factory=examples/trl_calculator_env.py:CalculatorEnv" in c for c in commands)
    monkeypatch.chdir(REPO)
    for n, (recipe, *over) in enumerate(commands):
        out = tmp_path / f"run{n}"
        steps = 2 if n == 0 else 1
        Trainer(load_config(recipe, [*over, *tiny_run(tiny_model_dir, out), f"train.max_steps={steps}"])).train()
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in rows if "loss/policy" in r]
        assert len(train) == steps and all("env/turns" in r for r in train)
        if n == 0:
            assert all({"env/called_tool", "env/tool_errors"} <= set(r) for r in train)
