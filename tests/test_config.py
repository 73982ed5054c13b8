import pytest
import yaml

from rlhf.config import Config, ConfigError, load_config, save_config

RECIPE = "recipes/grpo_arithmetic_smollm2.yaml"


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(None, ["train.max_steps=7", "optim.lr=3e-4", 'rollout.stop=["\\n"]', "model.lora.r=4"])
    assert cfg.train.max_steps == 7 and cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.rollout.stop == ["\n"] and cfg.model.lora.r == 4
    assert isinstance(cfg.optim.lr, float)


def test_recipe_keys_of_the_contract():
    cfg = load_config(RECIPE, ["output_dir=/tmp/x", "rollout.num_generations=4", "eval.every=0"])
    assert (cfg.output_dir, cfg.rollout.num_generations, cfg.eval.every) == ("/tmp/x", 4, 0)
    for key in (
        "seed",
        "model.path",
        "model.lora.r",
        "rollout.max_new_tokens",
        "train.prompts_per_step",
        "train.max_steps",
        "train.save_every",
        "train.resume_from",
        "algorithm.beta",
    ):
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)


def test_unknown_key_names_nearest():
    with pytest.raises(
        ConfigError, match=r"unknown key `rollout.num_generation`: did you mean `rollout.num_generations`"
    ):
        load_config(RECIPE, ["rollout.num_generation=4"])
    with pytest.raises(ConfigError, match="unknown key `optimizer`"):
        load_config(None, ["optimizer.lr=1"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match="train.max_steps: expected an integer, got 'ten'"):
        load_config(None, ["train.max_steps=ten"])
    with pytest.raises(ConfigError, match="algorithm.loss_agg: 'mean' is not one of"):
        load_config(None, ["algorithm.loss_agg=mean"])
    with pytest.raises(ConfigError, match="model.lora.target_modules"):
        load_config(None, ["model.lora.target_modules=3"])


def test_impossible_combinations():
    with pytest.raises(ConfigError, match="num_generations must be >= 2 for grpo"):
        load_config(None, ["rollout.num_generations=1"])
    with pytest.raises(ConfigError, match="exceed"):
        load_config(None, ["data.arithmetic.max_operand=12", "data.arithmetic.num_train=100"])
    from rlhf.config import check_world

    with pytest.raises(ConfigError, match="prompts_per_step=3 does not divide over 2 processes"):
        check_world(load_config(None, ["train.prompts_per_step=3"]), 2)
    ds = ["train.prompts_per_step=2", "algorithm.dynamic_sampling=true", "algorithm.draw_prompts=5"]
    with pytest.raises(ConfigError, match="draw_prompts=5 does not divide over 2 processes"):
        check_world(load_config(None, ds), 2)
    check_world(load_config(None, [*ds[:2], "algorithm.draw_prompts=6"]), 2)


def test_reward_list_overrides_and_errors():
    cfg = load_config(None, ["rewards.0.weight=2.5"])
    assert cfg.rewards[0].weight == 2.5 and cfg.rewards[0].fn.endswith("numeric_answer_reward")
    with pytest.raises(ConfigError, match=r"unknown key `rewards\[0\].fnn`: did you mean `rewards\[0\].fn`"):
        load_config(None, ["rewards.0.fnn=x"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(RECIPE, ["seed=3"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["seed"] == 3
    assert isinstance(again, Config)


def test_missing_recipe_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("recipes/nope.yaml")


def test_config_reference_is_current():
    from pathlib import Path

    from rlhf.config_reference import render

    doc = Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md"
    assert doc.read_text() == render(), (
        "docs/CONFIG.md is stale: run `python -m rlhf.config_reference > docs/CONFIG.md`"
    )
    assert "`rollout.num_generations`" in doc.read_text() and "arXiv:2402.03300" in doc.read_text()
