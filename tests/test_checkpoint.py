"""rlhf/checkpoint.py on one process: trainable_module round trip and its errors, the manifest checks, and
checkpoints written before the manifest existed."""

from pathlib import Path

import pytest
import torch
from torch import nn

from rlhf.checkpoint import (
    CheckpointError,
    check_checkpoint,
    list_checkpoints,
    load_checkpoint,
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
