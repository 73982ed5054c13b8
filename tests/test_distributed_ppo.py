"""The value family under `accelerate launch --num_processes 2` on CPU: PPO with a value head under ZeRO-2, PPO with
a separate critic under ZeRO-3 (the critic sharded with the policy), TRPO under DDP (its step is taken outside the
optimizer, so DeepSpeed is refused)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import launch, tiny_run

pytestmark = pytest.mark.slow  # 2-process accelerate launches

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "launcher,recipe",
    [
        ("zero2", "ppo_arithmetic_smollm2"),
        ("zero3", "ppo_critic_arithmetic_smollm2"),
        ("ddp", "trpo_arithmetic_smollm2"),
    ],
)
def test_value_family_two_processes(launcher, recipe, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    proc = launch(
        launcher,
        "-m",
        "rlhf.train",
        str(REPO / "recipes" / f"{recipe}.yaml"),
        *tiny_run(tiny_model_dir, out),
        "train.prompts_per_step=4",
        "train.max_steps=2",
        "value.warmup_steps=0",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("loss/policy", "loss/value", "value/mean", "value/explained_var", "policy/kl_coef"):
            assert key in r and r[key] is not None and torch.isfinite(torch.tensor(r[key])), key
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert any(t.abs().sum() > 0 for k, t in saved.items() if "lora_B" in k), "LoRA B stayed zero: no update"
    if recipe.startswith("trpo"):
        assert any(r["trpo/accepted"] for r in rows)


def test_trpo_under_deepspeed_is_refused_with_the_fix(tiny_model_dir, tmp_path):
    proc = launch(
        "zero2",
        "-m",
        "rlhf.train",
        str(REPO / "recipes" / "trpo_arithmetic_smollm2.yaml"),
        f"model.path={tiny_model_dir}",
        "train.max_steps=1",
        f"output_dir={tmp_path}",
        "logging.report_to=[]",
    )
    assert proc.returncode != 0
    assert "ddp.yaml" in proc.stderr and "trpo" in proc.stderr


def test_non_finite_step_under_deepspeed_leaves_the_weights_untouched(tiny_model_dir, tmp_path):
    """DeepSpeed steps inside backward(); a NaN minibatch must not let Adam's moments move the adapter."""
    proc = launch(
        "zero2",
        str(REPO / "tests" / "nan_worker.py"),
        str(REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"),
        *tiny_run(tiny_model_dir, tmp_path),
        "train.prompts_per_step=4",
        "train.micro_batch_size=32",  # one micro-batch per step: the worker's second loss call is step 2's
        "train.max_steps=2",
        "train.save_every=1",
        "optim.lr=1e-2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["optim/skipped_steps"] for r in rows] == [0, 1]
    after_1 = load_file(str(tmp_path / "checkpoints" / "step-000001" / "adapter" / "adapter_model.safetensors"))
    final = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert any(t.abs().sum() > 0 for k, t in after_1.items() if "lora_B" in k)  # step 1 trained
    for k in after_1:
        assert torch.equal(after_1[k], final[k]), f"{k} moved during the skipped step"
