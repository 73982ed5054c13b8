"""The adapter's README.md: base model, recipe, data, rewards, steps, metrics, reproduce command, loading code."""

from pathlib import Path

import yaml

from rlhf.config import load_config, to_dict
from rlhf.model_card import write_model_card

REPO = Path(__file__).resolve().parents[1]
RECIPE = "recipes/grpo_arithmetic_smollm2.yaml"


def _card(adapter: Path, base: str = "smollm2-135m-instruct", metrics: dict | None = None) -> str:
    cfg = to_dict(load_config(REPO / RECIPE))
    path = write_model_card(
        adapter,
        base,
        RECIPE,
        cfg,
        {"eval/accuracy": 0.74, "reward/mean": 0.7712345, "loss/policy": -0.0123, "optim/grad_norm": None}
        if metrics is None
        else metrics,
        "python -m rlhf.train recipes/grpo_arithmetic_smollm2.yaml train.max_steps=100",
        "arithmetic: 2000 train / 200 held-out two-digit additions",
        ["numeric_answer_reward"],
        100,
    )
    assert path == adapter / "README.md"
    return path.read_text()


def test_card_content(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "README.md").write_text("peft placeholder")
    text = _card(adapter)
    front = yaml.safe_load(text.split("---")[1])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and front["library_name"] == "peft"
    assert "peft placeholder" not in text
    for needle in [
        "`smollm2-135m-instruct`",
        f"`{RECIPE}`",
        "arithmetic: 2000 train / 200 held-out two-digit additions",
        "`numeric_answer_reward`",
        "| Training steps | 100 |",
        "| `eval/accuracy` | 0.74 |",
        "| `reward/mean` | 0.7712 |",
        "| `optim/grad_norm` | n/a |",
        "python -m rlhf.train recipes/grpo_arithmetic_smollm2.yaml train.max_steps=100",
        'AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")',
        f'PeftModel.from_pretrained(base, "{adapter}")',
        "r=16, alpha=32.0",
        "GRPO",
    ]:
        assert needle in text, needle
    # the metrics a reader looks for come first
    assert text.index("`eval/accuracy`") < text.index("`loss/policy`")
    # the full configuration round-trips
    config_yaml = text.split("```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(config_yaml)["rollout"]["num_generations"] == 8


def test_local_base_model_stays_out_of_hub_metadata(tmp_path):
    base = tmp_path / "my-model"
    base.mkdir()
    text = _card(tmp_path / "adapter", base=str(base), metrics={})
    assert "base_model" not in yaml.safe_load(text.split("---")[1])
    assert f'AutoModelForCausalLM.from_pretrained("{base}")' in text
    assert "No metrics were recorded." in text
