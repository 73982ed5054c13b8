"""Shared fixtures: a tiny Llama built from a config (seconds), with the real SmolLM2 tokenizer and chat template."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

FIXTURES = REPO / "tests" / "reward_fixtures.py"
ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_run(tiny_model_dir: str, out) -> list[str]:
    """Overrides that make any shipped recipe a seconds-long run on the tiny model: 2 prompts x 4 completions of
    <= 6 tokens, one micro-batch, no evaluation or trackers, a reward that varies within every group."""
    return [
        f"output_dir={out}",
        f"model.path={tiny_model_dir}",
        "model.dtype=float32",
        "rollout.max_new_tokens=6",
        "rollout.num_generations=4",
        "train.prompts_per_step=2",
        "train.micro_batch_size=4",
        "eval.every=0",
        "logging.report_to=[]",
        "logging.progress_bar=false",
        f"rewards=[{{fn: '{REPO / 'tests' / 'reward_fixtures.py'}:length_reward'}}]",
    ]


def launch(launcher: str, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    """`accelerate launch --num_processes 2` with recipes/accelerate/<launcher>.yaml; args follow (a script or
    `-m module`, then its arguments). `env` adds to this process's environment."""
    cmd = [
        ACCELERATE,
        "launch",
        "--config_file",
        str(REPO / "recipes" / "accelerate" / f"{launcher}.yaml"),
        "--num_processes",
        "2",
        *map(str, args),
    ]
    env = None if env is None else {**os.environ, **env}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def build_tiny_model(path: Path, seed: int = 0, **overrides) -> Path:
    """A 2-layer Llama with the real SmolLM2 tokenizer saved at `path`; `overrides` replace LlamaConfig fields."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rlhf.models import resolve_model_path

    real = resolve_model_path("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(real)
    fields = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = LlamaConfig(**(fields | overrides))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from rlhf.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture
def gsm8k_file(tmp_path):
    """Word problems in both hub layouts: GSM8K (question / answer) and MATH (problem / solution)."""
    rows = [
        {"question": f"Tom has {i} apples and buys {i + 1} more. How many?", "answer": f"... #### {2 * i + 1}"}
        for i in range(12)
    ]
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    math_rows = [{"problem": r["question"], "solution": f"So $\\boxed{{{2 * i + 1}}}$."} for i, r in enumerate(rows)]
    (tmp_path / "math.jsonl").write_text("\n".join(json.dumps(r) for r in math_rows))
    return path


def tiny_recipe_overrides(recipe: Path, tiny: str, out: Path, gsm8k: Path) -> list[str]:
    over = [
        f"model.path={tiny}",
        f"output_dir={out}",
        "train.max_steps=2",
        "train.prompts_per_step=2",
        "train.micro_batch_size=3",
        "rollout.num_generations=3",
        "rollout.max_new_tokens=6",
        "eval.every=1",
        "eval.num_samples=3",
        "eval.max_new_tokens=4",
        "model.dtype=float32",
        "logging.report_to=[]",
        "train.save_every=1",
        "logging.samples_every=1",
        "optim.warmup_steps=0",
        f"rewards=[{{fn: '{FIXTURES}:length_reward'}}]",
    ]
    from rlhf.config import load_config

    cfg = load_config(recipe)
    if cfg.algorithm.name == "distill":  # the recipe's teacher is a trained adapter of the real model
        over += ["algorithm.teacher.path=null", "algorithm.teacher.adapter=null", "algorithm.teacher.dtype=float32"]
    if cfg.data.path != "arithmetic":
        local = gsm8k if cfg.data.prompt_column == "question" else gsm8k.with_name("math.jsonl")
        over += [f"data.path={local}", "eval.every=0"]
    return over
