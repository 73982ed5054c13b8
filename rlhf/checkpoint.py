"""Checkpoints: written atomically (temporary directory, then rename), the last K kept, checked before loading.

The entry points are here: `save_checkpoint`, `load_checkpoint`, `resolve_resume` and `save_adapter`. The directory
layout and its file names are in `rlhf.checkpoint_layout`; the checks that decide whether a checkpoint can be used in
`rlhf.checkpoint_verify`; the RNG, parameter and DeepSpeed engine state in `rlhf.checkpoint_state`; the collective
write steps and the report of a failed write in `rlhf.checkpoint_writes`. Every name is importable from here too.

Loading never unpickles arbitrary objects, with one exception: `safetensors` and `torch.load(weights_only=True)` read
everything we write ourselves, but DeepSpeed's optimizer shards under `deepspeed/` hold Python objects (its loss
scaler, enums) and DeepSpeed's loader reads them with `torch.load(weights_only=False)`. That happens only when a
DeepSpeed run resumes from a checkpoint a DeepSpeed run wrote, after the manifest check; only resume from checkpoint
directories you trust.

Before a checkpoint is used, `check_checkpoint` compares every file with the manifest and reads each one, so `latest`
can fall back past truncated or overwritten checkpoints to an older one. When every checkpoint is unusable, `latest`
refuses (naming each and why) rather than starting over in a folder that holds a run.

A save that cannot write (disk full, quota, permissions) removes its temporary directory and raises
CheckpointWriteError naming the file, the reason and the last good checkpoint; the checkpoints already on disk are
left as they were.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhf.checkpoint_layout import (
    ADAPTER,
    COMPLETE,
    CONFIG,
    DS_DIR,
    DS_TAG,
    FORMAT,
    MANIFEST,
    STEP_DIR,
    TRAINABLE,
    CheckpointError,
    CheckpointWriteError,
    list_checkpoints,
)
from rlhf.checkpoint_state import (
    adapter_parameters,
    apply_hyperparameters,
    assign_parameters,
    cpu_copies,
    load_engine_state,
    rng_state,
    save_engine_state,
    set_rng_state,
    trainable_parameters,
)
from rlhf.checkpoint_verify import check_checkpoint, check_restorable, read_checkpoint_config, read_manifest
from rlhf.checkpoint_writes import Writes, fail_together
from rlhf.distributed import deepspeed_engine, gathered, zero_stage

__all__ = [
    "ADAPTER",
    "COMPLETE",
    "CONFIG",
    "DS_DIR",
    "DS_TAG",
    "FORMAT",
    "MANIFEST",
    "STEP_DIR",
    "TRAINABLE",
    "CheckpointError",
    "CheckpointWriteError",
    "apply_hyperparameters",
    "check_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_checkpoint_config",
    "read_manifest",
    "resolve_resume",
    "rng_state",
    "save_adapter",
    "save_checkpoint",
    "set_rng_state",
    "trainable_parameters",
]

log = logging.getLogger(__name__)


def resolve_resume(resume_from: str | None, root: Path) -> Path | None:
    """`latest` -> the newest checkpoint under root that passes `check_checkpoint`, falling back past broken or
    half-written ones; a path -> that path, checked.

    `latest` returns None (start from scratch) only when root holds no checkpoint directory at all. When it holds some
    and none is usable it raises CheckpointError naming each and why: starting over would overwrite the run's
    metrics and, with pruning, its checkpoints."""
    if not resume_from:
        return None
    if resume_from != "latest":
        path = Path(resume_from)
        check_checkpoint(path)
        return path
    found = sorted(
        ((int(m.group(1)), p) for p in (root.iterdir() if root.is_dir() else []) if (m := STEP_DIR.match(p.name))),
        reverse=True,
    )
    if not found:
        log.info("train.resume_from=latest: no checkpoint under %s; starting from scratch", root)
        return None
    problems = []
    for _, path in found:
        try:
            check_checkpoint(path)
        except CheckpointError as e:
            log.warning("skipping checkpoint %s: %s", path, e)
            problems.append(f"  {path.name}: {e}")
            continue
        return path
    raise CheckpointError(
        f"train.resume_from=latest: no usable checkpoint under {root}; every one is broken:\n"
        + "\n".join(problems)
        + "\nrepair or delete them, resume from another checkpoint with train.resume_from=<directory>, or start "
        "over with train.overwrite=true (deletes this run's checkpoints and metrics) or another output_dir"
    )


# ---------------------------------------------------------------------------------------------------------------------
# save


def _write_weights(writes: Writes, tmp: Path, accelerator, peft_model, trainable_module: nn.Module | None) -> None:
    """The adapter and, with trainable_module, trainable.safetensors: gathered on every rank under ZeRO-3 (a
    collective), written by rank 0."""
    main = accelerator.is_main_process
    with gathered(accelerator, adapter_parameters(peft_model)):
        if main:
            writes.run(tmp / "adapter", lambda: peft_model.save_pretrained(tmp / "adapter", safe_serialization=True))
    if trainable_module is None:
        return
    params = trainable_parameters(accelerator, trainable_module)
    with gathered(accelerator, params.values()):
        tensors = cpu_copies(params) if main else None
    if main:
        from safetensors.torch import save_file

        writes.run(tmp / TRAINABLE, lambda: save_file(tensors, str(tmp / TRAINABLE), metadata={"format": "pt"}))


def _write_optimizer(writes: Writes, tmp: Path, accelerator, engine, optimizer) -> None:
    """DeepSpeed's own sharded checkpoint (a collective: every rank calls it, even after a failed write), or the
    (replicated) state dict from rank 0."""
    if engine is not None:
        writes.run(tmp / DS_DIR, lambda: save_engine_state(engine, tmp), always=True)
    elif accelerator.is_main_process:
        writes.run(tmp / "optimizer.pt", lambda: torch.save(optimizer.state_dict(), tmp / "optimizer.pt"))


def _write_run_files(
    writes: Writes, tmp: Path, step: int, scheduler, trainer_state: dict[str, Any], config: dict[str, Any] | None
) -> None:
    """Rank 0: the scheduler, trainer_state.json and (when given) config.yaml."""
    writes.run(tmp / "scheduler.pt", lambda: torch.save(scheduler.state_dict(), tmp / "scheduler.pt"))
    state = json.dumps({"step": step, **trainer_state}, indent=2)
    writes.run(tmp / "trainer_state.json", lambda: (tmp / "trainer_state.json").write_text(state))
    if config is not None:
        import yaml

        text = yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False)
        writes.run(tmp / CONFIG, lambda: (tmp / CONFIG).write_text(text))


def _files(directory: Path) -> Iterator[Path]:
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name not in (MANIFEST, COMPLETE):
            yield p


def _manifest(tmp: Path, accelerator, engine, trainable: bool) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "backend": "deepspeed" if engine is not None else "torch",
        "zero_stage": zero_stage(accelerator) if engine is not None else 0,
        "world_size": accelerator.num_processes,
        "trainable": trainable,
        "files": {str(p.relative_to(tmp)): p.stat().st_size for p in _files(tmp)},
    }


def _commit(root: Path, tmp: Path, final: Path, step: int, manifest: dict[str, Any]) -> None:
    """Manifest, COMPLETE marker, then the renames; re-saving a step keeps the old copy until the new one is in."""
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    (tmp / COMPLETE).write_text("ok\n")
    old = root / f".old-step-{step:06d}"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    try:
        tmp.rename(final)
    except OSError:
        if old.exists() and not final.exists():
            old.rename(final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _prune(root: Path, step: int, keep_last: int) -> None:
    """Delete complete checkpoints older than `step` beyond the newest keep_last - 1 of them (keep_last <= 0: keep
    all). Checkpoints with a larger step are never deleted nor counted: they were written by an earlier run that this
    one was resumed behind (train.resume_from=<an older checkpoint>), not by this one."""
    done = [(int(STEP_DIR.match(p.name).group(1)), p) for p in list_checkpoints(root)]
    newer = [p.name for n, p in done if n > step]
    if newer:
        log.warning(
            "%s also holds %s, newer than step %d and left by an earlier run; they are kept, and "
            "train.resume_from=latest would pick %s",
            root,
            ", ".join(newer),
            step,
            newer[-1],
        )
    if keep_last <= 0:
        return
    older = [p for n, p in done if n < step]
    for stale in older[: max(len(older) - (keep_last - 1), 0)]:
        shutil.rmtree(stale, ignore_errors=True)


def _fresh_dir(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)


def save_checkpoint(
    root: Path,
    step: int,
    accelerator,
    peft_model,
    optimizer,
    scheduler,
    trainer_state: dict[str, Any],
    keep_last: int = 2,
    *,
    trainable_module: nn.Module | None = None,
    config: dict[str, Any] | None = None,
    tensors: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Every rank calls this (it gathers ZeRO-3 shards and DeepSpeed writes one shard per rank); rank 0 writes the
    shared files, each rank its RNG state. With `trainable_module`, its requires_grad parameters go to
    trainable.safetensors as well; with `config` (the run's configuration as a nested dict), it goes to config.yaml;
    `tensors` maps file names to named tensors rank 0 writes as safetensors (the rollout worker's weight snapshots).

    keep_last: this checkpoint and the newest keep_last - 1 with a smaller step are kept, older ones deleted (0: keep
    all). A checkpoint with a larger step than this one is never deleted: this run did not write it (see `_prune`).

    A write that fails (disk full, quota, permissions) on any rank: the temporary directory is removed and every rank
    raises CheckpointWriteError naming the file, the reason and the last good checkpoint."""
    main = accelerator.is_main_process
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    engine = deepspeed_engine(accelerator)
    writes = Writes()
    if main:
        writes.run(tmp, lambda: _fresh_dir(tmp))
    accelerator.wait_for_everyone()

    _write_weights(writes, tmp, accelerator, peft_model, trainable_module)
    _write_optimizer(writes, tmp, accelerator, engine, optimizer)
    if main:
        _write_run_files(writes, tmp, step, scheduler, trainer_state, config)
        for name, named in (tensors or {}).items():
            from safetensors.torch import save_file

            writes.run(tmp / name, lambda name=name, named=named: save_file(named, str(tmp / name)))
    rng_file = tmp / f"rng-rank{accelerator.process_index}.pt"
    writes.run(rng_file, lambda: torch.save(rng_state(), rng_file))
    fail_together(accelerator, writes, root, tmp, final)

    if main:
        manifest = _manifest(tmp, accelerator, engine, trainable_module is not None)
        writes.run(final, lambda: _commit(root, tmp, final, step, manifest))
    fail_together(accelerator, writes, root, tmp, final)
    if main:
        _prune(root, step, keep_last)
    accelerator.wait_for_everyone()
    return final


# ---------------------------------------------------------------------------------------------------------------------
# load


def _restore_weights(path: Path, accelerator, peft_model, trainable_module: nn.Module | None) -> None:
    """The adapter, then trainable.safetensors; every rank, rank 0's copy broadcast under ZeRO-3."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter = load_file(str(path / ADAPTER))
    with gathered(accelerator, adapter_parameters(peft_model), modifier_rank=0):
        result = set_peft_model_state_dict(peft_model, adapter)
    if getattr(result, "unexpected_keys", None):
        raise CheckpointError(f"checkpoint {path}: adapter has unexpected keys {result.unexpected_keys[:3]}")
    if trainable_module is not None:
        tensors = load_file(str(path / TRAINABLE))
        assign_parameters(accelerator, path, TRAINABLE, trainable_parameters(accelerator, trainable_module), tensors)


def _restore_rng(path: Path, accelerator) -> None:
    rng_file = path / f"rng-rank{accelerator.process_index}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    else:
        log.warning("checkpoint %s has no %s: rank %d samples afresh", path, rng_file.name, accelerator.process_index)


def load_checkpoint(
    path: Path,
    accelerator,
    peft_model,
    optimizer,
    scheduler,
    *,
    trainable_module: nn.Module | None = None,
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this rank's RNG; return the trainer state. Every rank calls this.

    The adapter (and trainable.safetensors) are copied in first; under DeepSpeed the engine's checkpoint then restores
    its fp32 master weights and optimizer shards, the same values, so the two never disagree."""
    check_checkpoint(path)
    engine = deepspeed_engine(accelerator)
    check_restorable(path, accelerator, engine, trainable=trainable_module is not None)
    try:
        _restore_weights(path, accelerator, peft_model, trainable_module)
        if engine is not None:
            load_engine_state(engine, path)
        else:
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        _restore_rng(path, accelerator)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} could not be loaded ({type(e).__name__}: {e}); pick another") from e
    return json.loads((path / "trainer_state.json").read_text())


def save_adapter(accelerator, peft_model, directory: Path) -> None:
    """The PEFT adapter in safetensors, gathered under ZeRO-3 (every rank calls this; rank 0 writes). A plain
    `peft_model.save_pretrained` on rank 0 writes empty tensors for any adapter weight ZeRO-3 has sharded."""
    with gathered(accelerator, adapter_parameters(peft_model)):
        if accelerator.is_main_process:
            peft_model.save_pretrained(directory, safe_serialization=True)
    accelerator.wait_for_everyone()
