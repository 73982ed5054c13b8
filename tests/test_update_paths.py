"""Shortcuts in the update give the same numbers as the long way round."""

from __future__ import annotations

import torch

from rlhf.config import load_config
from rlhf.trainer import StepBatch, StepRecord, Trainer
from tests.conftest import REPO, tiny_run

FIXTURES = REPO / "tests" / "reward_fixtures.py"


def _trainer(tiny_model_dir, out) -> Trainer:
    over = [*tiny_run(tiny_model_dir, out), "optim.lr=1e-2"]
    return Trainer(load_config(REPO / "recipes" / "grpo_arithmetic_smollm2.yaml", over))


def test_on_policy_reuse_of_current_logprobs_equals_recomputing_old_logprobs(tiny_model_dir, tmp_path):
    """mu = 1 and one minibatch: the update takes the old log-probs from its own forward (detached) instead of a
    separate no-grad pass; the loss, the metrics and the updated adapter equal those of the recomputed path."""
    reuse, recompute = _trainer(tiny_model_dir, tmp_path / "a"), _trainer(tiny_model_dir, tmp_path / "b")
    for p, q in zip(reuse.peft_model.parameters(), recompute.peft_model.parameters()):
        assert torch.equal(p, q)  # same seed, same initial adapter
    torch.manual_seed(0)
    roll, ps = reuse.collector.rollout(list(range(2)))
    rewards = torch.tensor([len(t) / 10.0 for t in roll.texts])
    adv = reuse.advantages(StepRecord(roll, rewards, {}, [], roll.action_mask)).advantages
    batch_a = StepBatch(roll, adv, roll.completion_mask.clone())
    old, _ = recompute.collector.scored(roll, recompute.policy)
    batch_b = StepBatch(roll, adv.clone(), roll.completion_mask.clone(), old_logprobs=old)
    m_a, m_b = reuse.update(batch_a, warmup=False), recompute.update(batch_b, warmup=False)
    assert m_a["loss/policy"] != 0.0
    for key in ("loss/policy", "policy/entropy", "policy/clipfrac"):
        assert abs(m_a[key] - m_b[key]) < 1e-5, key
    assert m_b["policy/approx_kl"] < 1e-10  # recomputed old log-probs equal the current ones
    for (n, p), q in zip(reuse.peft_model.named_parameters(), recompute.peft_model.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=n)


def test_time_budget_ends_the_run_with_final_eval_checkpoint_and_adapter(tiny_model_dir, tmp_path):
    import json

    over = [
        f"output_dir={tmp_path}",
        f"model.path={tiny_model_dir}",
        "model.dtype=float32",
        "rollout.max_new_tokens=4",
        "rollout.num_generations=2",
        "train.prompts_per_step=2",
        "train.max_steps=50",
        "train.max_minutes=0.0001",
        "eval.every=10",
        "eval.num_samples=4",
        "logging.report_to=[]",
        "logging.progress_bar=false",
        f"rewards=[{{fn: '{FIXTURES}:length_reward'}}]",
    ]
    Trainer(load_config(REPO / "recipes" / "grpo_arithmetic_smollm2.yaml", over)).train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss/policy" in r] == [1]
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 1]
    assert (tmp_path / "checkpoints" / "step-000001" / "COMPLETE").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
