"""The `python` tool: runs a policy's code in a separate, limited process and returns what it printed.

Limits, all applied to the child only (the trainer's process is never touched):

- wall clock: the child's process group is killed after `timeout` seconds;
- CPU time: `RLIMIT_CPU` (the kernel kills a busy loop even if the parent is stalled);
  the limits are set by the child itself before the code runs (no `preexec_fn`, which is unsafe in a threaded
  trainer); soft and hard limits are equal, so the code cannot raise them unless it runs as root;
- memory: `RLIMIT_AS` caps the address space, so a memory bomb fails inside the child with `MemoryError`;
- files: it runs in a fresh temporary directory (its working directory and `HOME`, deleted afterwards) and
  `RLIMIT_FSIZE` caps any file it writes, its captured output included (so an endless print cannot fill the disk);
- processes: `RLIMIT_NPROC` caps forks for a non-root user (root ignores that limit, the process group kill remains);
- network: when `unshare -n` (root) or `unshare -rn` (an unprivileged user namespace) works on this machine the child
  runs in an empty network namespace: no interface but a down loopback, so no socket of any kind (Python, C
  extensions, `subprocess` of `curl`) reaches anything. Otherwise the child's Python `socket` module is replaced
  before the code runs (`connect`, `bind`, `sendto`, name lookups): that stops ordinary Python networking
  (`urllib`, `http.client`, `socket`) but not ctypes, `_socket` used directly or a spawned program; `network` in the
  tool's `sandbox()` says which one is in force.

It is isolation against accidents and runaway code (a model writing `while True`, `9**9**9`, a huge print), not a
security boundary against hostile code: the child can read any file the trainer's user can read.

When the last statement of the code is an expression its value is printed, as in a REPL, so `<python>347*28</python>`
answers `9716`. The result is stdout and stderr interleaved; a non-zero exit or a timeout raises `ToolError` with
the output so far (the model sees it as an `error:` observation)."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from rlhf.tools.base import ToolError, text_argument

# Runs in the child before the user's code: the socket guard (when no namespace is available), then the code itself,
# compiled so tracebacks show only the user's lines (`<code>`), with a REPL-style print of a final expression.
RUNNER = r"""
import ast, os, resource, sys, traceback
path, mode, memory, cpu, fsize = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
if os.getuid() != 0:
    resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))
if mode == "guard":
    import socket
    def _no_network(*args, **kwargs):
        raise OSError("network access is disabled in this sandbox")
    for _name in ("connect", "connect_ex", "bind", "sendto", "sendmsg"):
        setattr(socket.socket, _name, _no_network)
    for _name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "create_connection", "create_server"):
        setattr(socket, _name, _no_network)
    del socket, _no_network, _name
source = open(path, encoding="utf-8").read()
try:
    tree = ast.parse(source, "<code>")
except SyntaxError:
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
    output file is capped there), `network` (`"auto"`: a network namespace when available, else the socket guard;
    `"namespace"`: require the namespace; `"guard"`: the socket guard only)."""

    name = "python"
    description = "runs Python code in a sandbox and returns what it prints (the last expression's value is shown)"
    argument = "code"
    example = "print(sum(range(10)))"

    def __init__(
        self, timeout: float = 5.0, memory_mb: int = 512, max_output_bytes: int = 1_000_000, network: str = "auto"
    ):
        if network not in ("auto", "namespace", "guard"):
            raise ValueError(f"python tool: network={network!r}; use 'auto', 'namespace' or 'guard'")
        if timeout <= 0 or memory_mb <= 0 or max_output_bytes <= 0:
            raise ValueError("python tool: timeout, memory_mb and max_output_bytes must be positive")
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.max_output_bytes = max_output_bytes
        prefix = namespace_prefix() if network != "guard" else None
        if network == "namespace" and prefix is None:
            raise ValueError("python tool: network='namespace' but `unshare -n` / `unshare -rn` does not work here")
        self.prefix = prefix

    def sandbox(self) -> dict:
        """How the child is limited (for logs and the run's record)."""
        return {
            "network": "namespace" if self.prefix else "socket guard",
            "timeout_s": self.timeout,
            "memory_mb": self.memory_mb,
            "max_output_bytes": self.max_output_bytes,
        }

    def __call__(self, arguments: str) -> str:
        code = text_argument(arguments, self.argument)
        with tempfile.TemporaryDirectory(prefix="rlhf-python-") as work:
            Path(work, "code.py").write_text(code, encoding="utf-8")
            out_path = Path(work, ".output")
            timed_out, returncode = self._run(work, out_path)
            output = _read_head(out_path, self.max_output_bytes)
            full = out_path.stat().st_size >= self.max_output_bytes
        if full:
            raise ToolError(f"output past the limit of {self.max_output_bytes} bytes; it began:\n{output}")
        if timed_out:
            raise ToolError(f"timed out after {self.timeout:g} s" + (f"; output so far:\n{output}" if output else ""))
        if returncode < 0:
            cause = _signal_name(-returncode)
            raise ToolError(f"killed by {cause}" + (f"; output so far:\n{output}" if output else ""))
        if returncode != 0:
            raise ToolError(output.strip() or f"exit status {returncode}")
        return output.rstrip() if output.strip() else "(no output)"

    def _run(self, work: str, out_path: Path) -> tuple[bool, int]:
        """Run the child to its end or the timeout: (timed out, return code)."""
        mode = "namespace" if self.prefix else "guard"
        limits = [str(self.memory_mb * 2**20), str(int(self.timeout) + 1), str(self.max_output_bytes)]
        cmd = [*(self.prefix or []), sys.executable, "-I", "-u", "-c", RUNNER, "code.py", mode, *limits]
        env = {"PATH": os.defpath, "HOME": work, "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            try:
                return False, proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                return True, proc.returncode if proc.returncode is not None else -signal.SIGKILL
            finally:
                _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _read_head(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        data = f.read(limit)
    return data.decode("utf-8", errors="replace")


def _signal_name(number: int) -> str:
    try:
        return {signal.SIGXCPU: "the CPU-time limit (SIGXCPU)", signal.SIGKILL: "SIGKILL"}.get(
            number, signal.Signals(number).name
        )
    except ValueError:
        return f"signal {number}"


@functools.cache
def namespace_prefix() -> tuple[str, ...] | None:
    """`("unshare", "-n")` or `("unshare", "-rn")` when that runs a program with no network here, else None
    (probed once per process)."""
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        return None
    options = (["-n"], ["-rn"]) if os.getuid() == 0 else (["-rn"],)
    for option in options:
        try:
            probe = subprocess.run([unshare, *option, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return (unshare, *option)
    return None
