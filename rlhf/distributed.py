"""Process-group setup and cross-rank reductions (a thin layer over accelerate)."""

from __future__ import annotations

import os
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
        cpu=launched and not torch.cuda.is_available(),
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
