"""Exact resume, pre-emption, corrupt checkpoints and non-finite losses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlhf.checkpoint import CheckpointError, list_checkpoints, resolve_resume
from rlhf.config import load_config
from rlhf.trainer import Trainer
from tests.conftest import launch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"
FIXTURES = REPO / "tests" / "reward_fixtures.py"
VOLATILE = ("time/", "throughput/")


def _over(tiny: str, out: Path, *extra: str) -> list[str]:
    return [
        f"model.path={tiny}",
        f"output_dir={out}",
        "model.dtype=float32",
        "train.prompts_per_step=2",
        "rollout.num_generations=3",
        "rollout.max_new_tokens=5",
        "train.micro_batch_size=3",
        "eval.every=2",
        "eval.num_samples=3",
        "logging.report_to=[]",
        "logging.progress_bar=false",
        "logging.samples_every=0",
        f"rewards=[{{fn: '{FIXTURES}:length_reward'}}]",
        "optim.lr=1e-2",
        *extra,
    ]


def _metrics(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def _assert_same_rows(full: Path, part: Path) -> None:
    a, b = _metrics(full), _metrics(part)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-6), (ra["step"], k)
    assert a[-1]["loss/policy"] != 0.0


def test_resumed_run_equals_uninterrupted_run(tiny_model_dir, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    Trainer(load_config(RECIPE, _over(tiny_model_dir, full, "train.max_steps=4"))).train()
    Trainer(load_config(RECIPE, _over(tiny_model_dir, part, "train.max_steps=2"))).train()
    Trainer(load_config(RECIPE, _over(tiny_model_dir, part, "train.max_steps=4", "train.resume_from=latest"))).train()
    _assert_same_rows(full, part)


@pytest.mark.parametrize("name", ["gspo", "cispo", "sapo"])
def test_a_grpo_checkpoint_resumes_as_a_kin_loss(name, tiny_model_dir, tmp_path):
    """Same trainable parameters and optimizer groups (the rows say so): the run goes on with the other loss, and
    the change is written to the run's history."""
    out = tmp_path / "run"
    Trainer(load_config(RECIPE, _over(tiny_model_dir, out, "train.max_steps=1", "eval.every=0"))).train()
    more = ("train.max_steps=2", "eval.every=0", f"algorithm.name={name}", "train.resume_from=latest")
    Trainer(load_config(RECIPE, _over(tiny_model_dir, out, *more))).train()
    assert [r["step"] for r in _metrics(out)] == [1, 2]
    (history,) = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert f'algorithm.name: "grpo" -> "{name}"' in history["changes"]


PPO = REPO / "recipes" / "ppo_arithmetic_smollm2.yaml"
# running state beyond the adapter: the value head, the adaptive KL coefficient and running reward statistics
PPO_STATE = (
    "algorithm.beta=0.05",
    "algorithm.kl_target=0.001",
    "algorithm.kl_horizon=20",
    "algorithm.reward_norm=running",
)


def test_ppo_resumed_run_equals_uninterrupted_run(tiny_model_dir, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    Trainer(load_config(PPO, _over(tiny_model_dir, full, "train.max_steps=4", *PPO_STATE))).train()
    Trainer(load_config(PPO, _over(tiny_model_dir, part, "train.max_steps=2", *PPO_STATE))).train()
    resumed = Trainer(
        load_config(PPO, _over(tiny_model_dir, part, "train.max_steps=4", "train.resume_from=latest", *PPO_STATE))
    )
    assert resumed.kl_ctl.value != 0.05 and resumed.reward_stats.count == 12  # restored, not fresh
    resumed.train()
    _assert_same_rows(full, part)
    assert "value/mean" in _metrics(part)[-1]


@pytest.mark.slow
def test_ppo_zero2_two_process_resume_equals_uninterrupted_run(tiny_model_dir, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    _launch_zero2(tiny_model_dir, full, "train.max_steps=4", *PPO_STATE, recipe=PPO)
    _launch_zero2(tiny_model_dir, part, "train.max_steps=2", *PPO_STATE, recipe=PPO)
    _launch_zero2(tiny_model_dir, part, "train.max_steps=4", "train.resume_from=latest", *PPO_STATE, recipe=PPO)
    _assert_same_rows(full, part)


def _launch_zero2(tiny: str, out: Path, *extra: str, recipe: Path = RECIPE) -> str:
    proc = launch("zero2", "-m", "rlhf.train", recipe, *_over(tiny, out, *extra))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


@pytest.mark.slow
def test_zero2_two_process_resume_equals_uninterrupted_run_and_falls_back(tiny_model_dir, tmp_path):
    """DeepSpeed ZeRO-2 on 2 processes: optimizer state sharded over the ranks, saved by the engine, one shard each."""
    full, part = tmp_path / "full", tmp_path / "part"
    _launch_zero2(tiny_model_dir, full, "train.max_steps=4")
    _launch_zero2(tiny_model_dir, part, "train.max_steps=2")
    err = _launch_zero2(tiny_model_dir, part, "train.max_steps=4", "train.resume_from=latest")
    assert "resumed from" in err and "step-000002 at step 2" in err
    _assert_same_rows(full, part)

    root = part / "checkpoints"
    ckpts = list_checkpoints(root)
    assert [c.name for c in ckpts] == ["step-000002", "step-000004"]
    manifest = json.loads((ckpts[-1] / "manifest.json").read_text())
    assert (manifest["backend"], manifest["zero_stage"], manifest["world_size"]) == ("deepspeed", 2, 2)
    shards = sorted(p.name for p in (ckpts[-1] / "deepspeed" / "state").glob("zero_pp_rank_*_optim_states.pt"))
    assert len(shards) == 2  # one optimizer shard per rank, not rank 0's alone

    # a truncated shard of the newest checkpoint: named when asked for, skipped by `latest`
    shard = ckpts[-1] / "deepspeed" / "state" / shards[1]
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(
        CheckpointError, match=rf"step-000004 could not be loaded: deepspeed/state/{shards[1]} has 1000"
    ):
        resolve_resume(str(ckpts[-1]), root)
    assert resolve_resume("latest", root) == ckpts[0]

    # a DeepSpeed checkpoint cannot restore a single-process run's optimizer: said before anything is trained
    cfg = load_config(RECIPE, _over(tiny_model_dir, part, "train.max_steps=5", f"train.resume_from={ckpts[0]}"))
    with pytest.raises(
        CheckpointError, match=r"step-000002 was written by a DeepSpeed ZeRO-2 run and this is a single"
    ):
        Trainer(cfg)


def test_corrupt_checkpoint_is_named_and_latest_falls_back(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    Trainer(
        load_config(RECIPE, _over(tiny_model_dir, out, "train.max_steps=2", "train.save_every=1", "eval.every=0"))
    ).train()
    ckpts = list_checkpoints(out / "checkpoints")
    assert [c.name for c in ckpts] == ["step-000001", "step-000002"]
    (ckpts[-1] / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"step-000002 is missing adapter/adapter_model.safetensors"):
        resolve_resume(str(ckpts[-1]), out / "checkpoints")
    assert resolve_resume("latest", out / "checkpoints") == ckpts[0]
    # a half-written directory (no COMPLETE marker) is ignored by `latest`
    (out / "checkpoints" / "step-000009").mkdir()
    assert resolve_resume("latest", out / "checkpoints") == ckpts[0]
    # garbage of the recorded size passes the manifest check and fails while loading, still naming the checkpoint
    optimizer_file = ckpts[0] / "optimizer.pt"
    optimizer_file.write_bytes(b"x" * optimizer_file.stat().st_size)
    cfg = load_config(RECIPE, _over(tiny_model_dir, out, "train.max_steps=3", f"train.resume_from={ckpts[0]}"))
    with pytest.raises(CheckpointError, match="step-000001 could not be loaded"):
        Trainer(cfg)
    # an overwritten file of another size is caught before loading: nothing usable is left
    optimizer_file.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="step-000001 could not be loaded: optimizer.pt has 16 bytes"):
        resolve_resume(str(ckpts[0]), out / "checkpoints")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):  # refused: never a silent fresh start
        resolve_resume("latest", out / "checkpoints")


def test_non_finite_loss_is_skipped_then_stops(tiny_model_dir, tmp_path, monkeypatch):
    from dataclasses import replace

    from rlhf.algorithms import ALGORITHMS

    real = ALGORITHMS["grpo"].policy_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        loss, m = real(*args, **kwargs)
        calls["n"] += 1
        # two micro-batches per step: step 1 is fine, every later step is NaN
        return (loss * float("nan") if calls["n"] > 2 else loss), m

    monkeypatch.setitem(ALGORITHMS, "grpo", replace(ALGORITHMS["grpo"], policy_loss=flaky))
    out = tmp_path / "run"
    trainer = Trainer(
        load_config(
            RECIPE,
            _over(
                tiny_model_dir, out, "train.max_steps=6", "train.save_every=1", "train.max_bad_steps=2", "eval.every=0"
            ),
        )
    )
    with pytest.raises(FloatingPointError, match="2 steps in a row had a non-finite loss"):
        trainer.train()
    rows = _metrics(out)
    assert [r["optim/skipped_steps"] for r in rows] == [0, 1]
    assert all(torch.isfinite(p).all() for p in trainer.peft_model.parameters())
    from safetensors.torch import load_file

    saved = load_file(str(out / "checkpoints" / "step-000001" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in saved.values())


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "rlhf.train",
        str(RECIPE),
        *_over(tiny_model_dir, out, "train.max_steps=100000", "eval.every=0"),
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text():
        time.sleep(0.2)
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[1][-2000:]
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "stop requested (SIGTERM)" in err
    ckpts = list_checkpoints(out / "checkpoints")
    assert ckpts, err[-2000:]
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert ckpts[-1].name == f"step-{last:06d}"
