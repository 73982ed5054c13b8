import time

import pytest
import torch

from rlhf.config import RewardSpec
from rlhf.rewards import RewardError, build_reward_functions, import_object, score


def _fns(tmp_path, body: str, **spec):
    f = tmp_path / "my_rewards.py"
    f.write_text(body)
    return build_reward_functions([RewardSpec(fn=f"{f}:reward", **spec)])


def test_import_by_module_and_file(tmp_path):
    assert import_object("reward_models.numeric:numeric_answer_reward").__name__ == "numeric_answer_reward"
    with pytest.raises(RewardError, match="has no attribute 'nope'"):
        import_object("reward_models.numeric:nope")
    with pytest.raises(RewardError, match="file 'missing.py' not found"):
        import_object("missing.py:f")


def test_weighted_sum_none_and_kwargs(tmp_path):
    f = tmp_path / "r.py"
    f.write_text(
        "def length(prompts, completions, scale=1.0, **kw):\n    return [len(c) * scale for c in completions]\n"
        "def only_first(prompts, completions, **kw):\n    return [1.0] + [None] * (len(completions) - 1)\n"
        "class Const:\n    def __init__(self, value):\n        self.value = value\n"
        "    def __call__(self, prompts, completions, **kw):\n        return [self.value] * len(completions)\n"
    )
    fns = build_reward_functions(
        [
            RewardSpec(fn=f"{f}:length", weight=0.5, kwargs={"scale": 2.0}),
            RewardSpec(fn=f"{f}:only_first", weight=3.0),
            RewardSpec(fn=f"{f}:Const", weight=1.0, kwargs={"value": -1.0}),
        ]
    )
    total, per_fn = score(fns, ["p", "q"], ["ab", "abcd"], {"answer": ["1", "2"]})
    # row 0: 0.5 * (2 * 2) + 3 * 1 - 1 = 4;  row 1: 0.5 * (4 * 2) + (None -> 0) - 1 = 3
    torch.testing.assert_close(total, torch.tensor([4.0, 3.0]))
    assert torch.isnan(per_fn["only_first"][1]) and per_fn["Const"].tolist() == [-1.0, -1.0]


def test_columns_reach_the_function(tmp_path):
    fns = _fns(
        tmp_path,
        "def reward(prompts, completions, answer, level, **kw):\n"
        "    return [float(c == a) + l for c, a, l in zip(completions, answer, level)]\n",
    )
    total, _ = score(fns, ["p", "q"], ["1", "3"], {"answer": ["1", "2"], "level": [10, 20]})
    assert total.tolist() == [11.0, 20.0]


def test_raising_function_names_function_row_and_exception(tmp_path):
    body = "def reward(prompts, completions, **kw):\n    return [1.0 / (len(c) - 3) for c in completions]\n"
    fns = _fns(tmp_path, body)
    with pytest.raises(RewardError, match=r"'reward' failed on row 1 .*ZeroDivisionError.*on_error: zero"):
        score(fns, ["a", "b", "c"], ["xxxxx", "xxx", "xxxxxx"], {})
    fns = _fns(tmp_path, body, on_error="zero")
    total, _ = score(fns, ["a", "b", "c"], ["xxxxx", "xxx", "xxxxxx"], {})
    assert total.tolist() == [0.5, 0.0, pytest.approx(1 / 3)] and fns[0].errors == 1


def test_hanging_function_times_out(tmp_path):
    body = (
        "import time\n"
        "def reward(prompts, completions, **kw):\n    time.sleep(30)\n    return [1.0] * len(completions)\n"
    )
    fns = _fns(tmp_path, body, timeout=0.5)
    start = time.perf_counter()
    with pytest.raises(RewardError, match="timeout of 0.5s"):
        score(fns, ["a"], ["b"], {})
    assert time.perf_counter() - start < 5
    fns = _fns(tmp_path, body, timeout=0.5, on_error="zero")
    total, _ = score(fns, ["a", "b"], ["b", "c"], {})
    assert total.tolist() == [0.0, 0.0] and fns[0].errors == 2


@pytest.mark.parametrize(
    "ret, msg",
    [
        ("[float('nan')] * len(completions)", "must be finite"),
        ("[1.0]", "returned 1 values for 2 completions"),
        ("['1'] * len(completions)", "return a float or None"),
        ("None", "returned NoneType for 2 completions"),
    ],
)
def test_bad_return_values(tmp_path, ret, msg):
    fns = _fns(tmp_path, f"def reward(prompts, completions, **kw):\n    return {ret}\n", on_error="zero")
    with pytest.raises(RewardError, match=msg):
        score(fns, ["a", "b"], ["x", "y"], {})


def test_numeric_answer_reward():
    from reward_models.numeric import numeric_answer_reward

    completions = ["57", "The answer is 57.", "12 + 45 = 57", "\\boxed{57}", "#### 57", "56", "", "1,057", "57/1"]
    got = numeric_answer_reward([""] * len(completions), completions, answer=["57"] * len(completions))
    assert got == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert numeric_answer_reward(["q"], ["so 1,234 total"], answer=["He has ... #### 1234"]) == [1.0]


def _assistant(texts: list[str]) -> list[list[dict]]:
    return [[{"role": "assistant", "content": t}] for t in texts]


def test_builtin_rewards_read_message_list_completions():
    """From a conversational dataset each completion is [{"role": "assistant", "content": text}] and each prompt a
    message list: the built-in rewards score the text inside, as for a plain-text dataset."""
    from reward_models.math import format_reward, math_correctness
    from reward_models.numeric import numeric_answer_reward
    from reward_models.shaping import length_penalty, overlong_penalty

    prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 + 45?"}]] * 4
    texts = ["The answer is 57.", "\\boxed{57}", "56", "#### 57"]
    completions = _assistant(texts)
    gold = ["57"] * 4
    assert numeric_answer_reward(prompts, completions, answer=gold) == [1.0, 1.0, 0.0, 1.0]
    assert numeric_answer_reward(prompts, completions, answer=gold) == numeric_answer_reward(prompts, texts, gold)
    assert math_correctness(prompts, completions, answer=gold) == [1.0, 1.0, 0.0, 1.0]
    assert math_correctness(prompts, _assistant(["So $\\frac{1}{2}$."]), answer=["0.5"]) == [1.0]
    assert math_correctness(prompts[:1], _assistant(["57"]), answer=["57"], mode="strict") == [0.0]
    assert format_reward(prompts, completions) == [0.0, 1.0, 0.0, 0.0] == format_reward(prompts, texts)
    lengths = [3, 12, 14, 20]
    overlong = overlong_penalty(prompts, completions, completion_length=lengths, max_tokens=16, buffer=4)
    assert overlong == [0.0, 0.0, -0.5, -1.0]
    assert length_penalty(prompts, completions, completion_length=lengths, target=10) == [0.0, -0.2, -0.4, -1.0]


def test_reward_model_reads_conversations_as_the_policy_saw_them(tokenizer):
    """The learned reward model's input from a conversational dataset: the whole prompt conversation (a system
    message included) and the completion as the assistant turn, the same tokens as the text form gives."""
    from reward_models.reward_model import encode_pair

    user = [{"role": "user", "content": "What is 2 + 3?"}]
    assert encode_pair(tokenizer, user, _assistant(["5"])[0]) == encode_pair(tokenizer, "What is 2 + 3?", "5")
    system = [{"role": "system", "content": "Answer with a number."}, *user]
    text = tokenizer.decode(encode_pair(tokenizer, system, _assistant(["5"])[0]))
    assert "Answer with a number." in text and "What is 2 + 3?" in text and text.rstrip().endswith("5<|im_end|>")


def test_dapo_overlong_and_length_penalties():
    from reward_models.shaping import length_penalty, overlong_penalty

    # max 16, buffer 4: <= 12 tokens -> 0; 14 -> (12 - 14) / 4 = -0.5; 16 -> -1; 20 -> -1 (beyond the limit)
    got = overlong_penalty([""] * 5, [""] * 5, completion_length=[3, 12, 14, 16, 20], max_tokens=16, buffer=4)
    assert got == [0.0, 0.0, -0.5, -1.0, -1.0]
    assert length_penalty([""] * 3, [""] * 3, completion_length=[5, 10, 15], target=10, coef=2.0) == [0.0, 0.0, -1.0]
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty([""], [""], completion_length=[1], max_tokens=4, buffer=8)


def test_score_rollout_repeats_prompts_and_columns_and_adds_lengths(tmp_path):
    from rlhf.rewards import score_rollout

    f = tmp_path / "r.py"
    f.write_text(
        "def r(prompts, completions, answer, completion_length, **kw):\n"
        "    rows = zip(prompts, answer, completion_length)\n"
        "    return [float(p == 'p1') * 10 + float(a) + n / 100 for p, a, n in rows]\n"
    )
    fns = build_reward_functions([RewardSpec(fn=f"{f}:r")])

    class Roll:
        texts = ["a", "b", "c", "d"]
        lengths = torch.tensor([1, 2, 3, 4])

    total, _, prompts = score_rollout(fns, ["p0", "p1"], {"answer": ["1", "2"]}, Roll(), group_size=2)
    assert prompts == ["p0", "p0", "p1", "p1"]
    torch.testing.assert_close(total, torch.tensor([1.01, 1.02, 12.03, 12.04]))
