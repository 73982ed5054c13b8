"""Multi-turn episodes under 2-process DeepSpeed ZeRO-2 and ZeRO-3 launches: episodes end at different turns on the two
ranks, which still make the same number of engine calls (lockstep; under ZeRO-3 each call gathers the sharded weights,
a collective, so a rank that skipped one would hang the other), and the evaluation's uneven shards run episodes too."""

import json
from pathlib import Path

import pytest

from tests.conftest import launch, tiny_run

pytestmark = pytest.mark.slow  # 2-process accelerate launches

REPO = Path(__file__).resolve().parents[1]
ENVS = REPO / "tests" / "env_fixtures.py"


@pytest.mark.parametrize("stage", [2, 3])
def test_two_process_multi_turn_run(stage, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    proc = launch(
        f"zero{stage}",
        "-m",
        "rlhf.train",
        REPO / "recipes" / "grpo_arithmetic_smollm2.yaml",
        *tiny_run(tiny_model_dir, out),
        "train.prompts_per_step=4",
        "train.max_steps=2",
        f"env.name={ENVS}:CountdownEnv",
        "env.kwargs={turns: 3, by_row: true}",
        "env.max_tokens=48",
        "eval.every=2",
        "eval.num_samples=5",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss/policy" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["rollout/mismatch_abs_max"] < 1e-4 for r in steps)
    assert all(1.0 <= r["env/turns"] <= 3.0 and r["env/observation_tokens"] > 0 for r in steps)
    assert [r["eval/num_samples"] for r in rows if "eval/accuracy" in r] == [5, 5]
    manifest = json.loads((out / "checkpoints" / "step-000002" / "manifest.json").read_text())
    assert (manifest["backend"], manifest["zero_stage"], manifest["world_size"]) == ("deepspeed", stage, 2)
