"""The loss menu through the table: each row and knob trains on the tiny model and logs what it should."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, tiny_run

from rlhf.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
GRPO = REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"


def _train(tiny: str, out: Path, *extra: str):
    from rlhf.trainer import Trainer

    trainer = Trainer(load_config(GRPO, [*tiny_run(tiny, out), "train.max_steps=2", *extra]))
    before = {n: p.detach().clone() for n, p in trainer.peft_model.named_parameters() if "lora_B" in n}
    trainer.train()
    moved = any(not torch.equal(p, before[n]) for n, p in trainer.peft_model.named_parameters() if n in before)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, moved


@pytest.mark.parametrize(
    "extra",
    [
        ["algorithm.name=gspo", "algorithm.clip_low=3e-4", "algorithm.clip_high=4e-4", "algorithm.num_iterations=2"],
        ["algorithm.name=gspo_token", "algorithm.clip_low=3e-4", "algorithm.clip_high=4e-4"],
        ["algorithm.name=cispo", "algorithm.clip_high=0.28", "algorithm.num_iterations=2"],
        ["algorithm.name=sapo", "algorithm.num_iterations=2"],
        ["algorithm.clip_ratio_c=3.0", "algorithm.num_iterations=2", "algorithm.loss_agg=seq-mean-token-sum"],
        ["algorithm.tis_cap=2.0", "algorithm.tis_seq_threshold=0.5"],
    ],
    ids=["gspo", "gspo_token", "cispo", "sapo", "dual_clip", "tis"],
)
def test_each_loss_row_trains(extra, tiny_model_dir, tmp_path):
    rows, moved = _train(tiny_model_dir, tmp_path / "run", *extra)
    assert moved
    for r in rows:
        assert torch.isfinite(torch.tensor([r["loss/policy"], r["policy/entropy"]])).all()
        # the sampler/trainer mismatch is always logged; the built-in engine's is float noise
        assert r["rollout/mismatch_abs_mean"] < 1e-4 and r["rollout/mismatch_abs_max"] < 1e-3
        assert r["rollout/mismatch_kl"] < 1e-6
    if "algorithm.tis_cap=2.0" in extra:
        assert rows[0]["tis/weight_mean"] == pytest.approx(1.0, abs=1e-3)  # on-policy: weights ~ 1


def test_entropy_bonus_alone_moves_the_policy(tiny_model_dir, tmp_path):
    """With a constant reward every advantage is 0: without a bonus nothing trains, with one the entropy does."""
    const = f"rewards=[{{fn: '{FIXTURES}:constant_reward'}}]"
    _, moved = _train(tiny_model_dir, tmp_path / "a", const)
    assert not moved
    _, moved = _train(tiny_model_dir, tmp_path / "b", const, "algorithm.entropy_coef=0.5")
    assert moved


def test_loss_knobs_are_owned_by_their_rows(tiny_model_dir, tmp_path):
    over = tiny_run(tiny_model_dir, tmp_path / "run")
    with pytest.raises(ConfigError, match="algorithm.clip_low is not read by algorithm.name=cispo"):
        load_config(GRPO, [*over, "algorithm.name=cispo", "algorithm.clip_low=0.1"])
    with pytest.raises(ConfigError, match="algorithm.tau_pos is not read by algorithm.name=grpo.*sapo"):
        load_config(GRPO, [*over, "algorithm.tau_pos=2.0"])
    with pytest.raises(ConfigError, match="clip_ratio_c must be > 1"):
        load_config(GRPO, [*over, "algorithm.clip_ratio_c=0.5"])
    with pytest.raises(ConfigError, match="tis_seq_threshold must be > 0 and needs algorithm.tis_cap"):
        load_config(GRPO, [*over, "algorithm.tis_seq_threshold=0.5"])
    with pytest.raises(ConfigError, match="entropy_coef is not read by algorithm.name=trpo"):
        load_config(REPO / "recipes" / "trpo_arithmetic_smollm2.yaml", [*over, "algorithm.entropy_coef=0.1"])
