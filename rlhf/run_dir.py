"""The output folder of a run: claimed by one run at a time, never silently reused, and resumed only with a config the
checkpoint can follow.

`claim_output_dir` creates the folder and takes an exclusive lock on `<output_dir>/.lock` (`fcntl.flock`, the holder's
pid written inside). The lock lives as long as the process holds the returned RunLock (or until `release()`); the OS
drops it when the process ends, so a crashed run never leaves it stuck. A fresh run refuses a folder that holds an
earlier run unless told to continue it (train.resume_from=latest) or to clear it (train.overwrite=true, which deletes
only what a run writes: RUN_FILES).

`check_resume_config` compares the configuration a checkpoint was written with to the new one before anything is
written: changes the checkpoint cannot follow raise ResumeConfigError, the others are returned for the log and for
`append_history` (`<output_dir>/history.jsonl`).

These functions take plain arguments and are process-agnostic: the caller claims on the main process only.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlhf.algorithms import ALGORITHMS
from rlhf.config import ConfigError, flat_items

log = logging.getLogger(__name__)

LOCK = ".lock"
# everything a run writes into its output folder; train.overwrite=true deletes these and nothing else
RUN_FILES = (
    "checkpoints",
    "metrics.jsonl",
    "adapter",
    "samples.jsonl",
    "plots",
    "config.yaml",
    "history.jsonl",
    "tracking",
    "trained_prompts.jsonl",
)


class OutputDirError(ConfigError):
    """The output folder cannot be used as asked; the message names it and the way on."""


class ResumeConfigError(ConfigError):
    """The configuration changed in a way the checkpoint cannot follow; the message lists the keys."""


# ---------------------------------------------------------------------------------------------------------------------
# the lock


_held: dict[Path, RunLock] = {}  # lock file -> the RunLock of this process holding it


class RunLock:
    """An exclusive lock on an output folder; released by `release()`, by leaving a `with` block, or when the process
    ends. Within one process a second claim of the same folder takes the lock over (this object then holds nothing)."""

    def __init__(self, out: Path, fd: int, path: Path):
        self.out = out
        self.path = path  # the lock file, absolute
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if _held.get(self.path) is self:
            del _held[self.path]
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _hand_over(self) -> int:
        fd, self._fd = self._fd, None
        return fd

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({str(self.out)!r}, held={self.held})"


def _holder(lock_path: Path) -> str:
    try:
        text = lock_path.read_text().strip()
    except OSError:
        text = ""
    return text or "unknown pid"


def _lock(out: Path) -> RunLock:
    path = out / LOCK
    key = Path(os.path.abspath(path))
    previous = _held.get(key)
    if previous is not None and previous.held:  # this process holds it already: take it over
        lock = _held[key] = RunLock(out, previous._hand_over(), key)
        return lock
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise OutputDirError(
            f"output_dir {out} is not writable ({e.strerror or e}: cannot create {path}); make it writable or choose "
            "another output_dir"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise OutputDirError(
                f"output_dir {out} is in use by another run ({_holder(path)}, lock {path}); wait for it to finish or "
                "stop it, or choose another output_dir"
            ) from None
        raise OutputDirError(f"cannot lock output_dir {out} ({e.strerror or e}); choose another output_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    lock = _held[key] = RunLock(out, fd, key)
    return lock


# ---------------------------------------------------------------------------------------------------------------------
# claiming


def _earlier_run(out: Path) -> list[str]:
    """What in `out` shows an earlier run: checkpoints, metrics rows, an adapter."""
    found = []
    ckpts = out / "checkpoints"
    if ckpts.is_dir():
        names = sorted(p.name for p in ckpts.iterdir())
        if names:
            shown = ", ".join(names[-3:]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            found.append(f"checkpoints/ ({shown})")
    metrics = out / "metrics.jsonl"
    if metrics.is_file():
        rows = sum(1 for line in metrics.read_text(errors="replace").splitlines() if line.strip())
        if rows:
            found.append(f"metrics.jsonl ({rows} rows)")
    adapter = out / "adapter"
    if adapter.is_dir() and any(adapter.iterdir()):
        found.append("adapter/")
    return found


def clear_run_files(out: Path) -> list[str]:
    """Delete what a run writes into `out` (RUN_FILES); anything else in the folder is left alone. Returns the names
    deleted."""
    removed = []
    for name in RUN_FILES:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(name + ("/" if name in ("checkpoints", "adapter", "plots", "tracking") else ""))
    return removed


def claim_output_dir(out: str | Path, resuming: bool, overwrite: bool) -> RunLock:
    """Create `out`, lock it for this process, and check it may be used; returns the RunLock.

    resuming: the run continues from a checkpoint (train.resume_from set), so an earlier run in the folder is expected.
    overwrite: a fresh run may clear an earlier run's files first (train.overwrite=true).

    Raises OutputDirError when `out` is a file or cannot be created or written, when another process holds the lock
    (naming its pid), when both resuming and overwrite are set, or when a fresh run without overwrite finds an earlier
    run there (checkpoints, metrics rows or an adapter). Call it on the main process only, before anything is
    written into the folder."""
    out = Path(out)
    if resuming and overwrite:
        raise OutputDirError(
            "train.resume_from and train.overwrite=true contradict each other: drop train.overwrite to continue the "
            f"run in {out}, or drop train.resume_from to start it over"
        )
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output_dir {out} is a file, not a folder; remove it or choose another output_dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        parent = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
        raise OutputDirError(
            f"cannot create output_dir {out}: {parent or 'a parent'} is a file, not a folder; choose another output_dir"
        ) from None
    except OSError as e:
        raise OutputDirError(
            f"cannot create output_dir {out} ({e.strerror or e}); make its parent writable or choose another "
            "output_dir (e.g. output_dir=runs/<name>)"
        ) from None
    lock = _lock(out)
    if resuming:
        return lock
    found = _earlier_run(out)
    if not found:
        return lock
    if not overwrite:
        lock.release()
        raise OutputDirError(
            f"output_dir {out} holds an earlier run ({'; '.join(found)}): continue it with train.resume_from=latest, "
            f"or start over with train.overwrite=true (deletes {', '.join(RUN_FILES)} there), or choose another "
            "output_dir"
        )
    try:
        removed = clear_run_files(out)
    except OSError as e:
        lock.release()
        raise OutputDirError(
            f"train.overwrite=true could not clear {out} ({e.strerror or e}: {getattr(e, 'filename', '')}); "
            "remove it by hand or choose another output_dir"
        ) from None
    log.warning("train.overwrite=true: deleted %s from %s", ", ".join(removed), out)
    return lock


# ---------------------------------------------------------------------------------------------------------------------
# resuming with a changed config

# keys whose change makes a checkpoint's weights, optimizer state or data position meaningless for the new run; a key
# ending in "." covers everything under it
INCOMPATIBLE = (
    "model.path",  # other base weights
    "model.lora.r",  # adapter shapes
    "model.lora.alpha",
    "model.lora.target_modules",
    "value.model",  # head vs separate critic: other trainable parameters
    "rollout.num_generations",  # batch shapes and the data position per step
    "train.prompts_per_step",
    "seed",  # the data order and RNG streams the checkpoint continues
    "data.path",  # the prompt set the saved data position indexes
    "data.name",
    "data.split",
    "data.arithmetic.",
)
# the frozen weights' dtype: a change is allowed (the trainable state is float32 whatever the base), with a warning
DTYPE_KEYS = ("model.dtype:", "algorithm.teacher.dtype:")
_UNSET = object()


def _show(v: Any) -> str:
    if v is _UNSET:
        return "(unset)"
    return json.dumps(v, default=str)


def _trainable_state(name: Any) -> str:
    """What a checkpoint of algorithm `name` holds (its row's `trainable_state`; an unknown name only itself)."""
    row = ALGORITHMS.get(name)
    return f"unknown algorithm {name!r}" if row is None else row.trainable_state


def _algorithm_change(old: Any, new: Any) -> str | None:
    """Why a checkpoint of algorithm `old` cannot resume as `new`, or None when it can: rows that train the same
    parameters with the same optimizer groups restore from each other's checkpoints (read from `ALGORITHMS`)."""
    was, now = _trainable_state(old), _trainable_state(new)
    if was == now:
        return None
    return f"{old} trains {was}; {new} trains {now}"


def _incompatible(key: str, old: Any, new: Any, extra: tuple[str, ...] = ()) -> bool:
    if key == "algorithm.name" and key not in extra:
        return _algorithm_change(old, new) is not None
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in (*INCOMPATIBLE, *extra))


def check_resume_config(
    saved: dict, new: dict, source: str | Path | None = None, extra_incompatible: Iterable[str] = ()
) -> list[str]:
    """Compare the configuration a checkpoint was written with (`saved`, a nested dict) with the new run's.

    Raises ResumeConfigError listing `key: old -> new` for every change the checkpoint cannot follow (INCOMPATIBLE,
    and algorithm.name between rows that train other parameters, with the reason) with the two ways on. Returns the
    other changes as `key: old -> new` lines (unknown keys count as compatible). `source` names the checkpoint in
    the message. `extra_incompatible` adds keys (a trailing "." covers a section) that this run cannot change, e.g.
    eval.num_samples, eval.path and eval.split when the evaluation rows were held out of the training file (they
    decide the training rows)."""
    a, b = flat_items(saved), flat_items(new)
    extra = tuple(extra_incompatible)
    bad, changes = [], []
    for key in sorted(set(a) | set(b)):
        old, cur = a.get(key, _UNSET), b.get(key, _UNSET)
        if old == cur:
            continue
        line = f"{key}: {_show(old)} -> {_show(cur)}"
        if _incompatible(key, old, cur, extra):
            why = _algorithm_change(old, cur) if key == "algorithm.name" else None
            bad.append(line if why is None else f"{line} ({why})")
        else:
            changes.append(line)
    for line in changes:
        if line.startswith(DTYPE_KEYS):  # e.g. a bf16 run resumed on a CPU without native bf16 (`auto` resolves there)
            log.warning(
                "resuming with another weight dtype (%s): the float32 adapter and optimizer carry over, but the numbers"
                " will differ from an uninterrupted run; set the old dtype explicitly to avoid it",
                line,
            )
    if bad:
        where = f" from {source}" if source else ""
        raise ResumeConfigError(
            f"cannot resume{where}: the configuration changed in a way the checkpoint cannot follow:\n  "
            + "\n  ".join(bad)
            + "\nrevert these keys to resume, or start a fresh run in another output_dir (or clear this one with "
            "train.overwrite=true and without train.resume_from)"
        )
    return changes


def append_history(out: str | Path, step: int, changes: list[str]) -> Path:
    """Append one JSON line {"time", "step", "changes"} to `<out>/history.jsonl` (what changed when a run was resumed
    at `step`); returns the file."""
    path = Path(out) / "history.jsonl"
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": step, "changes": list(changes)}
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return path
