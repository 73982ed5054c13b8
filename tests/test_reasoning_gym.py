"""reasoning-gym as data + reward (rlhf.interop.reasoning_gym). The spec parsing runs everywhere; the rest needs the
optional extra (`pip install -e '.[reasoning]'`) and is skipped with that reason without it."""

import json
from pathlib import Path

import pytest
from conftest import tiny_run

from rlhf.interop.reasoning_gym import COLUMNS, parse_spec, split_seed

REPO = Path(__file__).resolve().parents[1]
SMALL = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+"]}  # ~200 questions


def test_parse_spec():
    assert parse_spec("reasoning_gym:leg_counting") == ("leg_counting", {})
    assert parse_spec("basic_arithmetic?size=20&operators=[+,*]&allow_negation=false&seed=3") == (
        "basic_arithmetic",
        {"size": 20, "operators": ["+", "*"], "allow_negation": False, "seed": 3},
    )
    with pytest.raises(ValueError, match="write reasoning_gym:TASK"):
        parse_spec("reasoning_gym:")
    with pytest.raises(ValueError, match="'size' is not key=value"):
        parse_spec("reasoning_gym:leg_counting?size")


def test_split_seed():
    assert split_seed(7, "train") == 7
    assert split_seed(7, "test") != 7 and split_seed(7, "test") == split_seed(7, "test")
    assert split_seed(7, "test") != split_seed(7, "validation")


@pytest.fixture(scope="module")
def rg():
    return pytest.importorskip("reasoning_gym", reason="reasoning-gym is not installed: pip install -e '.[reasoning]'")


def test_rows(rg):
    from rlhf.interop.reasoning_gym import reasoning_gym_rows

    rows = reasoning_gym_rows("leg_counting", size=5, seed=1)
    assert len(rows) == 5 and all(tuple(r) == COLUMNS for r in rows)
    entry = rg.create_dataset("leg_counting", size=5, seed=1)[2]
    assert rows[2]["prompt"] == entry["question"] and rows[2]["answer"] == entry["answer"]
    assert json.loads(rows[2]["rg_config"]) == {"seed": 1, "size": 5} and rows[2]["rg_index"] == 2
    assert reasoning_gym_rows("leg_counting", size=5, seed=1) == rows  # seeded


def test_test_split_never_holds_a_training_question(rg):
    from rlhf.interop.reasoning_gym import load_reasoning_gym

    spec = "reasoning_gym:basic_arithmetic?size=150&" + "&".join(f"{k}={json.dumps(v)}" for k, v in SMALL.items())
    train, test = load_reasoning_gym(spec, "train"), load_reasoning_gym(spec, "test")
    assert len(train) == 150 and 0 < len(test) < 150  # the space is small: some test draws were training questions
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}


def test_recipe_data_path(rg):
    from rlhf.data import load_eval_rows, load_rows

    path = "reasoning_gym:leg_counting?size=6&seed=2"
    rows = load_rows(path, None, "train")
    assert len(rows) == 6 and json.loads(rows[0]["rg_config"])["seed"] == 2
    train, held_out, where = load_eval_rows(rows, path, None, "train", "test", None, 3)
    assert train == rows and len(held_out) == 3 and "split 'test'" in where


def test_unknown_task_names_the_tasks(rg):
    from rlhf.interop.reasoning_gym import reasoning_gym_rows

    with pytest.raises(ValueError, match="'leg_countin'.*tasks: .*leg_counting"):
        reasoning_gym_rows("leg_countin", size=2)
    with pytest.raises(ValueError, match="basic_arithmetic"):
        reasoning_gym_rows("basic_arithmetic", size=2, min_terms=0)


def _columns(rows):
    return {k: [r[k] for r in rows] for k in COLUMNS if k != "prompt"}


def test_reward_scores_with_the_tasks_own_scorer(rg):
    from rlhf.interop.reasoning_gym import ReasoningGymReward, reasoning_gym_rows

    rows = reasoning_gym_rows("leg_counting", size=3, seed=0) + reasoning_gym_rows("rearc", size=1, seed=0)
    right = [f"Let me count.\n<answer>{r['answer']}</answer>" for r in rows]
    reward = ReasoningGymReward()
    assert reward(right, **_columns(rows)) == [1.0] * 4  # rearc's grids are tuples: rebuilt, not read from JSON
    wrong = reward(["<answer>-1</answer>", "no tag " + rows[1]["answer"], "", "<answer></answer>"], **_columns(rows))
    assert wrong == [0.0, 0.0, 0.0, 0.05]  # ARC's scorer gives 0.05 to any answer it can read, right or not
    chat = [[{"role": "assistant", "content": c}] for c in right]
    assert reward(chat, **_columns(rows)) == [1.0] * 4
    assert ReasoningGymReward(answer_tag=None)([r["answer"] for r in rows], **_columns(rows)) == [1.0] * 4


def test_reward_refuses_rows_of_another_version(rg):
    from rlhf.interop.reasoning_gym import ReasoningGymReward, reasoning_gym_rows

    rows = reasoning_gym_rows("leg_counting", size=1, seed=0)
    rows[0]["answer"] = "12345"
    with pytest.raises(ValueError, match="another reasoning-gym version"):
        ReasoningGymReward()(["<answer>12345</answer>"], **_columns(rows))


def test_reward_through_the_reward_plumbing(rg):
    from rlhf.config import RewardSpec
    from rlhf.interop.reasoning_gym import reasoning_gym_rows
    from rlhf.rewards import build_reward_functions, check_reward_signatures, score

    rows = reasoning_gym_rows("leg_counting", size=2, seed=0)
    fns = build_reward_functions([RewardSpec(fn="rlhf.interop.reasoning_gym:ReasoningGymReward")])
    check_reward_signatures(fns, list(COLUMNS[1:]))
    total, _ = score(fns, [r["prompt"] for r in rows], ["<answer>0</answer>", f"<answer>{rows[1]['answer']}</answer>"],
                     _columns(rows))  # fmt: skip
    assert total.tolist() == [0.0, 1.0]


def test_export_and_train_one_step(rg, tiny_model_dir, tmp_path):
    from rlhf.config import load_config
    from rlhf.data import load_rows, sibling_split_file
    from rlhf.interop.reasoning_gym import main
    from rlhf.trainer import Trainer

    main(["leg_counting?max_animals=3", "--size", "8", "--test-size", "4", "--out-dir", str(tmp_path / "data")])
    train_file = tmp_path / "data" / "leg_counting_train.jsonl"
    rows = load_rows(str(train_file))
    assert len(rows) == 8 and tuple(rows[0]) == COLUMNS
    test_file = sibling_split_file(train_file, "train", "test")
    assert test_file is not None and len(load_rows(str(test_file))) == 4
    out = tmp_path / "run"
    over = [*tiny_run(tiny_model_dir, out), f"data.path={train_file}", "data.prompt_column=prompt"]
    over += ["data.prompt_template='{prompt} Give the answer in <answer></answer> tags.'", "train.max_steps=1"]
    over += ["eval.every=1", "eval.num_samples=2", "rewards=[{fn: 'rlhf.interop.reasoning_gym:ReasoningGymReward'}]"]
    Trainer(load_config(REPO / "recipes" / "grpo_gsm8k_smollm2.yaml", over)).train()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/mean" in m for m in metrics) and any("eval/accuracy" in m for m in metrics)
