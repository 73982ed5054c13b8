"""The `python` tool: runs a policy's code in a separate, limited and isolated process and returns what it printed.

Isolation (`rlhf.tools.sandbox`): the child runs under bubblewrap (`bwrap`) where it works, else in
`unshare` user, pid and network namespaces, else with only an in-process socket guard, which the tool refuses unless
`allow_unsafe=True`. The level taken is logged when the tool is built and reported by `sandbox()`.

Limits, all applied to the child only (the trainer's process is never touched):

- wall clock: the child's process group is killed after `timeout` seconds, and with bwrap or unshare the child is
  the first process of its own pid namespace, so every process it started (a double fork, `setsid`) ends with it;
- CPU time: `RLIMIT_CPU` (the kernel kills a busy loop even if the parent is stalled); the limits are set by the
  child itself before the code runs (no `preexec_fn`, which is unsafe in a threaded trainer); soft and hard limits
  are equal, so the code cannot raise them;
- memory: `RLIMIT_AS` caps the address space, so a memory bomb fails inside the child with `MemoryError`;
- files: the work folder (its working directory and `HOME`) is fresh per call: a tmpfs inside bwrap, else a host
  temporary folder deleted afterwards (also when the trainer is sent SIGTERM mid-call). The code and the captured
  output are unnamed temporary files; `RLIMIT_FSIZE` caps any file the child writes, its output included;
- processes: `RLIMIT_NPROC` caps forks where the kernel enforces it (a host uid other than root);
- network: with bwrap or unshare an empty network namespace (no interface but a down loopback); with the guard only,
  Python's `socket` functions are replaced, which a hostile program can get around.

When the last statement of the code is an expression its value is printed, as in a REPL, so `<python>347*28</python>`
answers `9716`. The result is stdout and stderr interleaved; a non-zero exit or a timeout raises `ToolError` with
the output so far (the model sees it as an `error:` observation)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import IO

from rlhf.tools.base import ToolError, text_argument
from rlhf.tools.sandbox import NOBODY, SANDBOX_WORK, Isolation, detect_isolation
from rlhf.tools.signals import watch_signals

log = logging.getLogger(__name__)
NPROC = 64  # processes (threads count too) the child may run at once where the kernel enforces RLIMIT_NPROC

# Runs in the child before the user's code (read from stdin): the limits, the socket guard (guard level only), then
# the code, compiled so tracebacks show only the user's lines (`<code>`), with a REPL-style print of a final expression.
RUNNER = r"""
import ast, os, resource, sys, traceback
mode, memory, cpu, fsize, nproc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
source = sys.stdin.read()
sys.stdin.close()
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
if nproc:
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
if mode == "guard":
    import socket
    def _no_network(*args, **kwargs):
        raise OSError("network access is disabled in this sandbox")
    for _name in ("connect", "connect_ex", "bind", "sendto", "sendmsg"):
        setattr(socket.socket, _name, _no_network)
    for _name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "create_connection", "create_server"):
        setattr(socket, _name, _no_network)
    del socket, _no_network, _name
try:
    tree = ast.parse(source, "<code>")
except (SyntaxError, ValueError, MemoryError, RecursionError):
    traceback.print_exc(limit=0)
    sys.exit(1)
last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
scope = {"__name__": "__main__", "__builtins__": __builtins__}
try:
    exec(compile(tree, "<code>", "exec"), scope)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), "<code>", "eval"), scope)
        if value is not None:
            print(repr(value))
except SystemExit:
    raise
except BaseException as e:
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != "<code>":
        tb = tb.tb_next
    traceback.print_exception(type(e), e, tb)
    sys.exit(1)
"""


class PythonExecutor:
    """The `python` tool: `<python>print(sum(range(10)))</python>` -> `45`.

    `timeout` (s, wall clock), `memory_mb` (address space), `max_output_bytes` (bytes of output kept; the child's
    output file is capped there), `isolation` (`"auto"`: the strongest that works here; `"bwrap"`, `"unshare"`:
    require that one; `"guard"`: the in-process socket guard only), `allow_unsafe` (accept the guard alone; without
    it a machine with neither bwrap nor working namespaces is an error at construction, before training starts)."""

    name = "python"
    description = "runs Python code in a sandbox and returns what it prints (the last expression's value is shown)"
    argument = "code"
    example = "print(sum(range(10)))"

    def __init__(
        self,
        timeout: float = 5.0,
        memory_mb: int = 512,
        max_output_bytes: int = 1_000_000,
        isolation: str = "auto",
        allow_unsafe: bool = False,
    ):
        if timeout <= 0 or memory_mb <= 0 or max_output_bytes <= 0:
            raise ValueError("python tool: timeout, memory_mb and max_output_bytes must be positive")
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.max_output_bytes = max_output_bytes
        self.isolation: Isolation = detect_isolation(isolation)
        if self.isolation.level == "guard" and not allow_unsafe:
            raise ValueError(
                "python tool: no sandbox works on this machine (" + self.isolation.reason + "), and the in-process "
                "guard alone lets the code read the trainer's memory and environment and signal it. Install "
                "bubblewrap (`apt-get install bubblewrap`, or `make install` as root), or accept the risk with "
                "allow_unsafe: true in the tool's env.tools entry: {name: python, kwargs: {allow_unsafe: true}}"
            )
        level = log.warning if self.isolation.level == "guard" else log.info
        level("python tool isolation: %s", self.isolation.describe())

    def sandbox(self) -> dict:
        """How the child is limited (for logs and the run's record)."""
        return {
            "isolation": self.isolation.level,
            "description": self.isolation.describe(),
            "network": "socket guard" if self.isolation.level == "guard" else "namespace",
            "timeout_s": self.timeout,
            "memory_mb": self.memory_mb,
            "max_output_bytes": self.max_output_bytes,
        }

    def __call__(self, arguments: str) -> str:
        code = text_argument(arguments, self.argument)
        with watch_signals(), tempfile.TemporaryFile() as source, tempfile.TemporaryFile() as out:
            source.write(code.encode("utf-8", errors="surrogatepass"))
            source.seek(0)
            timed_out, returncode = self._run(source, out)
            if self.isolation.level != "guard" and 128 < returncode < 128 + signal.NSIG:
                returncode = 128 - returncode  # bwrap and unshare report a child killed by signal N as 128 + N
            size = out.seek(0, os.SEEK_END)
            out.seek(0)
            output = out.read(self.max_output_bytes).decode("utf-8", errors="replace")
        if size >= self.max_output_bytes:
            raise ToolError(f"output past the limit of {self.max_output_bytes} bytes; it began:\n{output}")
        if timed_out:
            raise ToolError(f"timed out after {self.timeout:g} s" + (f"; output so far:\n{output}" if output else ""))
        if returncode < 0:
            cause = _signal_name(-returncode)
            raise ToolError(f"killed by {cause}" + (f"; output so far:\n{output}" if output else ""))
        if returncode != 0:
            raise ToolError(output.strip() or f"exit status {returncode}")
        return output.rstrip() if output.strip() else "(no output)"

    def _run(self, source: IO[bytes], out: IO[bytes]) -> tuple[bool, int]:
        """Run the child to its end or the timeout: (timed out, return code). Its processes all end here."""
        iso = self.isolation
        nproc = NPROC if (iso.user if iso.user is not None else os.getuid()) != 0 else 0
        limits = [str(self.memory_mb * 2**20), str(int(self.timeout) + 1), str(self.max_output_bytes), str(nproc)]
        mode = "guard" if iso.level == "guard" else "namespace"
        cmd = [*iso.prefix, sys.executable, "-I", "-u", "-c", RUNNER, mode, *limits]
        with _work_folder(iso) as work:
            env = {"PATH": os.defpath, "HOME": work, "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
            drop = {"user": iso.user, "group": iso.user, "extra_groups": []} if iso.user is not None else {}
            proc = subprocess.Popen(
                cmd, cwd="/" if iso.private_work else work, env=env, stdin=source, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, **drop,
            )  # fmt: skip
            try:
                return False, proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                return True, proc.returncode if proc.returncode is not None else -signal.SIGKILL
            finally:
                _kill_group(proc)


@contextlib.contextmanager
def _work_folder(iso: Isolation) -> Iterator[str]:
    """The child's working directory: bwrap's own tmpfs, or a host temporary folder (owned by the child's user)."""
    if iso.private_work:
        yield SANDBOX_WORK
        return
    with tempfile.TemporaryDirectory(prefix="rlhf-python-") as work:
        if iso.user is not None:
            os.chown(work, iso.user, NOBODY)
        yield work


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _signal_name(number: int) -> str:
    try:
        return {signal.SIGXCPU: "the CPU-time limit (SIGXCPU)", signal.SIGKILL: "SIGKILL"}.get(
            number, signal.Signals(number).name
        )
    except ValueError:
        return f"signal {number}"
