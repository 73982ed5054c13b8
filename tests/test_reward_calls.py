"""How reward functions are called: TRL's keyword contract, conversational datasets, return types, the start-up
signature check, hung functions, the all-None warning and plug-in metrics."""

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlhf.config import RewardSpec
from rlhf.rewards import (
    RewardError,
    as_text,
    build_reward_functions,
    check_reward_signatures,
    reward_metrics,
    score,
    score_rollout,
)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "reward_fixtures.py"


class FakeRollout:
    """Two prompts x two completions, right padded with 0."""

    texts = ["a" * 20, "bb", "ccc", "d" * 25]
    completion_ids = torch.tensor([[11, 12, 13], [21, 0, 0], [31, 32, 0], [41, 42, 43]])
    completion_mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
    lengths = completion_mask.sum(-1)


def _write(tmp_path, body: str) -> Path:
    f = tmp_path / f"rewards_{len(list(tmp_path.glob('rewards_*.py')))}.py"  # a new module per body
    f.write_text(body)
    return f


def _fns(tmp_path, body: str, *names: str, **spec):
    f = _write(tmp_path, body)
    return build_reward_functions([RewardSpec(fn=f"{f}:{name}", **spec) for name in names])


def test_trl_style_rewards_run_unchanged():
    fns = build_reward_functions(
        [RewardSpec(fn=f"{FIXTURES}:reward_len"), RewardSpec(fn=f"{FIXTURES}:reward_num_tokens", weight=0.5)]
    )
    check_reward_signatures(fns, ["answer"])
    total, per_fn, prompts = score_rollout(fns, ["p0", "p1"], {"answer": ["1", "2"]}, FakeRollout(), group_size=2)
    assert prompts == ["p0", "p0", "p1", "p1"]
    assert per_fn["reward_len"].tolist() == [0.0, -18.0, -17.0, -5.0]  # the completions, not the prompts
    assert per_fn["reward_num_tokens"].tolist() == [3.0, 1.0, 2.0, 3.0]  # padding removed
    assert total.tolist() == [1.5, -17.5, -16.0, -3.5]


def test_every_keyword_trl_passes_reaches_the_function(tmp_path):
    body = (
        "seen = {}\n"
        "def reward(prompts, completions, completion_ids, **kwargs):\n"
        "    seen.update(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)\n"
        "    return [0.0] * len(completions)\n"
    )
    fns = _fns(tmp_path, body, "reward")
    score_rollout(fns, ["p0", "p1"], {"answer": ["1", "2"]}, FakeRollout(), group_size=2)
    seen = sys.modules[fns[0].fn.__module__].seen
    assert seen == {
        "prompts": ["p0", "p0", "p1", "p1"],
        "completions": FakeRollout.texts,
        "completion_ids": [[11, 12, 13], [21], [31, 32], [41, 42, 43]],
        "answer": ["1", "1", "2", "2"],
        "completion_length": [3, 1, 2, 3],
    }
    assert all(type(i) is int for ids in seen["completion_ids"] for i in ids)


def test_functions_without_kwargs_get_only_what_they_name(tmp_path):
    body = (
        "def named(completions, answer):\n    return [float(c == a) for c, a in zip(completions, answer)]\n"
        "def old_names(p, c, **columns):\n    return [float(x == 'q' and 'answer' in columns) for x in p]\n"
        "def only_prompts(prompts, /, completions, scale=1.0):\n    return [scale * len(x) for x in prompts]\n"
        "def with_kw(completions, *, answer, bonus):\n    return [bonus] * len(completions)\n"
    )
    f = _write(tmp_path, body)
    specs = [RewardSpec(fn=f"{f}:{n}") for n in ("named", "old_names")]
    specs += [RewardSpec(fn=f"{f}:with_kw", kwargs={"bonus": 2})]
    fns = build_reward_functions(specs)
    check_reward_signatures(fns, ["answer", "level"])
    _, per_fn = score(fns, ["q", "r"], ["1", "x"], {"answer": ["1", "2"], "level": [1, 2]})
    assert per_fn["named"].tolist() == [1.0, 0.0]
    assert per_fn["old_names"].tolist() == [1.0, 0.0]  # today's positional form still works
    assert per_fn["with_kw"].tolist() == [2.0, 2.0]
    # a positional-only `prompts` cannot be passed by name: the check says so before any model loads
    (positional_only,) = build_reward_functions([RewardSpec(fn=f"{f}:only_prompts")])
    with pytest.raises(RewardError, match="needs argument `prompts`"):
        check_reward_signatures([positional_only], ["answer"])


def test_class_gets_kwargs_in_constructor_and_is_called_by_keyword(tmp_path):
    body = (
        "class Scorer:\n"
        "    def __init__(self, target):\n        self.target = target\n"
        "    def __call__(self, completions, completion_length):\n"
        "        return [float(n == self.target) for n in completion_length]\n"
    )
    fns = _fns(tmp_path, body, "Scorer", kwargs={"target": 2})
    check_reward_signatures(fns, [])
    total, _, _ = score_rollout(fns, ["p0", "p1"], {}, FakeRollout(), group_size=2)
    assert total.tolist() == [0.0, 0.0, 1.0, 0.0]


def test_conversational_dataset_gets_messages(tmp_path):
    body = (
        "seen = {}\n"
        "def record(prompts, completions, **kwargs):\n"
        "    seen.update(prompts=prompts, completions=completions)\n"
        "    return [0.0] * len(completions)\n"
        "def reward(prompts, completions, **kwargs):\n"
        "    return [float(len(c[0]['content']) < 5) for c in completions]\n"
        "def text_based(prompts, completions, **kwargs):\n"
        "    from rlhf.rewards import as_text\n"
        "    return [float(as_text(p).endswith('?') and as_text(c) == 'bb') for p, c in zip(prompts, completions)]\n"
    )
    record, reward, text_based = _fns(tmp_path, body, "record", "reward", "text_based")
    seen = sys.modules[record.fn.__module__].seen
    messages = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "First?"}],
        [{"role": "user", "content": "Second?"}],
    ]
    fns = [record, reward, text_based]
    _, per_fn, prompts = score_rollout(
        fns, ["First?", "Second?"], {}, FakeRollout(), group_size=2, prompt_messages=messages
    )
    assert seen["prompts"] == [messages[0], messages[0], messages[1], messages[1]]
    assert seen["completions"] == [[{"role": "assistant", "content": t}] for t in FakeRollout.texts]
    assert per_fn["reward"].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert per_fn["text_based"].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert prompts == ["First?", "First?", "Second?", "Second?"]  # texts for logging stay plain
    # a plain-text dataset: strings
    _, per_fn, _ = score_rollout([record, text_based], ["p0?", "p1"], {}, FakeRollout(), group_size=2)
    assert seen["prompts"] == ["p0?", "p0?", "p1", "p1"] and seen["completions"] == FakeRollout.texts
    assert per_fn["text_based"].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert as_text("x") == "x" and as_text([{"role": "assistant", "content": "y"}]) == "y"


CONVERSATIONS = [
    [{"role": "system", "content": "Answer with a number."}, {"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "user", "content": "What is 4 + 4?"}],
]


def _chat_file(path: Path, rows: list[dict]) -> Path:
    """A conversational JSONL file: the prompt column holds chat messages."""
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


class AnswerRollout(FakeRollout):
    texts = ["5", "The answer is 5.", "7", "\\boxed{8}"]


def test_conversational_prompt_set_reaches_trl_style_rewards(tmp_path, tokenizer):
    """A conversational JSONL file through build_prompt_set and score_rollout, as the trainer calls it: a reward
    written for TRL's conversational format reads the messages, and the built-in rewards score the text inside."""
    from rlhf.data import build_prompt_set, load_rows

    body = (
        "seen = {}\n"
        "def trl_reward(prompts, completions, **kwargs):\n"
        "    seen.update(prompts=prompts, completions=completions)\n"
        "    return [float(prompts[i][-1]['content'].endswith('4?') and len(completions[i][0]['content']) > 3)\n"
        "            for i in range(len(completions))]\n"
        "def record(prompts, completions, **kwargs):\n"
        "    seen.update(prompts=prompts, completions=completions)\n"
        "    return [0.0] * len(completions)\n"
    )
    fns = _fns(tmp_path, body, "trl_reward") + build_reward_functions(
        [
            RewardSpec(fn="reward_models.numeric:numeric_answer_reward"),
            RewardSpec(fn="reward_models.math:math_correctness"),
        ]
    )
    seen = sys.modules[fns[0].fn.__module__].seen
    rows = [{"prompt": CONVERSATIONS[0], "answer": "5"}, {"prompt": CONVERSATIONS[1], "answer": "8"}]
    ps = build_prompt_set(load_rows(str(_chat_file(tmp_path / "chat.jsonl", rows))), tokenizer)
    check_reward_signatures(fns, list(ps.columns))
    total, per_fn, prompts = score_rollout(
        fns, ps.texts, ps.columns, AnswerRollout(), 2, prompt_messages=ps.prompt_messages
    )
    assert seen["prompts"] == [CONVERSATIONS[0]] * 2 + [CONVERSATIONS[1]] * 2
    assert seen["completions"] == [[{"role": "assistant", "content": t}] for t in AnswerRollout.texts]
    assert per_fn["trl_reward"].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert per_fn["numeric_answer_reward"].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert per_fn["math_correctness"].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert total.tolist() == [2.0, 2.0, 0.0, 3.0]
    assert prompts == ["What is 2 + 3?"] * 2 + ["What is 4 + 4?"] * 2  # the texts the logs show
    # a plain-text prompt set: prompt_messages holds None for each prompt, and the rewards get strings
    text = build_prompt_set([{"prompt": "What is 2 + 3?", "answer": "5"}], tokenizer)
    record = _fns(tmp_path, body, "record")
    score_rollout(record, text.texts, text.columns, FakeRollout(), 4, prompt_messages=text.prompt_messages)
    seen = sys.modules[record[0].fn.__module__].seen
    assert seen["prompts"] == ["What is 2 + 3?"] * 4 and seen["completions"] == FakeRollout.texts


def test_training_on_a_conversational_file_passes_message_lists(tiny_model_dir, tmp_path):
    """A short run on a local conversational file: every reward call, in training steps and in the greedy
    evaluation, gets the prompts and completions as message lists."""
    from conftest import tiny_run

    from rlhf.config import load_config
    from rlhf.trainer import Trainer

    system = CONVERSATIONS[0][0]
    rows = [{"prompt": [system, {"role": "user", "content": f"What is {i} + 3?"}], "answer": i + 3} for i in range(8)]
    data = _chat_file(tmp_path / "chat.jsonl", rows)
    rewards = _write(
        tmp_path,
        "calls = []\n"
        "def conversational_reward(prompts, completions, answer, **kwargs):\n"
        "    assert all(isinstance(p, list) and p[-1]['role'] == 'user' for p in prompts), prompts\n"
        "    assert all(isinstance(c, list) and c[0]['role'] == 'assistant' for c in completions), completions\n"
        "    calls.append((prompts, completions, answer))\n"
        "    return [len(c[0]['content']) / 10.0 for c in completions]\n",
    )
    out = tmp_path / "run"
    over = [
        *tiny_run(tiny_model_dir, out),
        f"data.path={data}",
        "train.max_steps=2",
        "eval.every=2",
        "eval.num_samples=2",
        "eval.max_new_tokens=4",
        f"rewards=[{{fn: '{rewards}:conversational_reward'}}, {{fn: 'reward_models.numeric:numeric_answer_reward'}}]",
    ]
    trainer = Trainer(load_config(REPO / "recipes" / "grpo_arithmetic_smollm2.yaml", over))
    assert trainer.train_set.prompt_messages and all(m is not None for m in trainer.train_set.prompt_messages)
    trainer.train()
    calls = sys.modules[trainer.reward_fns[0].fn.__module__].calls
    sizes = [len(c[1]) for c in calls]
    assert sizes.count(8) == 2 and 2 in sizes, sizes  # two steps of 2 prompts x 4 completions; the evaluation of 2
    for prompts, _, answer in calls:
        for p, a in zip(prompts, answer):
            assert p[0] == system and p[-1]["content"] == f"What is {a - 3} + 3?"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss/policy" in r] == [1, 2]


@pytest.mark.parametrize(
    "ret",
    [
        "np.array([1, 0, 2], dtype=np.int64)",
        "np.array([1.0, 0.0, 2.0], dtype=np.float32)",
        "[np.float32(1), np.int8(0), np.float64(2)]",
        "torch.tensor([1.0, 0.0, 2.0])",
        "[torch.tensor(1.0), torch.tensor(0), 2]",
        "[True, False, 2]",
        "[np.bool_(True), np.bool_(False), np.uint8(2)]",
    ],
)
def test_numeric_return_types(tmp_path, ret):
    body = f"import numpy as np\nimport torch\ndef reward(completions, **kw):\n    return {ret}\n"
    fns = _fns(tmp_path, body, "reward")
    total, per_fn = score(fns, ["a", "b", "c"], ["x", "y", "z"], {})
    assert total.tolist() == [1.0, 0.0, 2.0] and total.dtype == torch.float32
    assert all(type(v) is float for v in fns[0](["a", "b", "c"], ["x", "y", "z"], {}))


def test_none_values_and_bad_arrays(tmp_path):
    body = (
        "import numpy as np\n"
        "def some_none(completions, **kw):\n    return np.array([1.5, None], dtype=object)\n"
        "def matrix(completions, **kw):\n    return np.ones((len(completions), 1))\n"
    )
    fns = _fns(tmp_path, body, "some_none")
    _, per_fn = score(fns, ["a", "b"], ["x", "y"], {})
    assert per_fn["some_none"][0].item() == 1.5 and torch.isnan(per_fn["some_none"][1])
    fns = _fns(tmp_path, body, "matrix", on_error="zero")
    with pytest.raises(RewardError, match=r"returned an array of shape \(2, 1\) for 2 completions"):
        score(fns, ["a", "b"], ["x", "y"], {})


def test_signature_check_names_the_missing_argument_and_the_columns(tmp_path):
    body = "def f(completions, solution, **kwargs):\n    return [0.0] * len(completions)\n"
    fns = _fns(tmp_path, body, "f")
    msg = (
        "reward `f` needs argument `solution`, but the dataset has columns: answer, question; "
        "rename a column with data.rename_columns or give it in kwargs"
    )
    with pytest.raises(RewardError) as e:
        check_reward_signatures(fns, ["question", "answer"])
    assert str(e.value) == msg
    check_reward_signatures(fns, ["question", "solution"])  # a column fills it
    check_reward_signatures(_fns(tmp_path, body, "f", kwargs={"solution": "42"}), ["answer"])  # so does a kwarg
    # the same error at call time, whatever on_error says: it is a recipe mistake, not a bad row
    fns = _fns(tmp_path, body, "f", on_error="zero")
    with pytest.raises(RewardError, match="needs argument `solution`"):
        score(fns, ["p"], ["c"], {"answer": ["1"]})
    # several missing, no columns at all
    fns = _fns(tmp_path, "def f(completions, a, b):\n    return [0.0]\n", "f")
    with pytest.raises(RewardError, match="needs arguments `a`, `b`, but the dataset has columns: \\(none\\)"):
        check_reward_signatures(fns, [])


def test_signature_check_kwargs_and_reserved_columns(tmp_path):
    body = "def f(completions, answer):\n    return [0.0] * len(completions)\n"
    fns = _fns(tmp_path, body, "f", kwargs={"scale": 2})
    with pytest.raises(RewardError, match="reward `f` is given kwargs `scale` in its recipe entry, but has no param"):
        check_reward_signatures(fns, ["answer"])
    with pytest.raises(RewardError, match="columns named completion_ids, completions, .*rename them"):
        check_reward_signatures(_fns(tmp_path, body, "f"), ["answer", "completions", "completion_ids"])


@pytest.mark.parametrize("on_error", ["raise", "zero"])
def test_hung_reward_does_not_keep_the_process_alive(on_error):
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "hung_reward_worker.py"), on_error],
        capture_output=True,
        text=True,
        timeout=30,  # a process held open by the abandoned call fails here
        cwd=REPO,
    )
    elapsed = time.perf_counter() - start
    if on_error == "raise":
        assert proc.returncode == 2, proc.stderr
        assert "error: reward function 'hung_reward' failed on the batch of 4 rows" in proc.stderr
        assert "timeout of 1s (rewards[].timeout)" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert "total [0.0, 0.0, 0.0, 0.0] errors 8" in proc.stdout
        assert "2 of its calls still running in the background" in proc.stderr
    assert elapsed < 30


def test_all_none_warns_once_per_function(tmp_path, caplog):
    body = (
        "def never(completions, **kw):\n    return [None] * len(completions)\n"
        "def sometimes(completions, **kw):\n    return [None] * (len(completions) - 1) + [1.0]\n"
    )
    fns = _fns(tmp_path, body, "never", "sometimes")
    with caplog.at_level(logging.WARNING, logger="rlhf"):
        for _ in range(3):
            total, per_fn = score(fns, ["a", "b"], ["x", "y"], {"answer": ["1", "2"]})
    warnings = [r.getMessage() for r in caplog.records if "None for every row" in r.getMessage()]
    assert len(warnings) == 1 and "'never'" in warnings[0] and "answer" in warnings[0]
    assert total.tolist() == [0.0, 1.0] and torch.isnan(per_fn["never"]).all()


def test_reward_metrics_from_plugins(tmp_path, caplog):
    body = (
        "import numpy as np\n"
        "class Judge:\n"
        "    def __init__(self):\n        self.calls = 0\n"
        "    def __call__(self, completions, **kw):\n"
        "        self.calls += 1\n        return [0.0] * len(completions)\n"
        "    def metrics(self):\n        return {'calls': self.calls, 'cache_hit_rate': np.float32(0.5)}\n"
        "def plain(completions, **kw):\n    return [0.0] * len(completions)\n"
        "def broken(completions, **kw):\n    return [0.0] * len(completions)\n"
        "def _boom():\n    raise ConnectionError('stats endpoint down')\n"
        "broken.metrics = _boom\n"
    )
    fns = _fns(tmp_path, body, "Judge", "plain", "broken")
    score(fns, ["a"], ["x"], {})
    score(fns, ["a"], ["x"], {})
    with caplog.at_level(logging.WARNING, logger="rlhf"):
        assert reward_metrics(fns) == {"reward/Judge/calls": 2.0, "reward/Judge/cache_hit_rate": 0.5}
        assert reward_metrics(fns) == {"reward/Judge/calls": 2.0, "reward/Judge/cache_hit_rate": 0.5}
    warnings = [r.getMessage() for r in caplog.records if "metrics()" in r.getMessage()]
    assert len(warnings) == 1 and "'broken'" in warnings[0] and "stats endpoint down" in warnings[0]
