"""SIGTERM from any stage: a usable checkpoint on disk and a clean exit within seconds, and a resumed run that
continues exactly as an uninterrupted one. The reward fixture sends the signal from inside a stage, then hangs there
(a long rollout, reward or evaluation that a pre-empted run must not wait for)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ACCELERATE, FIXTURES, launch, tiny_run

REPO = Path(__file__).resolve().parents[1]
GRPO = REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"
GRACE = 30.0  # what clusters give between SIGTERM and SIGKILL is often 30-60 s


def _train(tiny: str, out: Path, *extra: str, stop_on_call: int = 0) -> float | None:
    """Run `python -m rlhf.train`; returns the seconds from the signal to the process's exit (None: no signal)."""
    stamp = out.parent / f"{out.name}.sigterm"
    env = {**os.environ, "SIGTERM_ON_CALL": str(stop_on_call), "SIGTERM_STAMP": str(stamp)}
    over = [*tiny_run(tiny, out), f"rewards=[{{fn: '{FIXTURES}:sigterm_on_call'}}]", *extra]
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf.train", str(GRPO), *over], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    end = time.time()
    assert proc.returncode == 0, proc.stderr[-3000:]
    return end - float(stamp.read_text()) if stamp.is_file() else None


def _rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))} for r in rows]


def _checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir() if (p / "COMPLETE").is_file())


def test_sigterm_during_a_reward_saves_the_last_step_and_resumes_exactly(tiny_model_dir, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    _train(tiny_model_dir, full, "train.max_steps=4")
    waited = _train(tiny_model_dir, cut, "train.max_steps=4", stop_on_call=3)  # step 3's rewards
    assert waited is not None and waited < GRACE, f"exited {waited:.1f} s after SIGTERM"
    assert _checkpoints(cut) == ["step-000002"]
    assert [r["step"] for r in _rows(cut)] == [1, 2]
    _train(tiny_model_dir, cut, "train.max_steps=4", "train.resume_from=latest")
    want, got = _rows(full), _rows(cut)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(want, got):
        for k, v in a.items():
            assert b[k] == pytest.approx(v, rel=1e-6, abs=1e-9), (a["step"], k)


def test_sigterm_during_an_evaluation_keeps_the_trained_step(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    # reward calls: step-0 evaluation, step 1, step 2, step 2's evaluation <- the signal
    waited = _train(tiny_model_dir, out, "train.max_steps=6", "eval.every=2", "eval.num_samples=3", stop_on_call=4)
    assert waited is not None and waited < GRACE
    assert _checkpoints(out) == ["step-000002"]
    rows = _rows(out)
    assert [r["step"] for r in rows if "loss/policy" in r] == [1, 2]
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [0]  # step 2's evaluation was dropped


def test_sigterm_during_the_first_evaluation_leaves_a_resumable_run(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    waited = _train(tiny_model_dir, out, "train.max_steps=2", "eval.every=2", "eval.num_samples=3", stop_on_call=1)
    assert waited is not None and waited < GRACE
    assert _checkpoints(out) == ["step-000000"]
    _train(tiny_model_dir, out, "train.max_steps=2", "eval.every=2", "eval.num_samples=3", "train.resume_from=latest")
    assert [r["step"] for r in _rows(out) if "loss/policy" in r] == [1, 2]


@pytest.mark.slow
@pytest.mark.skipif(ACCELERATE is None, reason="accelerate launcher not installed")
def test_sigterm_to_the_launcher_every_rank_agrees_and_saves(tiny_model_dir, tmp_path):
    """The signal reaches the launcher, which passes it to both ranks: they agree at the next stage boundary, save one
    checkpoint and exit. (torchrun itself then reports the signal: its own handler exits 1 after its workers end.)"""
    out = tmp_path / "run"
    over = [*tiny_run(tiny_model_dir, out), "train.max_steps=500", "eval.every=100", "eval.num_samples=8"]
    cmd = [ACCELERATE, "launch", "--config_file", str(REPO / "recipes" / "accelerate" / "ddp.yaml")]
    cmd += ["--num_processes", "2", "-m", "rlhf.train", str(GRPO), *over]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3) and time.time() < deadline:
        time.sleep(0.5)
    start = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert time.time() - start < GRACE
    assert err.count("stop requested (SIGTERM)") == 2, err[-3000:]  # both ranks
    saved = _checkpoints(out)
    assert len(saved) == 1
    step = int(saved[0].split("-")[1])
    assert [r["step"] for r in _rows(out) if "loss/policy" in r] == list(range(1, step + 1))
    res = launch("ddp", "-m", "rlhf.train", GRPO, *over[:-3], f"train.max_steps={step + 1}", "train.resume_from=latest")
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["step"] for r in _rows(out) if "loss/policy" in r] == list(range(1, step + 2))
