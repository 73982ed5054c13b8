"""The benchmark CLI on the tiny model (one warm-up, one timed step) and its lower-bound arithmetic by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlhf.benchmark import (
    forward_bound_s,
    generation_bound_s,
    main,
    non_embedding_params,
    training_bound_s,
    training_flops,
    weight_bytes,
)

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"


def test_generation_bound_by_hand():
    # 135M bf16 parameters = 270 MB read per decode step; at 9 GB/s that is 30 ms a step
    assert generation_bound_s(1, 135e6 * 2, 9e9) == pytest.approx(0.030)
    assert generation_bound_s(64, 270e6, 9e9) == pytest.approx(64 * 0.030)


def test_training_bound_by_hand():
    # 100M non-embedding parameters x 1,000 tokens x 6 = 6e11 FLOP; at 2.2e12 FLOP/s that is 0.2727 s
    assert training_flops(100e6, 1000) == pytest.approx(6e11)
    assert training_bound_s(100e6, 1000, 2.2e12) == pytest.approx(6e11 / 2.2e12)
    assert forward_bound_s(100e6, 1000, 2.2e12) == pytest.approx(training_bound_s(100e6, 1000, 2.2e12) / 3)


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_counts(tied):
    cfg = LlamaConfig(
        vocab_size=100,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    total = sum(p.numel() for p in model.parameters())  # parameters() already lists a tied tensor once
    assert weight_bytes(model) == 2 * total
    # the input embedding is a lookup; a tied head is the same tensor and does cost FLOPs
    assert non_embedding_params(model) == (total if tied else total - 100 * 16)


def test_benchmark_json_on_tiny_model(tiny_model_dir, capsys):
    overrides = [
        f"model.path={tiny_model_dir}",
        "model.dtype=float32",
        "train.prompts_per_step=2",
        "train.micro_batch_size=3",
        "rollout.num_generations=3",
        "rollout.max_new_tokens=6",
        "optim.warmup_steps=0",
        "data.arithmetic.num_train=20",
        "data.arithmetic.num_eval=5",
    ]
    assert main([str(RECIPE), *overrides, "--steps", "1", "--warmup", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)  # stdout holds the JSON object alone
    assert res["steps"] == 1 and res["warmup"] == 1 and res["dtype"] == "float32"
    assert res["sequences_per_step"] == 6 and res["max_new_tokens"] == 6
    for key in ("step_s", "gen_tokens_per_s", "trained_tokens_per_s", "peak_memory_mb", "prompt_mean_len"):
        assert res[key] > 0, key
    assert set(res["stages"]) == {"rollout", "ref", "reward", "update", "step"}
    for name in ("rollout", "update", "step"):
        assert res["stages"][name]["s"] > 0, name
    for name in ("rollout", "update"):
        st = res["stages"][name]
        assert st["bound_s"] > 0 and st["ratio"] == pytest.approx(st["s"] / st["bound_s"])
    assert res["stages"]["ref"]["bound_s"] is None  # beta 0 and on-policy: no scoring pass
    est = res["estimate"]
    assert est["bandwidth"] == 9e9 and est["peak_flops"] > 1e9  # CPU: this machine's float32 matmul rate
    assert est["weight_bytes"] > 0 and est["non_embedding_params"] > 0 and est["decode_steps"] >= 1
    # the dtype table: both dtypes' matmul rates measured, the run's dtype timed, the other not run
    rows = res["dtypes"]["rows"]
    assert rows["float32"]["matmul_gflops"] > 0 and rows["bfloat16"]["matmul_gflops"] > 0
    assert rows["float32"]["step_s"] == res["step_s"] and "step_s" not in rows["bfloat16"]
    assert res["dtypes"]["auto"] in ("float32", "bfloat16") and res["dtypes"]["reason"]


def test_dtypes_to_run(monkeypatch):
    from rlhf import dtypes
    from rlhf.benchmark import dtypes_to_run, format_dtypes

    monkeypatch.setattr(dtypes, "native_bf16", lambda: dtypes.Choice("bfloat16", "native here"))
    assert dtypes_to_run([], None) == ["float32", "bfloat16"]
    monkeypatch.setattr(dtypes, "native_bf16", lambda: dtypes.Choice("float32", "emulated here"))
    assert dtypes_to_run([], None) == ["float32"]
    assert dtypes_to_run(["model.dtype=bfloat16"], None) == ["bfloat16"]
    assert dtypes_to_run([], "float32, bfloat16") == ["float32", "bfloat16"]
    with pytest.raises(SystemExit, match="bf16 not among"):
        dtypes_to_run([], "bf16")
    summary = {
        "auto": "float32",
        "reason": "emulated here",
        "rows": {
            "float32": {"matmul_gflops": 50.0, "auto": True, "gen_tokens_per_s": 9.0, "trained_tokens_per_s": 99.0}
            | {"step_s": 1.5},
            "bfloat16": {"matmul_gflops": 1.0, "auto": False},
        },
    }
    text = format_dtypes(summary)
    assert "auto picks float32: emulated here" in text and "<- auto" in text.splitlines()[2]
    assert "not run" in text.splitlines()[3]


def test_gpu_check_script_summarises_a_run(tiny_model_dir, tmp_path):
    """scripts/gpu_check.py's arithmetic, run on the CPU with the tiny model (no GPU here)."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    over = [f"model.path={tiny_model_dir}", "train.prompts_per_step=2", "train.micro_batch_size=4"]
    over += ["rollout.num_generations=4", "rollout.max_new_tokens=4", "eval.num_samples=4", "algorithm.draw_prompts=2"]
    cmd = [sys.executable, str(script), "--cpu", "--steps", "3", "--output-dir", str(tmp_path), *over]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["update_tflops"] > 0 and summary["rollout_tokens_per_s"] > 0
    assert [s for s, _ in summary["accuracy"]] == [0, 3] and "held-out accuracy: step 0:" in res.stdout
