"""Process-group setup and cross-rank reductions (a thin layer over accelerate)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta

import torch
from torch import Tensor


def make_accelerator(
    gradient_accumulation_steps: int = 1, log_with: list[str] | None = None, project_dir: str | None = None
):
    """An Accelerator that also works on machines without CUDA: there the process group must be gloo, or accelerate
    sees one process and DeepSpeed's batch-size check fails."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    handlers = []
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"
    if launched and not torch.cuda.is_available():
        handlers.append(InitProcessGroupKwargs(backend="gloo", timeout=timedelta(minutes=30)))
    return Accelerator(
        # on CPU, `cpu=True` is what makes accelerate treat launched processes as one gloo group (MULTI_CPU)
        cpu=launched and not torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_DEEPSPEED") != "true",
        gradient_accumulation_steps=gradient_accumulation_steps,
        kwargs_handlers=handlers,
        log_with=log_with or None,
        project_dir=project_dir,
    )


def all_sum(accelerator, x: Tensor | float) -> Tensor:
    """Sum of a scalar or tensor over all ranks (float64 on the way so counts stay exact)."""
    t = torch.as_tensor(x, dtype=torch.float64, device=accelerator.device).clone()
    if accelerator.num_processes > 1:
        t = accelerator.reduce(t, reduction="sum")
    return t.cpu()


def all_gather_cat(accelerator, x: Tensor) -> Tensor:
    """Concatenate a 1-D tensor from every rank (ranks hold equal sizes)."""
    if accelerator.num_processes == 1:
        return x
    return accelerator.gather(x.to(accelerator.device)).cpu()


def configure_deepspeed(accelerator, gradient_accumulation_steps: int, max_grad_norm: float) -> None:
    """Make a DeepSpeed launch follow the recipe: its engine divides the loss by, and steps after, its own
    accumulation count, and accelerate prefers the DeepSpeed config's value over ours on a mismatch."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    plugin.deepspeed_config["gradient_accumulation_steps"] = gradient_accumulation_steps
    plugin.deepspeed_config["gradient_clipping"] = max_grad_norm if max_grad_norm > 0 else 0.0
    if plugin.deepspeed_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 1
    accelerator.gradient_accumulation_steps = gradient_accumulation_steps


def zero_stage(accelerator) -> int:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return int(plugin.zero_stage) if plugin is not None else 0


def deepspeed_engine(accelerator):
    """The DeepSpeed engine accelerate built around the trained model, or None outside DeepSpeed."""
    wrapped = getattr(accelerator, "deepspeed_engine_wrapped", None)
    return wrapped.engine if wrapped is not None else None


@contextlib.contextmanager
def gathered_parameters(accelerator, model) -> Iterator[None]:
    """Under ZeRO-3 each rank holds a shard of every weight: gather them once for a whole rollout batch (not per
    decoding step or layer call) and let DeepSpeed re-shard them afterwards. Elsewhere a no-op.

    While gathered, the engine's per-module fetch/release hooks are taken off (as TRL does for generation): left on,
    the first layer call would release the gathered weights again and the next access would find empty shards."""
    if zero_stage(accelerator) != 3:
        yield
        return
    import deepspeed

    engine = deepspeed_engine(accelerator)
    offload = getattr(getattr(engine, "optimizer", None), "parameter_offload", None)
    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        if offload is None:
            yield
            return
        for p in offload.module.parameters():
            p.ds_active_sub_modules.clear()
        for hook in offload.forward_hooks + offload.backward_hooks:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield
        finally:
            coordinator = getattr(offload, "param_coordinator", None)
            if coordinator is not None and not coordinator.is_invalid_trace():
                coordinator._invalidate_trace()
            offload._register_deepspeed_module(offload.module)
