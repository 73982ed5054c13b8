"""Checkpoints: written atomically (temporary directory, then rename), the last K kept, checked before loading.

Layout of <output_dir>/checkpoints/step-000010/:
    adapter/                 PEFT adapter (safetensors), gathered from the shards under ZeRO-3
    trainable.safetensors    with `trainable_module`: every parameter of it with requires_grad, by name (gathered)
    optimizer.pt             single process / DDP: the optimizer state (replicated on every rank, written by rank 0)
    deepspeed/state/         DeepSpeed ZeRO-1/2/3: the engine's own checkpoint (fp32 master weights and optimizer
                             state, one shard per rank; frozen base weights left out)
    scheduler.pt             the LR scheduler
    rng-rank<r>.pt           python / numpy / torch (and CUDA) RNG states of rank r
    trainer_state.json       step, data position, package version
    config.yaml              the run's configuration as a nested dict (when the caller passes it), so a resume can
                             compare it with its own before anything is written
    manifest.json            launcher, world size, ZeRO stage, and the size of every file written
    COMPLETE                 written last: a directory without it is half-written and ignored by `latest`

Loading never unpickles arbitrary objects, with one exception: `safetensors` and `torch.load(weights_only=True)` read
everything we write ourselves, but DeepSpeed's optimizer shards under `deepspeed/` hold Python objects (its loss
scaler, enums) and DeepSpeed's loader reads them with `torch.load(weights_only=False)`. That happens only when a
DeepSpeed run resumes from a checkpoint a DeepSpeed run wrote, after the manifest check; only resume from checkpoint
directories you trust.

Before a checkpoint is used, `check_checkpoint` compares every file with the manifest (present, same size), parses
trainer_state.json, config.yaml and the safetensors headers, loads the small torch files (scheduler.pt, the RNG states)
and checks that optimizer.pt is a whole torch archive: truncated or overwritten files are caught there, so `latest`
can fall back past them to an older checkpoint. When every checkpoint is unusable, `latest` refuses (naming each and
why) rather than starting over in a folder that holds a run.

A save that cannot write (disk full, quota, permissions) removes its temporary directory and raises
CheckpointWriteError naming the file, the reason and the last good checkpoint; the checkpoints already on disk are
left as they were.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import shutil
import struct
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf.distributed import all_sum, deepspeed_engine, full_shape, gathered, zero_stage

log = logging.getLogger(__name__)
STEP_DIR = re.compile(r"^step-(\d+)$")
MANIFEST, COMPLETE = "manifest.json", "COMPLETE"
ADAPTER = "adapter/adapter_model.safetensors"
TRAINABLE = "trainable.safetensors"
CONFIG = "config.yaml"
DS_DIR, DS_TAG = "deepspeed", "state"
FORMAT = 2  # 1: no manifest (optimizer.pt written by rank 0, also under DeepSpeed)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names it."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint that could not be written (disk full, quota, permissions); the message names the file, the reason
    and the last good checkpoint."""


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


def _adapter_parameters(peft_model: nn.Module) -> list[nn.Parameter]:
    """The parameters PEFT writes to adapter_model.safetensors: the trainable ones and every adapter weight."""
    names = {f".{a}." for a in (getattr(peft_model, "peft_config", None) or {"default": None})}
    return [p for n, p in peft_model.named_parameters() if p.requires_grad or any(a in n for a in names)]


def _cpu_copies(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in params.items()}


# ---------------------------------------------------------------------------------------------------------------------
# listing and checking


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and (p / COMPLETE).is_file()]
    return [p for _, p in sorted(found)]


def _files(directory: Path) -> Iterator[Path]:
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name not in (MANIFEST, COMPLETE):
            yield p


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a checkpoint; a format-1 checkpoint (no manifest) reads as single-process / DDP."""
    f = path / MANIFEST
    if not f.is_file():
        return {"format": 1, "backend": "torch", "zero_stage": 0, "world_size": None, "files": None}
    try:
        manifest = json.loads(f.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise ValueError("no file list")
        return manifest
    except ValueError as e:
        raise CheckpointError(
            f"checkpoint {path} could not be loaded: {MANIFEST} is corrupt ({e}); delete it or pick another"
        ) from None


def _check_safetensors(path: Path, name: str) -> None:
    """The header parses and the data it describes fits in the file (truncation, a file that is something else)."""
    f = path / name
    size = f.stat().st_size
    try:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8:
                raise ValueError(f"header of {n} bytes in a file of {size}")
            header = json.loads(fh.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > size:
            raise ValueError(f"tensors end at byte {8 + n + end}, the file has {size}")
    except (ValueError, struct.error, KeyError, TypeError) as e:
        raise CheckpointError(
            f"checkpoint {path} could not be loaded: {name} is corrupt ({e}); delete it or pick another"
        ) from None


def _corrupt(path: Path, name: str, reason: Any) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} could not be loaded: {name} is corrupt ({reason}); delete it or pick another"
    )


def _check_torch_file(path: Path, name: str, load: bool) -> None:
    """A file written by torch.save: loaded (small files: the scheduler, RNG states) or, for the optimizer, opened as
    the zip archive torch writes (its directory sits at the end, so garbage or an overwritten tail fails here)."""
    f = path / name
    try:
        if load:
            torch.load(f, weights_only=True, map_location="cpu")
        else:
            with zipfile.ZipFile(f) as z:
                if not z.namelist():
                    raise ValueError("an empty archive")
    except Exception as e:  # torch raises many types for a bad file; all mean the same here
        raise _corrupt(path, name, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def check_checkpoint(path: Path) -> None:
    """Checks that a checkpoint is whole, without restoring it; raises CheckpointError naming it.

    Every file against the manifest (present, same size); trainer_state.json and config.yaml parse; the safetensors
    headers describe data that fits; scheduler.pt and the RNG states load (weights only); optimizer.pt is a whole
    torch archive. DeepSpeed's shards are checked by size only (they are read by DeepSpeed itself)."""
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"checkpoint {path} is half-written (no COMPLETE marker); delete it or pick another")
    manifest = read_manifest(path)
    expected = manifest["files"] or {n: None for n in (ADAPTER, "optimizer.pt", "scheduler.pt", "trainer_state.json")}
    for name, size in expected.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} is missing {name}; delete it or pick another")
        if size is not None and f.stat().st_size != size:
            raise CheckpointError(
                f"checkpoint {path} could not be loaded: {name} has {f.stat().st_size} bytes, {size} were written "
                "(truncated or overwritten); delete it or pick another"
            )
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError("no step")
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: trainer_state.json is corrupt ({e})") from None
    if (path / CONFIG).is_file():
        _read_config_file(path, path / CONFIG)
    for name in (ADAPTER, TRAINABLE):
        if name in expected:
            _check_safetensors(path, name)
    for name in ["scheduler.pt", *sorted(p.name for p in path.glob("rng-rank*.pt"))]:
        _check_torch_file(path, name, load=True)
    if "optimizer.pt" in expected:
        _check_torch_file(path, "optimizer.pt", load=False)


def _read_config_file(path: Path, f: Path) -> dict[str, Any]:
    import yaml

    try:
        config = yaml.safe_load(f.read_text())
        if not isinstance(config, dict):
            raise ValueError("not a mapping")
        return config
    except (yaml.YAMLError, ValueError, UnicodeDecodeError) as e:
        raise _corrupt(path, f.name, str(e).splitlines()[0]) from None


def read_checkpoint_config(path: Path) -> dict[str, Any] | None:
    """The configuration (nested dict) of the run that wrote a checkpoint: its own config.yaml, else (checkpoints
    written before it was saved there) the config.yaml of the run folder `<run>/checkpoints/step-N` sits in, else None.

    The run folder's copy is rewritten when a run starts; read it before the new run writes its own."""
    own = path / CONFIG
    if own.is_file():
        return _read_config_file(path, own)
    run = path.parent.parent / CONFIG
    if path.parent.name == "checkpoints" and run.is_file():
        return _read_config_file(path, run)
    return None


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


# ---------------------------------------------------------------------------------------------------------------------
# save


_ERRNO_IN_TEXT = re.compile(r"(?:code: |errno |Errno )(\d+)")
_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}


def _write_errors() -> tuple[type[BaseException], ...]:
    """What a failed write raises: OSError from Python, RuntimeError from torch's archive writer, SafetensorError from
    safetensors (which wraps the OS error in its message)."""
    try:
        from safetensors import SafetensorError

        return OSError, RuntimeError, SafetensorError
    except ImportError:  # older safetensors
        return OSError, RuntimeError


def _errno_of(e: BaseException) -> int | None:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return e.errno
        text = str(e)
        if m := _ERRNO_IN_TEXT.search(text):
            return int(m.group(1))
        if "No space left on device" in text:
            return errno.ENOSPC
        e = e.__cause__ or e.__context__
    return None


def _disk_full(root: Path) -> bool:
    try:
        return shutil.disk_usage(root).free < 1 << 20
    except OSError:
        return False


class _Writes:
    """Runs the write steps of one save on one process and keeps the first failure, so that every process still makes
    the same collective calls (ZeRO-3 gathers, DeepSpeed's save) and all learn of a failure together."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.where: Path | None = None

    def run(self, where: Path, fn: Callable[[], Any], always: bool = False) -> None:
        """Run fn unless an earlier step failed (always: run it anyway, for calls other processes wait on)."""
        if self.error is not None and not always:
            return
        try:
            fn()
        except _write_errors() as e:
            if self.error is None:
                filename = getattr(e, "filename", None) if isinstance(e, OSError) else None
                self.error, self.where = e, Path(filename) if filename else where

    def message(self, root: Path, tmp: Path) -> str:
        e = self.error
        code = _errno_of(e)
        if code is None and _disk_full(root):
            code = errno.ENOSPC
        if code in _REASONS:
            reason = _REASONS[code]
        elif code:
            reason = os.strerror(code).lower()
        else:
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if code in (errno.ENOSPC, errno.EDQUOT):
            fix = f"free space under {root} (or move output_dir to a larger disk)"
        elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = f"make {root} writable (or choose another output_dir)"
        else:
            fix = "fix the cause"
        done = list_checkpoints(root)
        last = str(done[-1]) if done else "none (no checkpoint was completed yet)"
        return (
            f"{reason} while writing {self.where}; the last good checkpoint is {last} (the unfinished {tmp.name} was "
            f"removed); {fix} and resume with train.resume_from=latest"
        )


def _fail_together(accelerator, writes: _Writes, root: Path, tmp: Path, final: Path) -> None:
    """A collective: when any process failed to write, remove the temporary directory and raise on every process."""
    failed = all_sum(accelerator, 1.0 if writes.error is not None else 0.0).item() > 0
    if not failed:
        return
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    if writes.error is None:
        raise CheckpointWriteError(
            f"another process could not write checkpoint {final} (its error names the file and the reason); "
            f"{tmp.name} was removed"
        )
    raise CheckpointWriteError(writes.message(root, tmp)) from writes.error


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
) -> Path:
    """Every rank calls this (it gathers ZeRO-3 shards and DeepSpeed writes one shard per rank); rank 0 writes the
    shared files, each rank its RNG state. With `trainable_module`, its requires_grad parameters go to
    trainable.safetensors as well; with `config` (the run's configuration as a nested dict), it goes to config.yaml.

    keep_last: this checkpoint and the newest keep_last - 1 with a smaller step are kept, older ones deleted (0: keep
    all). A checkpoint with a larger step than this one is never deleted: this run did not write it (see `_prune`).

    A write that fails (disk full, quota, permissions) on any rank: the temporary directory is removed and every rank
    raises CheckpointWriteError naming the file, the reason and the last good checkpoint."""
    main = accelerator.is_main_process
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    engine = deepspeed_engine(accelerator)
    writes = _Writes()

    def fresh_tmp() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)

    if main:
        writes.run(tmp, fresh_tmp)
    accelerator.wait_for_everyone()

    # weights: gathered on every rank under ZeRO-3 (a collective), written by rank 0
    with gathered(accelerator, _adapter_parameters(peft_model)):
        if main:
            writes.run(tmp / "adapter", lambda: peft_model.save_pretrained(tmp / "adapter", safe_serialization=True))
    if trainable_module is not None:
        params = trainable_parameters(accelerator, trainable_module)
        with gathered(accelerator, params.values()):
            tensors = _cpu_copies(params) if main else None
        if main:
            from safetensors.torch import save_file

            writes.run(tmp / TRAINABLE, lambda: save_file(tensors, str(tmp / TRAINABLE), metadata={"format": "pt"}))

    # optimizer: DeepSpeed's own sharded checkpoint (a collective: every rank calls it, even after a failed write), or
    # the (replicated) state dict from rank 0
    if engine is not None:
        writes.run(
            tmp / DS_DIR,
            lambda: engine.save_checkpoint(
                str(tmp / DS_DIR), tag=DS_TAG, client_state={}, save_latest=False, exclude_frozen_parameters=True
            ),
            always=True,
        )
    elif main:
        writes.run(tmp / "optimizer.pt", lambda: torch.save(optimizer.state_dict(), tmp / "optimizer.pt"))
    if main:
        writes.run(tmp / "scheduler.pt", lambda: torch.save(scheduler.state_dict(), tmp / "scheduler.pt"))
        state = json.dumps({"step": step, **trainer_state}, indent=2)
        writes.run(tmp / "trainer_state.json", lambda: (tmp / "trainer_state.json").write_text(state))
        if config is not None:
            import yaml

            text = yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False)
            writes.run(tmp / CONFIG, lambda: (tmp / CONFIG).write_text(text))
    rng_file = tmp / f"rng-rank{accelerator.process_index}.pt"
    writes.run(rng_file, lambda: torch.save(rng_state(), rng_file))
    _fail_together(accelerator, writes, root, tmp, final)

    if main:
        manifest = {
            "format": FORMAT,
            "backend": "deepspeed" if engine is not None else "torch",
            "zero_stage": zero_stage(accelerator) if engine is not None else 0,
            "world_size": accelerator.num_processes,
            "trainable": trainable_module is not None,
            "files": {str(p.relative_to(tmp)): p.stat().st_size for p in _files(tmp)},
        }
        writes.run(final, lambda: _commit(root, tmp, final, step, manifest))
    _fail_together(accelerator, writes, root, tmp, final)
    if main:
        _prune(root, step, keep_last)
    accelerator.wait_for_everyone()
    return final


# ---------------------------------------------------------------------------------------------------------------------
# load


def _check_launcher(path: Path, manifest: dict[str, Any], accelerator, engine) -> None:
    here = "deepspeed" if engine is not None else "torch"
    name = {"torch": "a single-process / DDP", "deepspeed": "a DeepSpeed"}
    if manifest["backend"] != here:
        stage = f" ZeRO-{manifest['zero_stage']}" if manifest["backend"] == "deepspeed" else ""
        raise CheckpointError(
            f"checkpoint {path} was written by {name[manifest['backend']]}{stage} run and this is {name[here]} run: "
            "its optimizer state cannot be restored here; resume with the launcher that wrote it"
        )
    if here == "deepspeed":
        stage = zero_stage(accelerator)
        if manifest["zero_stage"] != stage or manifest["world_size"] != accelerator.num_processes:
            raise CheckpointError(
                f"checkpoint {path} holds DeepSpeed ZeRO-{manifest['zero_stage']} shards of "
                f"{manifest['world_size']} processes; this run is ZeRO-{stage} with {accelerator.num_processes}: "
                "resume with the same ZeRO stage and process count"
            )


def _assign(accelerator, path: Path, name: str, params: dict[str, nn.Parameter], tensors: dict[str, torch.Tensor]):
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
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    check_checkpoint(path)
    manifest = read_manifest(path)
    engine = deepspeed_engine(accelerator)
    if manifest["format"] >= 2:
        _check_launcher(path, manifest, accelerator, engine)
    elif engine is not None:
        raise CheckpointError(
            f"checkpoint {path} predates sharded DeepSpeed checkpoints (its optimizer.pt holds rank 0's shard only) "
            "and cannot restore a DeepSpeed run's optimizer; start from scratch or resume without DeepSpeed"
        )
    if trainable_module is not None and not (path / TRAINABLE).is_file():
        raise CheckpointError(
            f"checkpoint {path} is missing {TRAINABLE} (it was saved without trainable_module), so the trainable "
            "parameters beyond the adapter cannot be restored; pick a checkpoint written by this trainer"
        )
    try:
        adapter = load_file(str(path / ADAPTER))
        with gathered(accelerator, _adapter_parameters(peft_model), modifier_rank=0):
            result = set_peft_model_state_dict(peft_model, adapter)
        if getattr(result, "unexpected_keys", None):
            raise CheckpointError(f"checkpoint {path}: adapter has unexpected keys {result.unexpected_keys[:3]}")
        if trainable_module is not None:
            tensors = load_file(str(path / TRAINABLE))
            _assign(accelerator, path, TRAINABLE, trainable_parameters(accelerator, trainable_module), tensors)
        if engine is not None:
            loaded, _ = engine.load_checkpoint(
                str(path / DS_DIR),
                tag=DS_TAG,
                load_module_strict=False,  # the frozen base weights were left out
                load_optimizer_states=True,
                load_lr_scheduler_states=False,
            )
            if loaded is None:
                raise CheckpointError(f"checkpoint {path}: DeepSpeed found no checkpoint under {DS_DIR}/{DS_TAG}")
        else:
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        rng_file = path / f"rng-rank{accelerator.process_index}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=True))
        else:
            log.warning(
                "checkpoint %s has no %s: rank %d samples afresh", path, rng_file.name, accelerator.process_index
            )
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} could not be loaded ({type(e).__name__}: {e}); pick another") from e
    return json.loads((path / "trainer_state.json").read_text())


def save_adapter(accelerator, peft_model, directory: Path) -> None:
    """The PEFT adapter in safetensors, gathered under ZeRO-3 (every rank calls this; rank 0 writes). A plain
    `peft_model.save_pretrained` on rank 0 writes empty tensors for any adapter weight ZeRO-3 has sharded."""
    with gathered(accelerator, _adapter_parameters(peft_model)):
        if accelerator.is_main_process:
            peft_model.save_pretrained(directory, safe_serialization=True)
    accelerator.wait_for_everyone()
