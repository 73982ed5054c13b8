"""LoRA+ (optim.lora_plus_ratio): the adapters' B matrices train at ratio x lr, everything else at lr."""

import json

import pytest
import torch
from conftest import tiny_run

from rlhf.build import build_optimizer, lora_plus_groups
from rlhf.config import ConfigError, load_config
from rlhf.trainer import Trainer

GRPO = "recipes/grpo_arithmetic_smollm2.yaml"


def _named(n_a: int = 2, n_b: int = 2) -> list[tuple[str, torch.nn.Parameter]]:
    a = [(f"layers.{i}.q_proj.lora_A.default.weight", torch.nn.Parameter(torch.randn(4, 8))) for i in range(n_a)]
    b = [(f"layers.{i}.q_proj.lora_B.default.weight", torch.nn.Parameter(torch.zeros(8, 4))) for i in range(n_b)]
    return a + b


def test_ratio_one_is_one_group():
    named = _named()
    groups = lora_plus_groups(named, 1e-3, 1.0)
    assert len(groups) == 1 and len(groups[0]["params"]) == 4 and "lr" not in groups[0]


def test_b_matrices_get_their_own_rate():
    named = _named()
    groups = lora_plus_groups(named, 1e-3, 16.0)
    assert [len(g["params"]) for g in groups] == [2, 2]
    assert all(p is q for p, (_, q) in zip(groups[1]["params"], named[2:]))
    assert groups[1]["lr"] == pytest.approx(16e-3)


def test_no_b_matrices_is_an_error():
    with pytest.raises(ValueError, match="no LoRA B matrices"):
        lora_plus_groups(_named(n_b=0), 1e-3, 16.0)


def test_ratio_must_be_positive():
    with pytest.raises(ConfigError, match="lora_plus_ratio"):
        load_config(GRPO, ["optim.lora_plus_ratio=0"])


def test_first_adam_step_moves_b_by_ratio_times_lr():
    """Adam's first step moves each weight with a non-zero gradient by lr (m / sqrt(v) = sign(g) after bias
    correction, eps aside): A by lr, B by ratio x lr."""
    cfg = load_config(
        GRPO, ["optim.lr=1e-3", "optim.lora_plus_ratio=16", "optim.max_grad_norm=0", "optim.warmup_steps=0"]
    )
    named = _named()
    for _, p in named:
        p.data.normal_()
    optimizer, scheduler = build_optimizer(cfg, named, None)
    before = [p.detach().clone() for _, p in named]
    loss = sum((p * torch.randn_like(p)).sum() for _, p in named)
    loss.backward()
    optimizer.step()
    for (name, p), old in zip(named, before):
        want = 16e-3 if "lora_B" in name else 1e-3
        assert (p - old).abs().flatten().tolist() == pytest.approx([want] * p.numel(), rel=1e-4), name


def test_run_with_lora_plus_trains_and_resumes(tiny_model_dir, tmp_path):
    """A tiny run has two groups at the right rates, and a resume keeps them (the scheduler's base rates)."""
    over = [
        *tiny_run(tiny_model_dir, tmp_path / "run"),
        "optim.lora_plus_ratio=4",
        "optim.lr=1e-3",
        "optim.warmup_steps=0",
    ]
    trainer = Trainer(load_config(GRPO, [*over, "train.max_steps=2", "train.save_every=1"]))
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([1e-3, 4e-3])
    trainer.train()
    resumed = Trainer(load_config(GRPO, [*over, "train.max_steps=3", "train.resume_from=latest"]))
    assert resumed.start_step == 2
    assert list(resumed.scheduler.base_lrs) == pytest.approx([1e-3, 4e-3])
    resumed.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "time/step" in r][-1] == 3
