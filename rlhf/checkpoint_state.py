"""The training state a checkpoint carries beyond plain files, in and out: the RNG states, the parameters to write
(gathered from their shards under ZeRO-3) and to copy back, DeepSpeed's own engine checkpoint, and this run's
hyperparameters applied over the restored optimizer and scheduler.

DeepSpeed's optimizer shards hold Python objects (its loss scaler, enums) and DeepSpeed's loader reads them with
`torch.load(weights_only=False)`: `load_engine_state` is the one place a checkpoint is unpickled beyond tensors.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf.checkpoint_layout import DS_DIR, DS_TAG, CheckpointError
from rlhf.distributed import full_shape, gathered

# ---------------------------------------------------------------------------------------------------------------------
# RNG


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # sampling on a GPU draws from the CUDA generator
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    internal, version, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------------------------------------------------------------
# parameters, gathered


def _unwrap(accelerator, module: nn.Module) -> nn.Module:
    """The module itself, whether given bare or as the DDP / DeepSpeed wrapper `prepare` returned."""
    return accelerator.unwrap_model(module)


def trainable_parameters(accelerator, module: nn.Module) -> dict[str, nn.Parameter]:
    """name -> parameter for every parameter of `module` with requires_grad (tied parameters once)."""
    return {n: p for n, p in _unwrap(accelerator, module).named_parameters() if p.requires_grad}


def adapter_parameters(peft_model: nn.Module) -> list[nn.Parameter]:
    """The parameters PEFT writes to adapter_model.safetensors: the trainable ones and every adapter weight."""
    names = {f".{a}." for a in (getattr(peft_model, "peft_config", None) or {"default": None})}
    return [p for n, p in peft_model.named_parameters() if p.requires_grad or any(a in n for a in names)]


def cpu_copies(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in params.items()}


def assign_parameters(
    accelerator, path: Path, name: str, params: dict[str, nn.Parameter], tensors: dict[str, torch.Tensor]
) -> None:
    """Copy saved tensors into parameters by name (every rank; under ZeRO-3 gathered, rank 0's copy broadcast)."""
    for key, p in params.items():
        if key not in tensors:
            raise CheckpointError(f"checkpoint {path}: {name} has no tensor {key!r} (a parameter of this model)")
        if tuple(tensors[key].shape) != tuple(full_shape(p)):
            raise CheckpointError(
                f"checkpoint {path}: {name} holds {key!r} with shape {tuple(tensors[key].shape)}, "
                f"the model's is {tuple(full_shape(p))}"
            )
    extra = sorted(set(tensors) - set(params))
    if extra:
        raise CheckpointError(
            f"checkpoint {path}: {name} holds {len(extra)} tensors this model has no trainable parameter for, "
            f"e.g. {extra[0]!r}"
        )
    with gathered(accelerator, params.values(), modifier_rank=0), torch.no_grad():
        for key, p in params.items():
            p.copy_(tensors[key].to(device=p.device, dtype=p.dtype))


# ---------------------------------------------------------------------------------------------------------------------
# DeepSpeed's engine checkpoint: fp32 master weights and optimizer state, one shard per rank


def save_engine_state(engine, directory: Path) -> None:
    """A collective: every rank calls it. The frozen base weights are left out."""
    engine.save_checkpoint(
        str(directory / DS_DIR), tag=DS_TAG, client_state={}, save_latest=False, exclude_frozen_parameters=True
    )


def load_engine_state(engine, path: Path) -> None:
    loaded, _ = engine.load_checkpoint(
        str(path / DS_DIR),
        tag=DS_TAG,
        load_module_strict=False,  # the frozen base weights were left out
        load_optimizer_states=True,
        load_lr_scheduler_states=False,
    )
    if loaded is None:
        raise CheckpointError(f"checkpoint {path}: DeepSpeed found no checkpoint under {DS_DIR}/{DS_TAG}")


# ---------------------------------------------------------------------------------------------------------------------
# this run's hyperparameters over the restored state


def apply_hyperparameters(optimizer, scheduler, lrs: list[float], **settings: Any) -> None:
    """After `load_checkpoint`: use this run's learning rates (one per parameter group) and optimizer settings
    (betas, eps, weight_decay) instead of the checkpoint's.

    `optimizer.load_state_dict` restores every group's saved lr and settings and LambdaLR restores its saved base
    learning rates, so without this a resumed run silently keeps the old values. The scheduler's current factor is
    applied to the new base rates."""
    if len(lrs) != len(optimizer.param_groups):
        raise ValueError(f"{len(lrs)} learning rates for {len(optimizer.param_groups)} parameter groups")
    factors = [1.0] * len(lrs)
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas is not None:
        factors = [fn(scheduler.last_epoch) for fn in lambdas]
    if hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = list(lrs)
    for group, lr, factor in zip(optimizer.param_groups, lrs, factors):
        group["initial_lr"] = lr
        group["lr"] = lr * factor
        for key, value in settings.items():
            group[key] = tuple(value) if isinstance(value, list) else value
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
