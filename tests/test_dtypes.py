"""`dtype: auto`: bfloat16 where the device computes it natively, float32 where it would be emulated; an explicit
dtype wins; the resolved value is what a run records, and a resume across machine classes is allowed with a warning."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf import dtypes
from rlhf.config import load_config
from rlhf.dtypes import Choice, native_bf16, resolve_dtype
from rlhf.run_dir import check_resume_config

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "demo_arithmetic_smollm2.yaml"
# what torch does on a CPU without native bfloat16, reproduced on any x86 CPU: oneDNN and ATen kept to AVX2
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


@pytest.fixture
def x86(monkeypatch):
    monkeypatch.setattr(dtypes.platform, "machine", lambda: "x86_64")


def test_avx2_cpu_gets_float32(x86):
    c = native_bf16("cpu", flags={"avx", "avx2", "fma", "avx512f"})
    assert c.dtype == "float32" and "no AVX512_BF16 or AMX" in c.reason


@pytest.mark.parametrize("unit", ["avx512_bf16", "amx_bf16"])
def test_cpu_with_bf16_units_gets_bfloat16(x86, monkeypatch, unit):
    monkeypatch.setattr(dtypes, "torch_may_use_bf16_units", lambda: True)
    c = native_bf16("cpu", flags={"avx2", "avx512f", unit})
    assert c.dtype == "bfloat16" and unit.upper() in c.reason


def test_bf16_units_that_torch_may_not_use_give_float32(x86, monkeypatch):
    monkeypatch.setattr(dtypes, "torch_may_use_bf16_units", lambda: False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    c = native_bf16("cpu", flags={"avx512_bf16"})
    assert c.dtype == "float32" and "AVX2" in c.reason


@pytest.mark.parametrize(("speedup", "want"), [(0.02, "float32"), (1.1, "float32"), (2.2, "bfloat16")])
def test_unreadable_flags_fall_back_to_the_timed_probe(monkeypatch, speedup, want):
    monkeypatch.setattr(dtypes, "bf16_speedup", lambda: speedup)
    c = native_bf16("cpu", flags=None)
    assert c.dtype == want and "probe" in c.reason


def test_probe_measures_this_cpu():
    ratio = dtypes.bf16_speedup()
    assert ratio > 0 and dtypes.bf16_speedup() == ratio  # timed once, then cached for the process


def test_explicit_dtype_wins_and_a_wrong_name_is_named(monkeypatch):
    monkeypatch.setattr(dtypes, "native_bf16", lambda device: pytest.fail("auto was not asked for"))
    for name in ("float32", "bfloat16", "float16"):
        assert resolve_dtype(name) == Choice(name, "set explicitly")
    with pytest.raises(ValueError, match="'bf16' is not one of auto, float32, bfloat16, float16"):
        resolve_dtype("bf16")


@pytest.mark.parametrize("resolved", ["float32", "bfloat16"])
def test_recipe_auto_is_resolved_logged_and_recorded(monkeypatch, caplog, tmp_path, resolved):
    from rlhf.config import save_config

    monkeypatch.setattr(dtypes, "native_bf16", lambda device: Choice(resolved, "because the test says so"))
    monkeypatch.setattr(dtypes, "_logged", set())
    with caplog.at_level(logging.INFO, logger="rlhf.dtypes"):
        cfg = load_config(DEMO)
    assert cfg.model.dtype == resolved
    assert f"model.dtype: auto -> {resolved} (because the test says so)" in caplog.text
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["dtype"] == resolved
    assert load_config(DEMO, ["model.dtype=float32"]).model.dtype == "float32"  # explicit wins


def test_teacher_dtype_resolved_only_for_distillation(monkeypatch):
    monkeypatch.setattr(dtypes, "native_bf16", lambda device: Choice("float32", "test"))
    assert load_config(REPO / "recipes" / "distill_arithmetic_smollm2.yaml").algorithm.teacher.dtype == "float32"
    # other algorithms do not read the teacher: its knob keeps its default, so it is not flagged as set
    assert load_config(REPO / "recipes" / "grpo_arithmetic_smollm2.yaml").algorithm.teacher.dtype == "auto"


def test_demo_recipe_resolves_to_float32_where_bf16_is_emulated():
    """A fresh process with torch kept to AVX2 kernels, as on a CPU without native bfloat16."""
    code = (
        "import json; from rlhf.config import load_config; from rlhf.dtypes import native_bf16;"
        f"print(json.dumps([load_config({str(DEMO)!r}).model.dtype, native_bf16().reason]))"
    )
    env = {**os.environ, **AVX2_ONLY}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    dtype, reason = json.loads(res.stdout.strip().splitlines()[-1])
    assert dtype == "float32", reason


def test_resume_across_machine_classes_warns_not_refuses(caplog):
    saved = {"model": {"path": "m", "dtype": "bfloat16"}, "seed": 0}
    new = {"model": {"path": "m", "dtype": "float32"}, "seed": 0}
    with caplog.at_level(logging.WARNING, logger="rlhf.run_dir"):
        changes = check_resume_config(saved, new)
    assert changes == ['model.dtype: "bfloat16" -> "float32"']
    assert "another weight dtype" in caplog.text and "set the old dtype explicitly" in caplog.text


def test_bf16_checkpoint_resumes_in_float32(tiny_model_dir, tmp_path, caplog):
    from rlhf.trainer import Trainer

    fixtures = REPO / "tests" / "reward_fixtures.py"
    over = [
        f"model.path={tiny_model_dir}",
        f"output_dir={tmp_path / 'run'}",
        "train.prompts_per_step=2",
        "rollout.num_generations=3",
        "rollout.max_new_tokens=4",
        "train.micro_batch_size=3",
        "eval.every=0",
        "logging.report_to=[]",
        "logging.samples_every=0",
        f"rewards=[{{fn: '{fixtures}:length_reward'}}]",
    ]
    Trainer(load_config(DEMO, [*over, "model.dtype=bfloat16", "train.max_steps=1", "train.save_every=1"])).train()
    with caplog.at_level(logging.WARNING, logger="rlhf.run_dir"):
        Trainer(
            load_config(DEMO, [*over, "model.dtype=float32", "train.max_steps=2", "train.resume_from=latest"])
        ).train()
    assert "another weight dtype" in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss/policy" in r][-1] == 2
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]["dtype"] == "float32"
