"""Learning is shown, not assumed: GRPO on the real SmolLM2-135M-Instruct raises held-out addition accuracy."""

import json

import pytest

from rlhf.config import load_config
from rlhf.trainer import Trainer


def _train_25_steps(recipe: str, out) -> tuple[dict[int, float], list[dict]]:
    """(held-out accuracy by step, metrics rows) of a 25-step run of `recipe`, evaluated at steps 0 and 25."""
    cfg = load_config(
        recipe,
        [
            f"output_dir={out}",
            "train.max_steps=25",
            "eval.every=25",
            "eval.num_samples=100",
            "logging.report_to=[]",
            "logging.progress_bar=false",
            "logging.samples_every=0",
        ],
    )
    Trainer(cfg).train()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}, rows


@pytest.mark.slow
def test_grpo_raises_heldout_addition_accuracy(tmp_path):
    """The demo's recipe (GRPO with dynamic sampling) over 25 steps; the plain GRPO recipe reached +0.15 here too."""
    acc, rows = _train_25_steps("recipes/demo_arithmetic_smollm2.yaml", tmp_path)
    print(f"held-out accuracy: step 0 {acc[0]:.2f} -> step 25 {acc[25]:.2f}")
    assert acc[0] < 0.4  # the base model gets about a quarter right
    assert acc[25] >= acc[0] + 0.25, acc
    # dynamic sampling ran: every step trained on groups whose rewards differ
    train = [r for r in rows if "dynamic/kept_frac" in r]
    assert len(train) == 25 and all(r["dynamic/filler_groups"] == 0 or r["dynamic/refills"] == 2 for r in train)


@pytest.mark.slow
def test_ppo_raises_heldout_addition_accuracy(tmp_path):
    """PPO with a value head on the shared trunk (GAE, per-token KL in the reward, adaptive KL) learns the task too."""
    acc, rows = _train_25_steps("recipes/ppo_arithmetic_smollm2.yaml", tmp_path)
    train = [r for r in rows if "value/explained_var" in r]
    print(f"PPO held-out accuracy: step 0 {acc[0]:.2f} -> step 25 {acc[25]:.2f}")
    assert acc[0] < 0.4
    assert acc[25] >= acc[0] + 0.15, acc
    # the zero-initialised value head learns the level of the returns as they rise (0/1 rewards: per-sequence
    # explained variance stays small; measured ~0.05)
    assert train[0]["value/mean"] == 0.0
    late = train[-10:]
    v = sum(r["value/mean"] for r in late) / len(late)
    ret = sum(r["value/return_mean"] for r in late) / len(late)
    assert v > 0.1 and abs(v - ret) < 0.1, (v, ret)
