"""Behaviour is pinned: seeded 3-step tiny-model runs of every shipped recipe (and of variants that reach the other
update branches) give the metrics recorded in tests/golden/, single-process and once as a two-process ZeRO-2 run.
A refactor that changes a number fails here. Timings are left out; everything else is compared.

The runs are float32 (the tiny overrides say so), plus two cases in bfloat16 (`*_bfloat16`, emulated and slow where
the CPU has no native bf16, but the tiny model keeps them short) and one in `model.dtype=auto`, which records what
this CPU resolves to.

`RLHF_GOLDEN_EXACT=1` asks for bit-identical numbers.
`RLHF_RECORD_GOLDEN=1 pytest tests/test_same_metrics.py` rewrites the file (only do that for an intended change,
and say which keys moved and why). The numbers depend on the CPU's kernels: on another CPU model or torch version the
comparison is skipped with the reason, since float summation order differs there. Each CPU fingerprint has a file of
its own, `tests/golden/metrics-<fingerprint>.json`, so every machine class that recorded one checks something."""

from __future__ import annotations

import json
import math
import os
import platform
import re
from pathlib import Path

import pytest
import torch
from conftest import ACCELERATE, launch, tiny_recipe_overrides

from rlhf.config import load_config

pytestmark = pytest.mark.slow  # every recipe and branch trained 3 steps (~2 min)

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO / "tests" / "golden"
RECORD = os.environ.get("RLHF_RECORD_GOLDEN") == "1"
# RLHF_GOLDEN_EXACT=1 demands bit-identical numbers (the default allows summation-order noise)
TOL = dict(rel=0, abs=0) if os.environ.get("RLHF_GOLDEN_EXACT") == "1" else dict(rel=1e-5, abs=1e-7)
GRPO = REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"
PPO = REPO / "recipes" / "ppo_arithmetic_smollm2.yaml"
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
BRANCHES = [
    "algorithm.beta=0.1",
    "algorithm.kl_estimator=k3",
    "algorithm.num_iterations=2",
    "algorithm.num_minibatches=2",
    "algorithm.std_level=batch",
    "algorithm.loss_agg=seq-mean-token-sum-norm",
    "algorithm.clip_high=0.28",
    "train.micro_batch_size=2",
    "optim.schedule=cosine",
    "optim.warmup_steps=1",
    "rollout.top_k=50",
    "rollout.top_p=0.9",
    "rollout.temperature=0.8",
]
# agent recipes are left out: which calls share an engine batch depends on thread timing, so their samples are not
# reproducible from the seed (tests/test_agents.py checks them)
CASES: dict[str, tuple[Path, list[str]]] = {r.stem: (r, []) for r in RECIPES if "_agent_" not in r.stem} | {
    "grpo_branches": (GRPO, BRANCHES),
    "grpo_dr_seq_mean": (GRPO, ["algorithm.scale_by_std=false", "algorithm.loss_agg=seq-mean-token-mean"]),
    "reinforce": (GRPO, ["algorithm.name=reinforce", "algorithm.gamma=0.9"]),
    "reinforce_baseline": (GRPO, ["algorithm.name=reinforce_baseline", "algorithm.gamma=0.9"]),
    "ppo_running_norm_warmup": (
        PPO,
        [
            "algorithm.reward_norm=running",
            "algorithm.missing_eos_penalty=0.5",
            "algorithm.target_kl=0.05",
            "value.warmup_steps=1",
            "algorithm.num_minibatches=2",
        ],
    ),
    "grpo_bfloat16": (GRPO, ["model.dtype=bfloat16"]),
    "ppo_bfloat16": (PPO, ["model.dtype=bfloat16"]),
    "grpo_auto_dtype": (GRPO, ["model.dtype=auto"]),
}


def fingerprint() -> str:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    forced = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if os.environ.get(k)]
    # a forced kernel set (how the AVX2 class is reproduced on a newer CPU) sums in another order: its own file
    return f"torch {torch.__version__} | {cpu}" + "".join(f" | {f}" for f in forced)


def golden_file(fp: str) -> Path:
    """tests/golden/metrics-<fingerprint as a file name>.json"""
    return GOLDEN_DIR / ("metrics-" + re.sub(r"[^a-z0-9]+", "-", fp.lower()).strip("-") + ".json")


def metric_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))} for r in rows]


def compare(case: str, got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want), f"{case}: {len(got)} metric rows, recorded {len(want)}"
    for g, w in zip(got, want):
        # metrics added since the recording may appear; every recorded one must still be there, with its value
        assert set(w) <= set(g), f"{case} step {w.get('step')}: keys {sorted(set(w) - set(g))} are gone"
        for k, v in w.items():
            x = g[k]
            if isinstance(v, float) and math.isnan(v):
                assert isinstance(x, float) and math.isnan(x), f"{case} step {w['step']} {k}: {x} != NaN"
            else:
                assert x == pytest.approx(v, **TOL), f"{case} step {w['step']} {k}: {x} != {v}"


@pytest.fixture(scope="module")
def golden():
    path = golden_file(fingerprint())
    if RECORD:  # the selected cases are (re)recorded; the others keep their numbers
        old = json.loads(path.read_text()) if path.is_file() else {}
        data = {"fingerprint": fingerprint(), "runs": old.get("runs", {})}
        yield data
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        return
    if not path.is_file():
        recorded = sorted(json.loads(f.read_text())["fingerprint"] for f in GOLDEN_DIR.glob("metrics-*.json"))
        pytest.skip(
            f"no metrics recorded on `{fingerprint()}` (float order differs between CPUs); recorded: {recorded}"
        )
    yield json.loads(path.read_text())


def check(golden: dict, case: str, rows: list[dict]) -> None:
    if RECORD:
        golden["runs"][case] = rows
    else:
        if case not in golden["runs"]:  # a case added after this CPU's recording
            pytest.skip(f"{case} has no recorded metrics on this CPU: record it with RLHF_RECORD_GOLDEN=1 -k {case}")
        compare(case, rows, golden["runs"][case])


@pytest.mark.parametrize("case", sorted(CASES))
def test_seeded_run_gives_recorded_metrics(case, golden, tiny_model_dir, tmp_path, gsm8k_file):
    from rlhf.trainer import Trainer

    recipe, extra = CASES[case]
    out = tmp_path / "run"
    over = tiny_recipe_overrides(recipe, tiny_model_dir, out, gsm8k_file) + ["train.max_steps=3", *extra]
    Trainer(load_config(recipe, over)).train()
    check(golden, case, metric_rows(out))


@pytest.mark.skipif(ACCELERATE is None, reason="accelerate launcher not installed")
def test_two_process_zero2_run_gives_recorded_metrics(golden, tiny_model_dir, tmp_path, gsm8k_file):
    out = tmp_path / "run"
    over = tiny_recipe_overrides(PPO, tiny_model_dir, out, gsm8k_file) + ["train.max_steps=3", "train.save_every=0"]
    res = launch("zero2", "-m", "rlhf.train", PPO, *over)
    assert res.returncode == 0, res.stderr[-3000:]
    check(golden, "ppo_zero2_two_process", metric_rows(out))
