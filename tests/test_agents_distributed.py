"""Agent episodes under 2-process DeepSpeed launches, with the agents of rank 1 slower (1 s before their first call):
both ranks make the same number of engine calls in every draw (lockstep; under ZeRO-3 each call gathers the sharded
weights, a collective a skipped call would hang), and training and evaluation finish with matching log-probs."""

import json
from pathlib import Path

import pytest

from tests.conftest import launch, tiny_run

pytest.importorskip("fastapi", reason="the agent endpoint needs the `agents` extra: pip install -e '.[agents]'")
pytest.importorskip("openai", reason="the test agents use the openai client: pip install -e '.[agents]'")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_process_agents_stay_in_lockstep_when_one_rank_is_slower(stage, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    proc = launch(
        f"zero{stage}",
        "-m",
        "rlhf.train",
        REPO / "recipes" / "grpo_agent_arithmetic_smollm2.yaml",
        *tiny_run(tiny_model_dir, out),
        "train.prompts_per_step=4",
        "train.max_steps=2",
        f"agent.run={REPO / 'tests' / 'agent_fixtures.py'}:slow_on_rank1_agent",
        "agent.kwargs={}",
        "agent.save_traces=true",
        "eval.every=2",
        "eval.num_samples=3",  # uneven shards: rank 1 evaluates one prompt, rank 0 two
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss/policy" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["rollout/mismatch_abs_max"] < 1e-4 and r["agent/calls"] == 2.0 for r in steps)
    assert all(r["agent/failed"] == 0.0 for r in steps)
    draws = [
        [json.loads(line) for line in (out / "traces" / f"rank{k}.jsonl").read_text().splitlines()] for k in (0, 1)
    ]
    assert len(draws[0]) == len(draws[1]) == 4  # step-0 evaluation, 2 training draws, final evaluation
    assert [d["engine_calls"] for d in draws[0]] == [d["engine_calls"] for d in draws[1]]
    assert [len(d["episodes"]) for d in draws[1]] == [1, 8, 8, 1]
    manifest = json.loads((out / "checkpoints" / "step-000002" / "manifest.json").read_text())
    assert (manifest["backend"], manifest["zero_stage"], manifest["world_size"]) == ("deepspeed", stage, 2)
