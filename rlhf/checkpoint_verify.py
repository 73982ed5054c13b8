"""Whether a checkpoint can be used, checked before anything is restored from it: the reasons it cannot, each raised as
a CheckpointError that names the checkpoint.

`check_checkpoint` asks whether it is whole: every file compared with the manifest (present, same size),
trainer_state.json, config.yaml and the safetensors headers parsed, the small torch files (scheduler.pt, the RNG
states) loaded and optimizer.pt checked to be a whole torch archive. Truncated or overwritten files are caught there,
so `latest` can fall back past them to an older checkpoint. `check_restorable` asks whether this run can restore it
(the launcher, ZeRO stage and process count that wrote it, the trainable parameters it holds), and
`read_checkpoint_config` reads the configuration of the run that wrote it.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from rlhf.checkpoint_layout import ADAPTER, COMPLETE, CONFIG, MANIFEST, TRAINABLE, CheckpointError
from rlhf.distributed import zero_stage

# ---------------------------------------------------------------------------------------------------------------------
# whole: the files against the manifest, each one readable


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
        raise _corrupt(path, MANIFEST, e) from None


def _corrupt(path: Path, name: str, reason: Any) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} could not be loaded: {name} is corrupt ({reason}); delete it or pick another"
    )


def _check_sizes(path: Path, expected: dict[str, int | None]) -> None:
    """Every file the manifest lists is there, with the size it was written with (None: presence only)."""
    for name, size in expected.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} is missing {name}; delete it or pick another")
        if size is not None and f.stat().st_size != size:
            raise CheckpointError(
                f"checkpoint {path} could not be loaded: {name} has {f.stat().st_size} bytes, {size} were written "
                "(truncated or overwritten); delete it or pick another"
            )


def _check_trainer_state(path: Path) -> None:
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError("no step")
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: trainer_state.json is corrupt ({e})") from None


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
        raise _corrupt(path, name, e) from None


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
    _check_sizes(path, expected)
    _check_trainer_state(path)
    if (path / CONFIG).is_file():
        _read_config_file(path, path / CONFIG)
    for name in (ADAPTER, TRAINABLE):
        if name in expected:
            _check_safetensors(path, name)
    for name in ["scheduler.pt", *sorted(p.name for p in path.glob("rng-rank*.pt"))]:
        _check_torch_file(path, name, load=True)
    if "optimizer.pt" in expected:
        _check_torch_file(path, "optimizer.pt", load=False)


# ---------------------------------------------------------------------------------------------------------------------
# the configuration that wrote it


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


# ---------------------------------------------------------------------------------------------------------------------
# restorable by this run


def check_restorable(path: Path, accelerator, engine, trainable: bool) -> None:
    """A whole checkpoint this run can restore: written by the same launcher (under DeepSpeed, the same ZeRO stage and
    process count), in a format that holds a DeepSpeed run's optimizer if this is one, and holding trainable.safetensors
    when `trainable` (the caller restores a trainable_module)."""
    manifest = read_manifest(path)
    if manifest["format"] >= 2:
        _check_launcher(path, manifest, accelerator, engine)
    elif engine is not None:
        raise CheckpointError(
            f"checkpoint {path} predates sharded DeepSpeed checkpoints (its optimizer.pt holds rank 0's shard only) "
            "and cannot restore a DeepSpeed run's optimizer; start from scratch or resume without DeepSpeed"
        )
    if trainable and not (path / TRAINABLE).is_file():
        raise CheckpointError(
            f"checkpoint {path} is missing {TRAINABLE} (it was saved without trainable_module), so the trainable "
            "parameters beyond the adapter cannot be restored; pick a checkpoint written by this trainer"
        )


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
