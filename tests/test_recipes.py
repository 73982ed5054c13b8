"""Every shipped recipe runs 2 steps on a tiny model: LoRA weights change, base weights do not, metrics are written."""

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe_overrides
from safetensors.torch import load_file

from rlhf.config import load_config
from rlhf.trainer import Trainer

pytestmark = pytest.mark.slow  # every shipped recipe trained 2 steps on the tiny model

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
FIXTURES = REPO / "tests" / "reward_fixtures.py"
REQUIRED = [
    "reward/mean",
    "loss/policy",
    "policy/approx_kl",
    "policy/clipfrac",
    "policy/entropy",
    "completion/mean_len",
    "completion/clipped_frac",
    "time/rollout",
    "time/reward",
    "time/train",
    "time/step",
    "throughput/gen_tokens_per_s",
    "frac_reward_zero_std",
]


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_runs_two_steps(recipe, tiny_model_dir, tmp_path, gsm8k_file):
    if "_agent_" in recipe.stem:
        pytest.importorskip("fastapi", reason="agent.run needs the `agents` extra: pip install -e '.[agents]'")
    out = tmp_path / "run"
    cfg = load_config(recipe, tiny_recipe_overrides(recipe, tiny_model_dir, out, gsm8k_file))
    trainer = Trainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.peft_model.named_parameters()}
    trainer.train()
    after = dict(trainer.peft_model.named_parameters())
    lora = [n for n in before if "lora_" in n]
    assert lora and any(not torch.equal(before[n], after[n]) for n in lora), "LoRA weights did not change"
    for n in before:
        if "lora_" not in n:
            assert torch.equal(before[n], after[n]), f"base weight {n} changed"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss/policy" in r]
    assert [r["step"] for r in train_rows] == [1, 2]
    for r in train_rows:
        missing = [k for k in REQUIRED if k not in r]
        assert not missing, missing
        assert all(v is None or isinstance(v, (int, float)) for v in r.values())
        assert torch.isfinite(torch.tensor(r["loss/policy"]))
    if cfg.eval.every:
        assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 1, 2]
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert saved and all(torch.isfinite(t).all() for t in saved.values())
    assert (out / "config.yaml").is_file() and (out / "samples.jsonl").is_file()
    assert (out / "checkpoints" / "step-000002" / "COMPLETE").is_file()


def test_all_update_branches(tiny_model_dir, tmp_path, gsm8k_file):
    """KL to the reference, mu = 2 passes over 2 minibatches, gradient accumulation, gradient
    checkpointing, batch-level std, Dr. GRPO aggregation: the run is finite and the adapter moves."""
    recipe = REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"
    over = tiny_recipe_overrides(recipe, tiny_model_dir, tmp_path / "run", gsm8k_file) + [
        "algorithm.beta=0.1",
        "algorithm.kl_estimator=k3",
        "algorithm.num_iterations=2",
        "algorithm.num_minibatches=2",
        "model.gradient_checkpointing=true",
        "algorithm.std_level=batch",
        "algorithm.loss_agg=seq-mean-token-sum-norm",
        "algorithm.clip_high=0.28",
        "train.micro_batch_size=2",
        "optim.schedule=cosine",
        "optim.warmup_steps=1",
        "eval.every=0",
        "rollout.top_k=50",
        "rollout.top_p=0.9",
    ]
    cfg = load_config(recipe, over)
    trainer = Trainer(cfg)
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        assert r["optim/updates"] == 4  # 2 passes x 2 minibatches
        assert r["loss/kl"] is not None and r["loss/kl"] >= 0
        assert torch.isfinite(torch.tensor(r["loss/policy"]))
    assert rows[-1]["policy/approx_kl"] > 0  # the second pass sees a moved policy


def test_mask_truncated_leaves_truncated_rows_out_of_the_loss(tiny_model_dir, tmp_path, gsm8k_file):
    # a random tiny model never emits EOS within 6 tokens: every completion is truncated, so nothing may train
    recipe = REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"
    over = tiny_recipe_overrides(recipe, tiny_model_dir, tmp_path / "run", gsm8k_file) + [
        "rollout.mask_truncated=true",
        "eval.every=0",
        "train.max_steps=1",
    ]
    trainer = Trainer(load_config(recipe, over))
    before = {n: p.detach().clone() for n, p in trainer.peft_model.named_parameters() if "lora_" in n}
    trainer.train()
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["completion/clipped_frac"] == 1.0 and row["loss/policy"] == 0.0
    for n, p in trainer.peft_model.named_parameters():
        if n in before:
            assert torch.equal(p, before[n]), n


@pytest.mark.parametrize("name", ["grpo", "rloo", "reinforce", "reinforce_baseline", "reinforce_pp"])
def test_every_advantage_estimator_trains(name, tiny_model_dir, tmp_path, gsm8k_file):
    recipe = REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"
    over = tiny_recipe_overrides(recipe, tiny_model_dir, tmp_path / "run", gsm8k_file) + [
        f"algorithm.name={name}",
        *(["algorithm.gamma=0.9"] if name.startswith("reinforce") else []),  # only the return estimators discount
        "eval.every=0",
        "train.max_steps=1",
    ]
    trainer = Trainer(load_config(recipe, over))
    before = {n: p.detach().clone() for n, p in trainer.peft_model.named_parameters() if "lora_B" in n}
    trainer.train()
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert torch.isfinite(torch.tensor(row["loss/policy"])) and row["optim/updates"] == 1
    assert any(not torch.equal(p, before[n]) for n, p in trainer.peft_model.named_parameters() if n in before)
