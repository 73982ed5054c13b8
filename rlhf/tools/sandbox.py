"""Which isolation the `python` tool's child gets, and the command line that gives it.

Three levels, strongest first; `detect_isolation("auto")` takes the first that runs a Python child on this machine
(probed once per process):

- `bwrap`: bubblewrap (`bwrap`, the sandbox Flatpak uses). New user, pid, network, IPC, UTS, mount and cgroup
  namespaces (`--unshare-all`); a root file system that holds only read-only binds of the Python runtime (`/usr`,
  the interpreter's prefix and the virtual environment), its own `/proc` (no other process is visible), a minimal
  `/dev` and a fresh tmpfs `/tmp` as the work folder; uid 65534 inside, no capabilities, no nested user namespaces;
  `--new-session` (no terminal to inject keystrokes into) and `--die-with-parent`. bwrap is started as uid 65534
  (`nobody`) where it can reach the runtime as that user, so that the host sees an unprivileged user and the kernel
  enforces `RLIMIT_NPROC`; else as the trainer's user (a root trainer's runtime under `/root` is out of `nobody`'s
  reach): the child is still uid 65534 without capabilities in its own namespaces, sees only the read-only binds and
  its tmpfs, but the kernel does not count its processes against `RLIMIT_NPROC` (they all end with the call).
- `unshare`: util-linux `unshare --user --map-root-user --pid --fork --kill-child --mount-proc --net --ipc --uts`
  under `setpriv --pdeathsig KILL` when available (the child dies with the trainer), started as uid 65534 when the
  trainer runs as root and `nobody` can reach the runtime. The child sees only its own processes and no network,
  but the host's file system with the rights of its host user: `nobody`'s, or else the trainer's own (a root
  trainer's files are then writable); its work folder is a host temporary folder.
- `guard`: no namespaces; the child's Python `socket` functions are replaced. This stops accidents, not a hostile
  program (it can read the trainer's memory and environment through `/proc`, signal it, or import `_socket`), so the
  tool refuses it unless `allow_unsafe` is set.

The README's tools section has the table of what each level stops, measured by `tests/test_tool_sandbox_attacks.py`."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

LEVELS = ("bwrap", "unshare", "guard")
NOBODY = 65534  # the conventional unprivileged uid / gid
SANDBOX_WORK = "/tmp"  # the work folder inside bwrap (a fresh tmpfs)


@dataclass(frozen=True)
class Isolation:
    """How the child runs: `level` (`bwrap`, `unshare` or `guard`), `prefix` (the command put before the
    interpreter), `user` (the host uid the prefix is started as; None = the trainer's own), `reason` (for `auto`:
    why a stronger level was not taken)."""

    level: str
    prefix: tuple[str, ...] = ()
    user: int | None = None
    reason: str = ""

    @property
    def private_work(self) -> bool:
        """The work folder is a tmpfs inside the sandbox (nothing is created on the host)."""
        return self.level == "bwrap"

    def describe(self) -> str:
        """One line for the run's log."""
        who = f"host uid {self.user}" if self.user is not None else f"host uid {os.getuid()} (the trainer's)"
        if self.level == "bwrap":
            return f"bwrap: user+pid+net+ipc+uts+mount namespaces, read-only runtime, tmpfs work folder, {who}"
        if self.level == "unshare":
            return f"unshare: user+pid+net+ipc+uts namespaces, host file system, {who}"
        return "guard only: no namespaces, Python socket functions replaced (not a security boundary)"


def runtime_paths() -> list[str]:
    """Host folders the interpreter needs, bound read-only into bwrap: its prefix, the base prefix (the standard
    library of a virtual environment's Python) and the folder of the resolved executable, minus those under /usr."""
    found: list[str] = []
    for path in (sys.prefix, os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)):
        if path != "/usr" and not path.startswith("/usr/") and path not in found:
            found.append(path)
    executable_dir = os.path.dirname(os.path.realpath(sys.executable))
    if not any(executable_dir.startswith(p + os.sep) for p in [*found, "/usr"]):
        found.append(executable_dir)
    return found


def bwrap_prefix(bwrap: str, tmpfs_bytes: int = 256 * 2**20) -> tuple[str, ...]:
    """The bwrap command line up to (not including) the interpreter; `tmpfs_bytes` caps the work folder."""
    args = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"]
    args += ["--uid", str(NOBODY), "--gid", str(NOBODY), "--hostname", "sandbox", "--cap-drop", "ALL"]
    args += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for extra in ("/etc/ld.so.cache", "/etc/localtime"):
        if os.path.exists(extra):
            args += ["--ro-bind", extra, extra]
    # the work folder first: a runtime that lives under it (a virtual environment under /tmp) is bound on top
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(tmpfs_bytes), "--tmpfs", SANDBOX_WORK]
    for path in runtime_paths():
        args += ["--ro-bind", path, path]
    args += ["--chdir", SANDBOX_WORK]
    return tuple(args)


def unshare_prefix(unshare: str) -> tuple[str, ...]:
    """The unshare command line up to (not including) the interpreter."""
    setpriv = shutil.which("setpriv")
    head = (setpriv, "--pdeathsig", "KILL") if setpriv else ()
    flags = ("--user", "--map-root-user", "--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--ipc", "--uts")
    return (*head, unshare, *flags)


def _probe(prefix: tuple[str, ...], user: int | None) -> str | None:
    """None when `prefix python -c ...` runs here and the child sees no network interface but `lo` and no
    process but its own; else why not."""
    check = (
        "import os, socket\n"
        "assert [n for _, n in socket.if_nameindex()] == ['lo'], socket.if_nameindex()\n"
        "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "assert len(pids) <= 4, pids\n"
    )
    try:
        done = subprocess.run(
            [*prefix, sys.executable, "-I", "-c", check], capture_output=True, timeout=30, env={"PATH": os.defpath},
            cwd="/", user=user, group=user, extra_groups=[] if user else None,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        return f"{type(e).__name__}: {e}"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        return f"exit status {done.returncode}: {lines[-1] if lines else 'no output'}"
    return None


def _candidates(level: str) -> tuple[list[tuple[str, tuple[str, ...], int | None]], list[str]]:
    """(level, prefix, host uid) to try for `level`, strongest and least privileged first, and why others are out."""
    tries, missing = [], []
    if not sys.platform.startswith("linux"):
        return [], [f"namespaces need Linux (this is {sys.platform})"]
    users = [NOBODY, None] if os.getuid() == 0 else [None]
    if level in ("auto", "bwrap"):
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            missing.append("bwrap is not installed (apt-get install bubblewrap, or `make install` as root)")
        else:
            tries += [("bwrap", bwrap_prefix(bwrap), u) for u in users]
    if level in ("auto", "unshare"):
        unshare = shutil.which("unshare")
        if unshare is None:
            missing.append("unshare (util-linux) is not installed")
        else:
            tries += [("unshare", unshare_prefix(unshare), u) for u in users]
    return tries, missing


@functools.cache
def detect_isolation(level: str = "auto") -> Isolation:
    """The isolation for `level` (`auto`, `bwrap`, `unshare` or `guard`) on this machine, probed once per process.

    `auto` takes the strongest level that works and falls back to `guard` (the caller decides whether that is
    acceptable); `bwrap` / `unshare` raise ValueError saying why the level does not work here."""
    if level not in ("auto", *LEVELS):
        raise ValueError(f"python tool: isolation={level!r}; use 'auto', 'bwrap', 'unshare' or 'guard'")
    if level == "guard":
        return Isolation("guard", reason="isolation='guard' was asked for")
    tries, reasons = _candidates(level)
    for name, prefix, user in tries:
        failure = _probe(prefix, user)
        if failure is None:
            return Isolation(name, prefix, user)
        reasons.append(f"{name} as uid {os.getuid() if user is None else user}: {failure}")
    why = "; ".join(reasons) or "no sandbox found"
    if level != "auto":
        raise ValueError(f"python tool: isolation={level!r} does not work here: {why}")
    return Isolation("guard", reason=why)
