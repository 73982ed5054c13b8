"""Asynchronous rollouts (train.max_staleness = K): the schedule keeps every batch at most K versions behind whether the
trainer or the rollout is the slow side; a run killed (SIGKILL) at random points and resumed trains every prompt
exactly once per epoch and ends with the adapter of the uninterrupted run; a SIGTERM still ends it within the grace
period; a failed or hung worker is an error naming what it was doing; two ZeRO-2 ranks stay in lockstep when one
rank's rollout is slower."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.async_rollout import TRAINED_PROMPTS, RolloutWorkerError
from rlhf.collector import Collector
from rlhf.config import ConfigError, load_config
from rlhf.trainer import Trainer
from rlhf.update import Updater
from tests.conftest import ACCELERATE, launch

REPO = Path(__file__).resolve().parents[1]
GRPO = REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"
PPO = REPO / "recipes" / "ppo_arithmetic_smollm2.yaml"
FIXTURES = REPO / "tests" / "reward_fixtures.py"
ASYNC_FIXTURES = REPO / "tests" / "async_fixtures.py"
NUM_PROMPTS, PER_STEP, STEPS = 6, 2, 9  # three epochs of three steps


def _over(tiny: str, out: Path, *extra: str, reward: str = f"{FIXTURES}:length_reward") -> list[str]:
    return [
        f"model.path={tiny}",
        f"output_dir={out}",
        "model.dtype=float32",
        f"data.arithmetic.num_train={NUM_PROMPTS}",
        f"train.prompts_per_step={PER_STEP}",
        "rollout.num_generations=3",
        "rollout.max_new_tokens=5",
        "train.micro_batch_size=3",
        "eval.every=0",
        "logging.report_to=[]",
        "logging.progress_bar=false",
        "logging.samples_every=0",
        f"rewards=[{{fn: '{reward}'}}]",
        "optim.lr=1e-2",
        "train.max_staleness=1",
        *extra,
    ]


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _trained(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / TRAINED_PROMPTS).read_text().splitlines()]


def _assert_each_prompt_once_per_epoch(lines: list[dict], steps: int) -> None:
    """trained_prompts.jsonl lines: steps 1..steps once each; every whole epoch trains every prompt exactly once, and
    a partial last one no prompt twice."""
    assert [r["step"] for r in lines] == list(range(1, steps + 1))
    order = [i for r in lines for i in r["prompts"]]
    for e in range(0, len(order), NUM_PROMPTS):
        epoch = order[e : e + NUM_PROMPTS]
        want = list(range(NUM_PROMPTS)) if len(epoch) == NUM_PROMPTS else sorted(set(epoch))
        assert sorted(epoch) == want, f"epoch {e // NUM_PROMPTS} trained {epoch}"


@pytest.mark.parametrize("slow", ["trainer", "rollout"])
def test_staleness_never_exceeds_k_with_a_slow_trainer_or_a_slow_rollout(slow, tiny_model_dir, tmp_path, monkeypatch):
    """K = 2 here. The trainer sleeping in every update, or the worker sleeping in every batch: either way each batch
    is exactly min(step - 1, K) versions behind; only who waits changes (time/rollout_wait)."""
    K, delay = 2, 0.8
    if slow == "trainer":
        update = Updater.__call__
        monkeypatch.setattr(Updater, "__call__", lambda self, *a, **k: (time.sleep(delay), update(self, *a, **k))[1])
    else:
        draw = Collector.draw_prompts
        monkeypatch.setattr(
            Collector, "draw_prompts", lambda self, *a, **k: (time.sleep(delay), draw(self, *a, **k))[1]
        )
    out = tmp_path / "run"
    cfg = load_config(GRPO, _over(tiny_model_dir, out, "train.max_steps=5", f"train.max_staleness={K}"))
    Trainer(cfg).train()
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    for r in rows:
        behind = min(r["step"] - 1, K)
        assert r["rollout/staleness"] == r["rollout/staleness_max"] == behind <= K
        assert r["rollout/policy_version"] == r["step"] - 1 - behind
        assert r["rollout/regenerated"] == 0
        assert torch.isfinite(torch.tensor(r["loss/policy"]))
    waits = [r["time/rollout_wait"] for r in rows[2:]]
    median = sorted(waits)[len(waits) // 2]
    if slow == "rollout":  # the trainer waits for the worker's batches
        assert median > 0.4 * delay, waits
    else:  # the worker had its batches ready while the trainer slept
        assert median < 0.5 * delay, waits
    # it trained: the adapter's B matrices start at zero and moved
    b = [t for k, t in load_file(str(out / "adapter" / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert b and any(t.abs().sum() > 0 for t in b)
    _assert_each_prompt_once_per_epoch(_trained(out), 5)


def test_ppo_trains_with_k1_the_values_from_the_current_critic(tiny_model_dir, tmp_path):
    """PPO with K = 1, evaluated at steps 0, 2 and 3 through the worker's engine (with the current weights, while the
    worker waits)."""
    out = tmp_path / "run"
    over = _over(tiny_model_dir, out, "train.max_steps=3", "eval.every=2", "eval.num_samples=3")
    Trainer(load_config(PPO, over)).train()
    evals = [r for r in _rows(out) if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 2, 3]
    rows = [r for r in _rows(out) if "rollout/staleness" in r]
    assert [r["rollout/staleness"] for r in rows] == [0.0, 1.0, 1.0]
    assert all(
        torch.isfinite(torch.tensor([r["loss/value"], r["loss/policy"], r["tis/weight_mean"]])).all() for r in rows
    )


def test_a_k1_checkpoint_resumed_synchronously_trains_the_pending_prompts_first(tiny_model_dir, tmp_path):
    """A checkpoint records the prompts drawn ahead and not trained on; a run resumed from it with K = 0 trains them
    next, the same prompts the K = 1 run trained at those steps, and then goes on with the sampler."""
    run, sync = tmp_path / "run", tmp_path / "sync"
    Trainer(
        load_config(GRPO, _over(tiny_model_dir, run, "train.max_steps=4", "train.save_every=1", "train.keep_last=4"))
    ).train()
    ckpt = run / "checkpoints" / "step-000002"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert [p["step"] for p in state["rollout_pending"]] == [3, 4]  # drawn at the end of steps 1 and 2
    assert state["sampler"] == {"epoch": 1, "pos": 4 * PER_STEP - NUM_PROMPTS}  # 4 batches drawn: 1 epoch and 2
    over = _over(tiny_model_dir, sync, "train.max_steps=6", f"train.resume_from={ckpt}", "train.max_staleness=0")
    Trainer(load_config(GRPO, over)).train()
    lines = _trained(run)[:2] + _trained(sync)
    assert _trained(sync)[:2] == [{**r, "version": r["step"] - 1} for r in _trained(run)[2:4]]
    _assert_each_prompt_once_per_epoch(lines, 6)


def test_settings_that_cannot_run_asynchronously_are_refused(tiny_model_dir, tmp_path):
    over = _over(tiny_model_dir, tmp_path / "run", "algorithm.dynamic_sampling=true")
    with pytest.raises(ConfigError, match="train.max_staleness=1 generates on a background thread.*dynamic_sampling"):
        Trainer(load_config(GRPO, over))
    with pytest.raises(ConfigError, match="train.max_staleness must be >= 0"):
        Trainer(load_config(GRPO, _over(tiny_model_dir, tmp_path / "run", "train.max_staleness=-1")))


def test_a_failed_or_hung_worker_is_an_error_naming_what_it_was_doing(tiny_model_dir, tmp_path):
    over = _over(tiny_model_dir, tmp_path / "a", "train.max_steps=3", reward=f"{FIXTURES}:raising_reward")
    with pytest.raises(RolloutWorkerError, match=r"batch of step 1 \(policy version 0\): .*boom"):
        Trainer(load_config(GRPO, over)).train()
    over = _over(
        tiny_model_dir, tmp_path / "b", "train.max_steps=3", "train.rollout_timeout=3",
        reward=f"{ASYNC_FIXTURES}:hangs_on_second_call",
    )  # fmt: skip
    t0 = time.monotonic()
    with pytest.raises(
        RolloutWorkerError,
        match=r"(?s)generating and scoring the batch of step 2 .*past train.rollout_timeout=3.*reward_function.py",
    ):
        Trainer(load_config(GRPO, over)).train()
    assert time.monotonic() - t0 < 60


def _spawn(tiny: str, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rlhf.train", str(GRPO), *_over(tiny, out, *extra)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _steps_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_killed_at_random_points_and_resumed_trains_each_prompt_once_and_ends_as_uninterrupted(
    tiny_model_dir, tmp_path
):
    """Three interruptions at random points (SIGKILL, SIGTERM, SIGKILL), each followed by resume_from=latest. The
    schedule is a function of the step numbers and every batch samples with its own seeded generator, so the
    resumed run samples the batches the checkpoint recorded as pending with the weights it recorded: the final
    adapter equals the uninterrupted run's bit for bit (one intra-op thread; with several, float sums may be
    ordered differently between runs)."""
    common = (f"train.max_steps={STEPS}", "train.save_every=1", "train.keep_last=2")
    full = tmp_path / "full"
    Trainer(load_config(GRPO, _over(tiny_model_dir, full, *common))).train()

    seed = int(time.time())
    rng = random.Random(seed)
    part = tmp_path / "part"
    for n, sig in enumerate((signal.SIGKILL, signal.SIGTERM, signal.SIGKILL)):
        # kill once this try has logged 1-3 rows more than the last one left (it first cuts them back to its
        # checkpoint), then up to 0.3 s later: in a rollout wait, an update, a checkpoint write, ...
        target = min(_steps_logged(part) + rng.randint(1, 3), STEPS - 1)
        proc = _spawn(tiny_model_dir, part, *common, *(["train.resume_from=latest"] if n else []))
        deadline = time.monotonic() + 120
        while _steps_logged(part) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        sent, logged = time.monotonic(), _steps_logged(part)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        print(f"seed {seed}: {sig.name} after {logged} logged rows, exit {proc.returncode}")
        if sig == signal.SIGTERM:
            assert time.monotonic() - sent < 30, "SIGTERM took longer than the grace period"
            assert proc.returncode == 0, err[-3000:]
    final = _spawn(tiny_model_dir, part, *common, "train.resume_from=latest")
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, f"seed {seed}: {err[-3000:]}"
    assert "resumed from" in err, err[-3000:]

    _assert_each_prompt_once_per_epoch(_trained(part), STEPS)
    assert _trained(part) == _trained(full), f"seed {seed}"
    a = load_file(str(full / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(part / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), f"seed {seed}: the adapters differ"


@pytest.mark.slow
@pytest.mark.skipif(ACCELERATE is None, reason="accelerate launcher not installed")
def test_zero2_two_processes_stay_in_lockstep_when_one_rollout_is_slower(tiny_model_dir, tmp_path):
    """Rank 1's rollouts are 0.5 s slower; both ranks hand over at the same point, so the run ends, every step trains
    one batch per rank, and resuming both ranks from the step-2 checkpoint ends with the same adapter."""
    full, part = tmp_path / "full", tmp_path / "part"
    slow = {"SLOW_ROLLOUT_S": "0.5"}
    reward = f"{ASYNC_FIXTURES}:slow_on_rank_one"
    over = _over(tiny_model_dir, full, "train.max_steps=4", "train.save_every=2", "train.keep_last=4", reward=reward)
    res = launch("zero2", "-m", "rlhf.train", GRPO, *over, env=slow)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _rows(full)
    assert [r["rollout/staleness"] for r in rows] == [0.0, 1.0, 1.0, 1.0]
    _assert_each_prompt_once_per_epoch(_trained(full), 4)
    ckpt = full / "checkpoints" / "step-000002"
    assert [p["step"] for p in json.loads((ckpt / "trainer_state.json").read_text())["rollout_pending"]] == [3, 4]
    over = _over(tiny_model_dir, part, "train.max_steps=4", f"train.resume_from={ckpt}", reward=reward)
    res = launch("zero2", "-m", "rlhf.train", GRPO, *over, env=slow)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _trained(part) == _trained(full)[2:]
    a = load_file(str(full / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(part / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed 2-rank run ended with another adapter"
