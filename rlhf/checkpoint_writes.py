"""The write steps of one save, run on every process, and the report when one cannot write.

A step that fails (disk full, quota, permissions) is remembered rather than raised, so that every process still makes
the same collective calls; `fail_together` then removes the temporary directory and raises CheckpointWriteError on
every process, naming the file, the reason and the last good checkpoint. The checkpoints already on disk are left as
they were.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlhf.checkpoint_layout import CheckpointWriteError, list_checkpoints
from rlhf.distributed import all_sum

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


def _reason(e: BaseException, code: int | None) -> str:
    if code in _REASONS:
        return _REASONS[code]
    if code:
        return os.strerror(code).lower()
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _fix(code: int | None, root: Path) -> str:
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"free space under {root} (or move output_dir to a larger disk)"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"make {root} writable (or choose another output_dir)"
    return "fix the cause"


class Writes:
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
        code = _errno_of(self.error)
        if code is None and _disk_full(root):
            code = errno.ENOSPC
        done = list_checkpoints(root)
        last = str(done[-1]) if done else "none (no checkpoint was completed yet)"
        return (
            f"{_reason(self.error, code)} while writing {self.where}; the last good checkpoint is {last} (the "
            f"unfinished {tmp.name} was removed); {_fix(code, root)} and resume with train.resume_from=latest"
        )


def fail_together(accelerator, writes: Writes, root: Path, tmp: Path, final: Path) -> None:
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
