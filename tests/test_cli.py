"""Bad input gives one clear line on stderr and exit code 2, not a traceback."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes" / "grpo_arithmetic_smollm2.yaml")


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlhf.train", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def test_unknown_key(tmp_path):
    line = _error_line(run_cli(RECIPE, "rollout.temprature=0.5", f"output_dir={tmp_path}"))
    assert "unknown key `rollout.temprature`: did you mean `rollout.temperature`?" in line
    assert not (tmp_path / "config.yaml").exists()  # rejected before anything ran


def test_missing_column(tmp_path, tiny_model_dir):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    line = _error_line(
        run_cli(
            RECIPE,
            f"model.path={tiny_model_dir}",
            f"data.path={data}",
            "eval.every=0",
            f"output_dir={tmp_path / 'out'}",
        )
    )
    assert "prompt column 'prompt' not in the dataset (columns: answer, question); set data.prompt_column" in line


def test_raising_reward_function(tmp_path, tiny_model_dir):
    fixtures = REPO / "tests" / "reward_fixtures.py"
    line = _error_line(
        run_cli(
            RECIPE,
            f"model.path={tiny_model_dir}",
            "model.dtype=float32",
            "eval.every=0",
            "train.max_steps=1",
            "rollout.max_new_tokens=4",
            "logging.report_to=[]",
            f"output_dir={tmp_path / 'out'}",
            f"rewards=[{{fn: '{fixtures}:raising_reward'}}]",
        )
    )
    assert "reward function 'raising_reward' failed on row 0" in line and "ValueError: boom" in line
    assert "on_error: zero" in line


def test_help():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "usage: python -m rlhf.train" in proc.stdout


def test_reward_failing_mid_run_keeps_saved_checkpoints(tmp_path, tiny_model_dir):
    from rlhf.checkpoint import list_checkpoints

    fixtures = REPO / "tests" / "reward_fixtures.py"
    out = tmp_path / "out"
    line = _error_line(
        run_cli(
            RECIPE,
            f"model.path={tiny_model_dir}",
            "model.dtype=float32",
            "eval.every=0",
            "train.max_steps=5",
            "train.save_every=1",
            "rollout.max_new_tokens=4",
            "logging.report_to=[]",
            f"output_dir={out}",
            f"rewards=[{{fn: '{fixtures}:fails_on_third_call'}}]",
        )
    )
    assert "reward function 'fails_on_third_call' failed" in line and "ConnectionError" in line
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000001", "step-000002"]
    assert not list((out / "checkpoints").glob(".tmp-*"))
