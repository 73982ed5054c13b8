"""What a checkpoint directory holds: its file names, the errors that name a checkpoint, and the list of complete ones.

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
"""

from __future__ import annotations

import re
from pathlib import Path

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


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and (p / COMPLETE).is_file()]
    return [p for _, p in sorted(found)]
