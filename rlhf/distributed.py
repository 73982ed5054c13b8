"""Process-group setup and cross-rank reductions (a thin layer over accelerate), and the DeepSpeed ZeRO plumbing:
the engine behind a prepared model, gathering ZeRO-3 shards, the hooks generation must not run under."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from datetime import timedelta

import torch
from torch import Tensor, nn


def make_accelerator(
    gradient_accumulation_steps: int = 1, log_with: list[str] | None = None, project_dir: str | None = None
):
    """An Accelerator that also works on machines without CUDA: there the process group must be gloo.

    Without CUDA a plain multi-process launch needs `cpu=True` (accelerate then treats the processes as one gloo
    group, MULTI_CPU). A DeepSpeed launch must not pass it: `cpu=True` silently turns DeepSpeed off and the ZeRO
    launchers would run as DDP. Passing the gloo backend explicitly is what makes accelerate count the processes
    (and DeepSpeed's batch-size check agree) under DeepSpeed on CPU."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    handlers = []
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or deepspeed
    if launched and not torch.cuda.is_available():
        handlers.append(InitProcessGroupKwargs(backend="gloo", timeout=timedelta(minutes=30)))
    return Accelerator(
        cpu=launched and not torch.cuda.is_available() and not deepspeed,
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


def all_max(accelerator, x: float) -> float:
    """The largest of a number over all ranks."""
    return all_gather_cat(accelerator, torch.tensor([float(x)])).max().item()


def configure_deepspeed(accelerator, gradient_accumulation_steps: int, max_grad_norm: float) -> None:
    """Make a DeepSpeed launch follow the recipe: its engine divides the loss by, and steps after, its own
    accumulation count, and accelerate prefers the DeepSpeed config's value over ours on a mismatch. The micro-batch
    size is 1 "sample" (one accumulation call): there is no dataloader for accelerate to read it from. Under ZeRO-3,
    `accelerator.prepare` is wrapped to call `register_output_embeddings` on the engine it builds."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    plugin.deepspeed_config["gradient_accumulation_steps"] = gradient_accumulation_steps
    plugin.deepspeed_config["gradient_clipping"] = max_grad_norm if max_grad_norm > 0 else 0.0
    if plugin.deepspeed_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 1
    accelerator.gradient_accumulation_steps = gradient_accumulation_steps
    if int(plugin.zero_stage) == 3 and not getattr(accelerator.prepare, "registers_output_embeddings", False):
        prepare = accelerator.prepare

        def prepare_then_register(*args, **kwargs):
            prepared = prepare(*args, **kwargs)
            register_output_embeddings(accelerator)
            return prepared

        prepare_then_register.registers_output_embeddings = True
        accelerator.prepare = prepare_then_register


def is_deepspeed(accelerator) -> bool:
    """DeepSpeed really runs this process (it owns the optimizer and steps inside backward); False without one."""
    return accelerator is not None and getattr(accelerator.state, "distributed_type", None) == "DEEPSPEED"


def zero_stage(accelerator) -> int:
    """The ZeRO stage of a DeepSpeed run (0 elsewhere)."""
    if not is_deepspeed(accelerator):
        return 0
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return int(plugin.zero_stage) if plugin is not None else 0


def deepspeed_engine(accelerator):
    """The DeepSpeed engine accelerate built around the trained model (the one with the optimizer), else None."""
    wrapped = getattr(accelerator, "deepspeed_engine_wrapped", None)
    return wrapped.engine if wrapped is not None else None


@contextlib.contextmanager
def gathered(accelerator, params: Iterable[nn.Parameter], modifier_rank: int | None = None) -> Iterator[None]:
    """Under ZeRO-3, the full values of `params` on every rank inside the block (a collective: every rank enters).
    With modifier_rank=r, what rank r writes into them is broadcast and re-sharded on exit; with None, writes are
    discarded. Elsewhere a no-op."""
    params = [p for p in params if hasattr(p, "ds_id")]
    if zero_stage(accelerator) != 3 or not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


def full_shape(p: nn.Parameter) -> torch.Size:
    """A parameter's real shape, also while ZeRO-3 holds only this rank's shard of it."""
    return getattr(p, "ds_shape", p.shape)


@contextlib.contextmanager
def gathered_parameters(accelerator, model) -> Iterator[None]:
    """Under ZeRO-3 each rank holds a shard of every weight: gather them once for a whole rollout batch (not per
    decoding step or layer call) and let DeepSpeed re-shard them afterwards. Elsewhere a no-op.

    While gathered, the engine's per-layer fetch/release hooks are taken off (as TRL does for generation): left on,
    the first layer call releases the gathered weights and the next one finds an empty shard."""
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
            register_output_embeddings(accelerator, model)


def register_output_embeddings(accelerator, model: nn.Module | None = None) -> None:
    """ZeRO-3 gathers a weight only inside the forward of the module that owns it, but the policy's log-probs use the
    output embedding matrix directly (rlhf/logprobs.py, recomputed in the backward): register it as an external
    parameter of the engine's root module and, as DeepSpeed does for the dangling parameters it detects itself, keep
    it from being released after each layer call (one full copy of that matrix per rank while training).

    `configure_deepspeed` arranges for this to run right after `accelerator.prepare`; `gathered_parameters` runs it
    again. Idempotent; a no-op outside ZeRO-3. `model`: the model holding the output embeddings (default: the first
    module under the engine that has `get_output_embeddings`)."""
    engine = deepspeed_engine(accelerator)
    if zero_stage(accelerator) != 3 or engine is None:
        return
    import deepspeed

    candidates = [model] if model is not None else list(engine.module.modules())
    for m in candidates:
        get = getattr(m, "get_output_embeddings", None)
        head = get() if callable(get) else None
        weight = getattr(head, "weight", None)
        if isinstance(weight, nn.Parameter) and hasattr(weight, "ds_id"):
            deepspeed.zero.register_external_parameter(engine.module, weight)
            weight.is_external_param = True
            return
