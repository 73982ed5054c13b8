"""On-policy distillation through the table: the student samples, a frozen teacher scores the same tokens, and the
per-token advantage is the negative reverse KL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model, tiny_run

from rlhf.config import load_config

REPO = Path(__file__).resolve().parents[1]
GRPO = REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"


@pytest.fixture(scope="module")
def other_tiny_model(tmp_path_factory) -> str:
    """The student's own base with a sharper output distribution (its tied embedding scaled up): the same modes, so
    the student's samples overlap the teacher's, and a reverse KL it can close."""
    from transformers import AutoModelForCausalLM

    path = build_tiny_model(tmp_path_factory.mktemp("teacher"), seed=0)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(4.0)
    model.save_pretrained(path)
    return str(path)


def _distill(tiny: str, out: Path, *extra: str) -> list[dict]:
    from rlhf.trainer import Trainer

    over = [*tiny_run(tiny, out), "algorithm.name=distill", "rollout.temperature=1.0", *extra]
    Trainer(load_config(GRPO, over)).train()
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_student_that_is_its_teacher_has_no_advantage(tiny_model_dir, tmp_path):
    # the student's adapter starts at zero: student == its base == the teacher
    rows = _distill(tiny_model_dir, tmp_path / "run", "train.max_steps=1")
    assert abs(rows[0]["distill/reverse_kl"]) < 1e-4


def test_advantages_are_the_teachers_logprobs_minus_the_samplers(
    tiny_model_dir, other_tiny_model, tmp_path, monkeypatch
):
    """The advantage of each sampled token equals log pi_teacher - log pi_sampler, the teacher's log-prob taken by a
    plain full forward of the teacher over prompt + episode (an independent check of the scoring path)."""
    from transformers import AutoModelForCausalLM

    from rlhf.trainer import Trainer

    seen = {}
    real = Trainer.advantages

    def spy(self, record):
        est = real(self, record)
        seen["batch"], seen["adv"] = record, est.advantages
        return est

    monkeypatch.setattr(Trainer, "advantages", spy)
    _distill(
        tiny_model_dir,
        tmp_path / "run",
        f"algorithm.teacher.path={other_tiny_model}",
        "algorithm.teacher.dtype=float32",
        "rollout.temperature=0.7",
        "train.max_steps=1",
    )
    batch, adv = seen["batch"], seen["adv"]
    r = batch.rollout
    teacher = AutoModelForCausalLM.from_pretrained(other_tiny_model).eval()
    ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
    mask = torch.cat([r.prompt_mask, r.completion_mask], 1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = teacher(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float() / 0.7
    P = r.prompt_ids.shape[1]
    lp = logits[:, P - 1 : -1].log_softmax(-1).gather(-1, r.completion_ids[:, :, None]).squeeze(-1)
    m = batch.loss_mask.bool()
    torch.testing.assert_close(adv[m], (lp - r.logprobs)[m], atol=1e-4, rtol=1e-4)
    assert (adv[~m] == 0).all()
