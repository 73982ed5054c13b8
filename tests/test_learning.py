"""Learning is shown, not assumed: GRPO on the real SmolLM2-135M-Instruct raises held-out addition accuracy."""

import json

import pytest

from rlhf.config import load_config
from rlhf.trainer import GRPOTrainer


@pytest.mark.slow
def test_grpo_raises_heldout_addition_accuracy(tmp_path):
    cfg = load_config(
        "recipes/grpo_arithmetic_smollm2.yaml",
        [
            f"output_dir={tmp_path}",
            "train.max_steps=25",
            "eval.every=25",
            "eval.num_samples=100",
            "logging.report_to=[]",
            "logging.progress_bar=false",
            "logging.samples_every=0",
        ],
    )
    GRPOTrainer(cfg).train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    acc = {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}
    print(f"held-out accuracy: step 0 {acc[0]:.2f} -> step 25 {acc[25]:.2f}")
    assert acc[0] < 0.4  # the base model gets about a quarter right
    assert acc[25] >= acc[0] + 0.15, acc
