"""Checkpoints: written atomically (temporary directory, then rename), the last K kept, loaded without pickle.

Layout of <output_dir>/checkpoints/step-000010/:
    adapter/                 PEFT adapter (safetensors)
    optimizer.pt, scheduler.pt   tensors and plain containers only, loaded with weights_only=True
    rng-rank<r>.pt           python / numpy / torch RNG states of rank r
    trainer_state.json       step, data position, package version
    COMPLETE                 written last: a directory without it is half-written and ignored by `latest`
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)
STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names it."""


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    internal, version, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and (p / "COMPLETE").is_file()
    ]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    root: Path,
    step: int,
    accelerator,
    peft_model,
    optimizer,
    scheduler,
    trainer_state: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Every rank calls this; rank 0 writes shared files, each rank its RNG state."""
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        peft_model.save_pretrained(tmp / "adapter", safe_serialization=True)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state}, indent=2))
    torch.save(rng_state(), tmp / f"rng-rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "COMPLETE").write_text("ok\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(resume_from: str | None, root: Path) -> Path | None:
    """`latest` -> newest complete checkpoint that loads (falling back past broken ones), a path -> that path."""
    if not resume_from:
        return None
    if resume_from != "latest":
        path = Path(resume_from)
        check_checkpoint(path)
        return path
    for path in reversed(list_checkpoints(root)):
        try:
            check_checkpoint(path)
            return path
        except CheckpointError as e:
            log.warning("skipping checkpoint %s: %s", path, e)
    log.warning("train.resume_from=latest: no usable checkpoint under %s; starting from scratch", root)
    return None


def check_checkpoint(path: Path) -> None:
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not (path / "COMPLETE").is_file():
        raise CheckpointError(f"checkpoint {path} is half-written (no COMPLETE marker); delete it or pick another")
    for name in ("adapter/adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is missing {name}; delete it or pick another")
    try:
        json.loads((path / "trainer_state.json").read_text())
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: trainer_state.json is corrupt ({e})") from None


def load_checkpoint(path: Path, accelerator, peft_model, optimizer, scheduler) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this rank's RNG; return the trainer state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    check_checkpoint(path)
    try:
        adapter = load_file(str(path / "adapter" / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(peft_model, adapter)
        if getattr(result, "unexpected_keys", None):
            raise CheckpointError(f"checkpoint {path}: adapter has unexpected keys {result.unexpected_keys[:3]}")
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        rng_file = path / f"rng-rank{accelerator.process_index}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=True))
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} could not be loaded ({type(e).__name__}: {e}); pick another") from e
    return json.loads((path / "trainer_state.json").read_text())
