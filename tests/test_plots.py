"""Run charts: one PNG per metric group plus an overview, from synthetic and from a real run's metrics.jsonl."""

import json
import math
import random
from pathlib import Path

import pytest

from rlhf.plots import main, plot_run, read_metrics, rolling_mean, series

REPO = Path(__file__).resolve().parents[1]
ALL_CHARTS = ["reward", "eval_accuracy", "kl", "loss_policy", "completion_length", "step_time", "overview"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_metrics(path: Path, steps: int = 40) -> None:
    """Rows shaped like the trainer's: an eval-only row at step 0, eval folded into every 10th step row, a null
    (NaN) value, and a torn last line from a killed run."""
    rng = random.Random(0)
    rows = [{"step": 0, "eval/accuracy": 0.2, "eval/reward_mean": 0.2, "eval/num_samples": 50, "time/eval": 9.0}]
    for s in range(1, steps + 1):
        rollout, train, reward_t = 1.5 + rng.random(), 2.0 + rng.random(), 0.001
        row = {
            "step": s,
            "reward/mean": min(1.0, 0.1 + s / steps * 0.7 + rng.gauss(0, 0.1)),
            "loss/policy": rng.gauss(0, 0.02),
            "loss/kl": 0.0,
            "policy/approx_kl": abs(rng.gauss(0, 1e-3)),
            "completion/mean_len": 14 - s / 10 + rng.random(),
            "completion/max_len": 16.0,
            "time/rollout": rollout,
            "time/ref": 0.0,
            "time/reward": reward_t,
            "time/train": train,
            "time/step": rollout + train + reward_t + 0.1,
        }
        if s % 10 == 0:
            row["eval/accuracy"] = 0.2 + s / steps * 0.5
        if s == 7:
            row["reward/mean"] = None  # the writer turns NaN into null
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 41, "reward/me')


def _check_pngs(paths: list[Path], names: list[str]) -> None:
    assert [p.stem for p in paths] == names
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, p


def test_series_skips_missing_null_and_nonfinite():
    rows = [{"step": 1, "a": 1.0}, {"step": 2}, {"step": 3, "a": None}, {"step": 4, "a": math.inf}, {"step": 5, "a": 2}]
    assert series(rows, "a") == ([1.0, 5.0], [1.0, 2.0])
    assert series(rows, "b") == ([], [])


def test_rolling_mean_is_trailing():
    assert rolling_mean([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert rolling_mean([5.0], 10) == [5.0]


def test_plot_run_from_synthetic_metrics(tmp_path):
    synthetic_metrics(tmp_path / "metrics.jsonl")
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 41  # the torn line is skipped
    paths = plot_run(tmp_path)
    _check_pngs(paths, ALL_CHARTS)
    assert all(p.parent == tmp_path / "plots" for p in paths)


def test_absent_metrics_are_skipped(tmp_path):
    rows = [{"step": s, "reward/mean": s / 10, "time/step": 2.0} for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _check_pngs(plot_run(tmp_path), ["reward", "step_time", "overview"])
    assert not (tmp_path / "plots" / "eval_accuracy.png").exists()


def test_cli_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "other": 1.0}) + "\n")
    assert main([str(tmp_path)]) == 2
    with pytest.raises(FileNotFoundError):
        plot_run(tmp_path / "missing")


def test_plots_from_a_real_training_run(tiny_model_dir, tmp_path, capsys):
    from rlhf.config import load_config
    from rlhf.trainer import Trainer

    out = tmp_path / "run"
    overrides = [
        f"model.path={tiny_model_dir}",
        f"output_dir={out}",
        "model.dtype=float32",
        "train.max_steps=2",
        "train.prompts_per_step=2",
        "train.micro_batch_size=6",
        "rollout.num_generations=3",
        "rollout.max_new_tokens=6",
        "eval.every=1",
        "eval.num_samples=3",
        "eval.max_new_tokens=4",
        "logging.report_to=[]",
        "logging.progress_bar=false",
        "optim.warmup_steps=0",
        f"rewards=[{{fn: '{REPO / 'tests' / 'reward_fixtures.py'}:length_reward'}}]",
    ]
    Trainer(load_config(REPO / "recipes" / "grpo_arithmetic_smollm2.yaml", overrides)).train()
    assert main([str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "plots" / f"{name}.png") for name in ALL_CHARTS]
    _check_pngs([Path(p) for p in printed], ALL_CHARTS)
