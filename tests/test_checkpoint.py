"""rlhf/checkpoint.py on one process: trainable_module round trip and its errors, the manifest checks, and
checkpoints written before the manifest existed."""

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from rlhf.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    apply_hyperparameters,
    check_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint_config,
    resolve_resume,
    save_checkpoint,
)


class WithHead(nn.Module):
    """A policy-like module: the LoRA model plus a trainable value head beside it."""

    def __init__(self, peft_model: nn.Module, width: int = 32):
        super().__init__()
        self.model = peft_model
        self.value_head = nn.Linear(width, 1)


@pytest.fixture()
def setup(tiny_model_dir):
    from rlhf.distributed import make_accelerator
    from rlhf.models import load_policy

    torch.manual_seed(0)
    acc = make_accelerator()
    peft_model = load_policy(tiny_model_dir, "float32", lora_r=4, lora_alpha=8)
    module = WithHead(peft_model)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    for p in params:  # one step, so the optimizer has state to restore
        p.grad = torch.randn_like(p)
    optimizer.step()
    scheduler.step()
    return acc, peft_model, module, optimizer, scheduler


def _trainable(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def test_trainable_module_round_trip(setup, tmp_path):
    acc, peft_model, module, optimizer, scheduler = setup
    path = save_checkpoint(tmp_path, 3, acc, peft_model, optimizer, scheduler, {"x": 1}, trainable_module=module)
    from safetensors.torch import load_file

    saved = load_file(str(path / "trainable.safetensors"))
    before = _trainable(module)
    assert saved.keys() == before.keys() and "value_head.weight" in saved
    assert (path / "adapter" / "adapter_model.safetensors").is_file()
    adam = {k: v.clone() for k, v in optimizer.state_dict()["state"][0].items()}

    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(1.0)
    optimizer.state.clear()
    state = load_checkpoint(path, acc, peft_model, optimizer, scheduler, trainable_module=module)
    assert state == {"step": 3, "x": 1}
    after = _trainable(module)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(adam[k], optimizer.state_dict()["state"][0][k]) for k in adam)
    # positional calls (the trainer's) still work, without trainable.safetensors
    plain = save_checkpoint(tmp_path, 4, acc, peft_model, optimizer, scheduler, {})
    assert not (plain / "trainable.safetensors").exists()
    load_checkpoint(plain, acc, peft_model, optimizer, scheduler)


def test_trainable_module_errors_name_file_and_key(setup, tmp_path):
    acc, peft_model, module, optimizer, scheduler = setup
    path = save_checkpoint(tmp_path, 1, acc, peft_model, optimizer, scheduler, {}, trainable_module=module)
    args = (acc, peft_model, optimizer, scheduler)

    module.extra_head = nn.Linear(32, 2)  # a parameter the checkpoint does not have
    with pytest.raises(CheckpointError, match=r"step-000001: trainable.safetensors has no tensor 'extra_head.weight'"):
        load_checkpoint(path, *args, trainable_module=module)
    del module.extra_head

    module.value_head = nn.Linear(32, 3)  # same name, another shape
    with pytest.raises(CheckpointError, match=r"trainable.safetensors holds 'value_head.weight' with shape \(1, 32\)"):
        load_checkpoint(path, *args, trainable_module=module)

    plain = save_checkpoint(tmp_path, 2, acc, peft_model, optimizer, scheduler, {})
    with pytest.raises(CheckpointError, match=r"step-000002 is missing trainable.safetensors"):
        load_checkpoint(plain, *args, trainable_module=module)


def test_manifest_catches_truncation_and_old_checkpoints_still_load(setup, tmp_path):
    acc, peft_model, module, optimizer, scheduler = setup
    args = (acc, peft_model, optimizer, scheduler)
    first = save_checkpoint(tmp_path, 1, *args, {}, keep_last=3)
    second = save_checkpoint(tmp_path, 2, *args, {}, keep_last=3)
    adapter = second / "adapter" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-10])
    with pytest.raises(
        CheckpointError, match=r"step-000002 could not be loaded: adapter/adapter_model.safetensors has"
    ):
        check_checkpoint(second)
    assert resolve_resume("latest", tmp_path) == first
    # a checkpoint from before manifests (format 1): the old file list is checked, and it loads
    (first / "manifest.json").unlink()
    check_checkpoint(first)
    load_checkpoint(first, *args)
    # keep_last counts complete checkpoints; re-saving a step replaces it whole
    save_checkpoint(tmp_path, 2, *args, {}, keep_last=1)
    assert list_checkpoints(tmp_path) == [second]
    check_checkpoint(second)
    assert not list(Path(tmp_path).glob(".*"))  # no temporary or old directory left behind


# ---------------------------------------------------------------------------------------------------------------------
# falling back, refusing, pruning, saved config, failed writes


def _garble(f: Path) -> None:
    """Random bytes of the same size: passes the manifest's size check."""
    f.write_bytes(os.urandom(f.stat().st_size))


@pytest.mark.parametrize("name", ["scheduler.pt", "rng-rank0.pt", "optimizer.pt", "trainer_state.json", "config.yaml"])
def test_garbage_of_the_right_size_makes_latest_fall_back(setup, tmp_path, name):
    acc, peft_model, module, optimizer, scheduler = setup
    args = (acc, peft_model, optimizer, scheduler)
    first = save_checkpoint(tmp_path, 1, *args, {}, keep_last=3, config={"seed": 0})
    second = save_checkpoint(tmp_path, 2, *args, {}, keep_last=3, config={"seed": 0})
    _garble(second / name)
    with pytest.raises(CheckpointError, match=rf"step-000002.* {name} is corrupt"):
        check_checkpoint(second)
    assert resolve_resume("latest", tmp_path) == first


def test_latest_refuses_when_every_checkpoint_is_broken(setup, tmp_path):
    acc, peft_model, module, optimizer, scheduler = setup
    args = (acc, peft_model, optimizer, scheduler)
    assert resolve_resume("latest", tmp_path / "none") is None  # no checkpoint at all: a fresh start
    assert resolve_resume("latest", tmp_path) is None
    first = save_checkpoint(tmp_path, 1, *args, {}, keep_last=3)
    second = save_checkpoint(tmp_path, 2, *args, {}, keep_last=3)
    _garble(first / "scheduler.pt")
    (second / "adapter" / "adapter_model.safetensors").unlink()
    (tmp_path / "step-000003").mkdir()  # half-written
    with pytest.raises(CheckpointError) as e:
        resolve_resume("latest", tmp_path)
    msg = str(e.value)
    assert f"no usable checkpoint under {tmp_path}" in msg
    assert "step-000003: " in msg and "half-written" in msg
    assert "step-000002: " in msg and "missing adapter/adapter_model.safetensors" in msg
    assert "step-000001: " in msg and "scheduler.pt is corrupt" in msg
    assert "train.overwrite=true" in msg and "train.resume_from=<directory>" in msg
    assert first.is_dir() and second.is_dir()  # nothing deleted


def test_pruning_never_deletes_newer_checkpoints(setup, tmp_path):
    acc, peft_model, module, optimizer, scheduler = setup
    args = (acc, peft_model, optimizer, scheduler)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, *args, {}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002", "step-000003"]
    for step in (4, 6):  # an earlier run went on to step 6 ...
        save_checkpoint(tmp_path, step, *args, {}, keep_last=0)
    # ... and this one was resumed from step 2: its step-3 save keeps step 2 and leaves 4 and 6 alone
    save_checkpoint(tmp_path, 3, *args, {}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"step-00000{s}" for s in (2, 3, 4, 6)]
    save_checkpoint(tmp_path, 3, *args, {}, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"step-00000{s}" for s in (3, 4, 6)]


def test_config_saved_in_the_checkpoint(setup, tmp_path):
    acc, peft_model, module, optimizer, scheduler = setup
    args = (acc, peft_model, optimizer, scheduler)
    config = {
        "seed": 0,
        "model": {"path": "x", "lora": {"r": 4, "target_modules": ["q_proj"]}},
        "optim": {"betas": (0.9, 0.99)},
    }
    root = tmp_path / "run" / "checkpoints"
    path = save_checkpoint(root, 1, *args, {}, config=config)
    assert "config.yaml" in json.loads((path / "manifest.json").read_text())["files"]
    assert read_checkpoint_config(path) == {**config, "optim": {"betas": [0.9, 0.99]}}
    # a checkpoint without its own copy: the run folder's config.yaml, else nothing
    plain = save_checkpoint(root, 2, *args, {})
    assert read_checkpoint_config(plain) is None
    (tmp_path / "run" / "config.yaml").write_text("seed: 5\n")
    assert read_checkpoint_config(plain) == {"seed": 5}


def _scheduler_writer_fails(monkeypatch, error: BaseException) -> None:
    real = torch.save

    def save(obj, f, *a, **k):
        if str(f).endswith("scheduler.pt"):
            raise error
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize(
    "error, reason",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded"),
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
        (RuntimeError("[enforce fail] PytorchStreamWriter failed writing file data/0: file write failed"), None),
    ],
)
def test_a_failed_write_names_the_file_and_the_last_good_checkpoint(setup, tmp_path, monkeypatch, error, reason):
    acc, peft_model, module, optimizer, scheduler = setup
    args = (acc, peft_model, optimizer, scheduler)
    good = save_checkpoint(tmp_path, 1, *args, {})
    _scheduler_writer_fails(monkeypatch, error)
    if reason is None:  # torch's writer gives no errno: a full disk is recognised by its free space
        import shutil as sh

        monkeypatch.setattr(sh, "disk_usage", lambda p: sh._ntuple_diskusage(100, 100, 0))
        reason = "no space left on device"
    with pytest.raises(CheckpointWriteError) as e:
        save_checkpoint(tmp_path, 2, *args, {})
    msg = str(e.value)
    assert msg.startswith(f"{reason} while writing {tmp_path}/.tmp-step-000002/scheduler.pt; ")
    assert f"the last good checkpoint is {good} " in msg and "resume with train.resume_from=latest" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000001"]  # the unfinished directory removed
    monkeypatch.undo()
    assert resolve_resume("latest", tmp_path) == good


def test_a_failed_adapter_write_from_safetensors(setup, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    acc, peft_model, module, optimizer, scheduler = setup
    args = (acc, peft_model, optimizer, scheduler)

    def full(*a, **k):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr(peft_model, "save_pretrained", full)
    with pytest.raises(
        CheckpointWriteError,
        match=r"^no space left on device while writing .*/adapter; the last good "
        r"checkpoint is none \(no checkpoint was completed yet\)",
    ):
        save_checkpoint(tmp_path, 1, *args, {})
    assert list(tmp_path.iterdir()) == []


def test_apply_hyperparameters_after_loading(setup, tmp_path):
    acc, peft_model, module, optimizer, scheduler = setup
    args = (acc, peft_model, optimizer, scheduler)
    path = save_checkpoint(tmp_path, 1, *args, {})
    for g in optimizer.param_groups:
        g["lr"] = 0.5
    load_checkpoint(path, *args)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)  # the checkpoint's, not this run's
    apply_hyperparameters(optimizer, scheduler, [3e-3], weight_decay=0.1, betas=[0.8, 0.9])
    group = optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(3e-3) and group["weight_decay"] == 0.1 and group["betas"] == (0.8, 0.9)
    assert scheduler.base_lrs == [3e-3]
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-3)
