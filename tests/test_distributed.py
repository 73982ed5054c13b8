"""Two processes under `accelerate launch` on CPU (gloo): DDP and DeepSpeed ZeRO-2/3 run the GRPO recipe, with
gradient accumulation (2 micro-batches per optimizer step on each rank)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = shutil.which("accelerate", path=str(Path(__import__("sys").executable).parent))


@pytest.mark.parametrize("launcher", ["ddp", "zero2", "zero3"])
def test_two_process_run(launcher, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [
        ACCELERATE,
        "launch",
        "--config_file",
        str(REPO / "recipes" / "accelerate" / f"{launcher}.yaml"),
        "--num_processes",
        "2",
        "-m",
        "rlhf.train",
        str(REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"),
        f"model.path={tiny_model_dir}",
        "model.dtype=float32",
        "train.max_steps=2",
        "rollout.max_new_tokens=6",
        "rollout.num_generations=4",
        "train.micro_batch_size=4",
        "eval.every=2",
        "eval.num_samples=6",
        f"output_dir={out}",
        "logging.report_to=[]",
        "logging.progress_bar=false",
        f"rewards=[{{fn: '{REPO / 'tests' / 'reward_fixtures.py'}:length_reward'}}]",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss/policy" in r]
    assert [r["step"] for r in steps] == [1, 2]  # one writer, not one per rank
    assert all(torch.isfinite(torch.tensor(r["loss/policy"])) for r in steps)
    assert [r["eval/num_samples"] for r in rows if "eval/accuracy" in r] == [6, 6]  # shards summed over ranks
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert any(t.abs().sum() > 0 for k, t in saved.items() if "lora_B" in k), "LoRA B stayed zero: no update"
    assert all(r["optim/updates"] == 1 for r in steps)  # 2 micro-batches accumulate into one optimizer step
