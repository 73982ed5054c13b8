"""rlhf/run_dir.py: one run per output folder, no silent reuse of an earlier run, resume only with a config the
checkpoint can follow."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf.config import Config, flat_items, load_config, to_dict
from rlhf.run_dir import (
    INCOMPATIBLE,
    RUN_FILES,
    OutputDirError,
    ResumeConfigError,
    append_history,
    check_resume_config,
    claim_output_dir,
)

REPO = Path(__file__).resolve().parents[1]


def _earlier_run(out: Path) -> None:
    """What a finished run leaves behind, plus a file of the user's."""
    (out / "checkpoints" / "step-000002").mkdir(parents=True)
    (out / "checkpoints" / "step-000002" / "COMPLETE").write_text("ok\n")
    (out / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    (out / "adapter").mkdir()
    (out / "adapter" / "adapter_model.safetensors").write_bytes(b"x")
    (out / "samples.jsonl").write_text("{}\n")
    (out / "plots").mkdir()
    (out / "plots" / "overview.png").write_bytes(b"png")
    (out / "config.yaml").write_text("seed: 0\n")
    (out / "history.jsonl").write_text("{}\n")
    (out / "notes.txt").write_text("mine")


def test_claim_creates_the_folder_and_locks_it(tmp_path):
    out = tmp_path / "a" / "run"
    with claim_output_dir(out, resuming=False, overwrite=False) as lock:
        assert out.is_dir() and lock.held
        assert (out / ".lock").read_text().startswith(f"pid {os.getpid()} on ")
    assert not lock.held
    lock.release()  # a second release does nothing
    again = claim_output_dir(out, resuming=False, overwrite=False)  # released: free again
    again.release()


def test_a_file_or_an_unwritable_folder_is_named_with_the_fix(tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputDirError, match=rf"output_dir {f} is a file, not a folder; remove it or choose another"):
        claim_output_dir(f, resuming=False, overwrite=False)
    with pytest.raises(OutputDirError, match=rf"cannot create output_dir {f}/run: {f} is a file, not a folder"):
        claim_output_dir(f / "run", resuming=False, overwrite=False)

    real_open = os.open

    def refuse(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    out = tmp_path / "ro"
    with pytest.raises(OutputDirError, match=rf"output_dir {out} is not writable \(Permission denied: cannot create"):
        claim_output_dir(out, resuming=False, overwrite=False)


HOLDER = """
import sys, time
from rlhf.run_dir import claim_output_dir
lock = claim_output_dir(sys.argv[1], resuming=False, overwrite=False)
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_run_into_the_same_folder_fails_naming_the_pid(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked", proc.stderr.read()
        t0 = time.perf_counter()
        with pytest.raises(OutputDirError, match=rf"output_dir {out} is in use by another run \(pid {proc.pid} on "):
            claim_output_dir(out, resuming=True, overwrite=False)
        assert time.perf_counter() - t0 < 1.0  # at once, no waiting
    finally:
        proc.kill()  # a crash: the OS drops the lock with the process
        proc.wait()
    claim_output_dir(out, resuming=True, overwrite=False).release()


def test_the_same_process_claiming_again_takes_the_lock_over(tmp_path):
    first = claim_output_dir(tmp_path / "run", resuming=False, overwrite=False)
    second = claim_output_dir(tmp_path / "run", resuming=True, overwrite=False)
    assert second.held and not first.held
    first.release()  # holds nothing: the lock stays with `second`
    assert second.held
    second.release()


def test_a_fresh_run_refuses_an_earlier_run_and_names_the_ways_on(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    _earlier_run(out)
    with pytest.raises(OutputDirError) as e:
        claim_output_dir(out, resuming=False, overwrite=False)
    msg = str(e.value)
    assert "checkpoints/ (step-000002)" in msg and "metrics.jsonl (2 rows)" in msg
    assert "train.resume_from=latest" in msg and "train.overwrite=true" in msg
    assert (out / "checkpoints" / "step-000002").is_dir()  # nothing touched
    # the lock was let go with the refusal
    claim_output_dir(out, resuming=True, overwrite=False).release()

    # metrics rows alone count as an earlier run; an empty metrics file or a config alone do not
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(OutputDirError, match=r"holds an earlier run \(metrics.jsonl \(1 rows\)\)"):
        claim_output_dir(other, resuming=False, overwrite=False)
    (other / "metrics.jsonl").write_text("")
    (other / "config.yaml").write_text("seed: 0\n")
    claim_output_dir(other, resuming=False, overwrite=False).release()


def test_overwrite_deletes_only_what_a_run_writes(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    _earlier_run(out)
    lock = claim_output_dir(out, resuming=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [".lock", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
    lock.release()
    assert {"checkpoints", "metrics.jsonl", "adapter", "samples.jsonl", "plots", "config.yaml"} <= set(RUN_FILES)
    with pytest.raises(OutputDirError, match="train.resume_from and train.overwrite=true contradict"):
        claim_output_dir(out, resuming=True, overwrite=True)


def test_resuming_accepts_an_earlier_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    _earlier_run(out)
    claim_output_dir(out, resuming=True, overwrite=False).release()
    assert (out / "checkpoints" / "step-000002").is_dir()


# ---------------------------------------------------------------------------------------------------------------------
# config changes on resume


def test_incompatible_changes_raise_with_a_diff_and_the_fix():
    saved = to_dict(load_config(None))
    new = to_dict(load_config(None, ["model.lora.r=32", "seed=3", "optim.lr=1e-3"]))
    with pytest.raises(ResumeConfigError) as e:
        check_resume_config(saved, new, source="runs/x/checkpoints/step-000004")
    msg = str(e.value)
    assert isinstance(e.value, ValueError)
    assert "cannot resume from runs/x/checkpoints/step-000004" in msg
    assert "model.lora.r: 16 -> 32" in msg and "seed: 0 -> 3" in msg
    assert "optim.lr" not in msg  # compatible changes are not in the error
    assert "revert these keys" in msg and "fresh run in another output_dir" in msg


def test_compatible_changes_are_returned():
    saved = to_dict(load_config(None))
    new = to_dict(
        load_config(
            None,
            [
                "optim.lr=1e-3",
                "train.max_steps=500",
                "logging.every=5",
                "eval.every=10",
                "rewards=[{fn: 'pkg.mod:fn'}]",
            ],
        )
    )
    new["something_new"] = {"key": 1}  # unknown keys are compatible
    changes = check_resume_config(saved, new)
    assert "optim.lr: 0.0001 -> 0.001" in changes
    assert "train.max_steps: 100 -> 500" in changes
    assert "logging.every: 1 -> 5" in changes and "eval.every: 0 -> 10" in changes
    assert "something_new.key: (unset) -> 1" in changes
    assert any(c.startswith("rewards: ") for c in changes)
    assert check_resume_config(saved, saved) == []
    # keys the caller knows this run cannot change (here: evaluation rows held out of the training file)
    held_out = ("eval.num_samples", "eval.path", "eval.split")
    changed = to_dict(load_config(None, ["eval.num_samples=50", "optim.lr=1e-3"]))
    assert check_resume_config(saved, changed) == ["eval.num_samples: 200 -> 50", "optim.lr: 0.0001 -> 0.001"]
    with pytest.raises(ResumeConfigError, match=r"eval.num_samples: 200 -> 50\n"):
        check_resume_config(saved, changed, extra_incompatible=held_out)


@pytest.mark.parametrize(
    "old, new, ok",
    [
        ("grpo", "rloo", True),
        ("grpo", "gspo", True),
        ("grpo", "cispo", True),
        ("grpo", "sapo", True),
        ("ppo", "actor_critic", True),
        ("grpo", "ppo", False),
        ("ppo", "grpo", False),
        ("ppo", "trpo", False),
    ],
)
def test_algorithm_changes_within_a_family_only(old, new, ok):
    """Rows that train the same parameters with the same optimizer groups (read from ALGORITHMS, no list of names
    of its own) restore from each other's checkpoints; otherwise the refusal says what each one trains."""
    saved = to_dict(load_config(None, [f"algorithm.name={old}"]))
    cur = to_dict(load_config(None, [f"algorithm.name={new}"]))
    if ok:
        assert check_resume_config(saved, cur) == [f'algorithm.name: "{old}" -> "{new}"']
    else:
        with pytest.raises(ResumeConfigError, match=f'algorithm.name: "{old}" -> "{new}" \\({old} trains the') as e:
            check_resume_config(saved, cur)
        assert "value model" in str(e.value)


def test_every_algorithm_has_a_resume_family():
    from rlhf.algorithms import ALGORITHMS

    families = {row.trainable_state for row in ALGORITHMS.values()}
    assert len(families) == 3  # the adapter alone; adapter + value model; TRPO's value-only optimizer


def test_every_incompatible_key_is_a_config_key():
    keys = flat_items(to_dict(Config()))
    for k in INCOMPATIBLE:
        assert any(key == k or (k.endswith(".") and key.startswith(k)) for key in keys), k


def test_append_history(tmp_path):
    append_history(tmp_path, 4, ["optim.lr: 0.0001 -> 0.001"])
    path = append_history(tmp_path, 9, [])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert path == tmp_path / "history.jsonl"
    assert [(r["step"], r["changes"]) for r in rows] == [(4, ["optim.lr: 0.0001 -> 0.001"]), (9, [])]
    assert all("time" in r for r in rows)
