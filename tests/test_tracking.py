import json
import logging

import pytest
import torch

from rlhf.config import RewardSpec
from rlhf.rewards import build_reward_functions, score
from rlhf.tracking import MetricsWriter, available_trackers, console_line, truncate_metrics_file


def test_missing_tracker_is_a_clear_message_not_a_failure(caplog, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with caplog.at_level(logging.WARNING, logger="rlhf"):
        assert available_trackers(["wandb"]) == []
    assert "tracker 'wandb' is not installed (pip install wandb); logging without it" in caplog.text
    with pytest.raises(ValueError, match="unknown tracker 'tensorbord'"):
        available_trackers(["tensorbord"])


def test_metrics_writer_and_resume_truncation(tmp_path):
    w = MetricsWriter(tmp_path)
    for step in range(1, 5):
        w.log({"reward/mean": torch.tensor(step / 10), "loss/policy": float("nan")}, step)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0] == {"step": 1, "reward/mean": pytest.approx(0.1), "loss/policy": None}
    truncate_metrics_file(tmp_path / "metrics.jsonl", 2)
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_console_line():
    line = console_line(3, 10, {"reward/mean": 0.5, "eval/accuracy": 0.25, "time/step": 3.21})
    assert line == "step    3/10 | reward 0.500 | eval_acc 0.250 | s/step 3.2"


def test_example_custom_reward_file():
    fns = build_reward_functions(
        [
            RewardSpec(fn="examples/custom_reward.py:concise_answer", kwargs={"max_chars": 10}),
            RewardSpec(fn="examples/custom_reward.py:ContainsOperands", weight=0.5),
        ]
    )
    total, per_fn = score(
        fns, ["q", "q"], ["57", "12 + 45 = 57"], {"answer": ["57", "57"], "a": [12, 12], "b": [45, 45]}
    )
    assert per_fn["concise_answer"].tolist() == [1.0, 0.0]
    assert per_fn["ContainsOperands"].tolist() == [0.0, 1.0]
    assert total.tolist() == [1.0, 0.5]
    _, per_fn = score(fns, ["q"], ["x"], {"answer": ["1"]})
    assert torch.isnan(per_fn["ContainsOperands"][0])  # not applicable without operand columns
