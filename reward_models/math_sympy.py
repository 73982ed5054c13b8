"""Symbolic checks in a persistent worker process, with a wall-clock timeout that works from any thread.

Why a subprocess and not `signal.alarm` or a thread: sympy can run for minutes (`9^{9^{9^9}}`, huge
factorials) and a Python thread cannot be stopped, while alarms only work on the main thread of the main
interpreter (reward functions run in a worker thread, on every rank). A child process can be killed. It is
started with `subprocess.Popen([python, -c, ...])` rather than `multiprocessing`, so nothing is pickled and
the training script is never re-imported in the child; requests and answers are one JSON line each over pipes,
read with `select` against a deadline. On timeout the child is killed and a fresh one is started by the next
request.

The child only ever `eval`s code produced by `to_sympy` (numbers, `Symbol('name')`, whitelisted
sympy functions), in a namespace without builtins.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

from reward_models.math_expr import ExprError, free_symbols

STARTUP_TIMEOUT = 60.0  # importing sympy; not counted against a request's timeout
MEMORY_LIMIT = 4 << 30  # address-space cap of the child, so a runaway big-integer computation fails fast

_ROOT = str(Path(__file__).resolve().parents[1])
_BOOT = (
    "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; sys.path.insert(0, {root!r}); "
    "from reward_models.math_sympy import serve; serve()"
)

stats = {"timeouts": 0, "errors": 0, "sympy_calls": 0, "restarts": 0}


class _Worker:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.owner = os.getpid()
        self.buffer = b""
        self.ready = False
        self.next_id = 0
        self.broken_until = 0.0

    def _spawn(self) -> None:
        """Start a child; its sympy import runs while the caller goes on (readiness is awaited in _ready)."""
        self.proc, self.ready, self.buffer = None, False, b""
        if time.monotonic() < self.broken_until:
            return
        env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT.format(root=_ROOT)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
                close_fds=True,
            )
            stats["restarts"] += 1
        except OSError:
            self.broken_until = time.monotonic() + 60

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            self._kill()
            self._spawn()
            if self.proc is None:
                return False
        if not self.ready:
            line = self._read_line(time.monotonic() + STARTUP_TIMEOUT)
            try:
                self.ready = line is not None and json.loads(line).get("ready") is True
            except ValueError:
                self.ready = False
            if not self.ready:
                self._kill()
                self.broken_until = time.monotonic() + 60  # sympy cannot even be imported: do not retry every call
        return self.ready

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.kill()
            proc.wait(timeout=5)
        except Exception:
            pass
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except Exception:
                pass

    def _read_line(self, deadline: float) -> bytes | None:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:  # the child died
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def request(self, op: str, a: str, b: str, timeout: float) -> bool | None:
        """The child's verdict, or None on timeout / failure (the caller treats None as "not equivalent")."""
        if os.getpid() != self.owner:  # forked: the parent's child and lock are not ours
            self.__init__()
        start = time.monotonic()
        if not self.lock.acquire(timeout=max(timeout, 0.0)):
            stats["timeouts"] += 1
            return None
        try:
            if not self.ready or self.proc is None or self.proc.poll() is not None:
                if not self._ready():
                    stats["errors"] += 1
                    return None
                start = time.monotonic()  # the startup does not eat the request's budget
            self.next_id += 1
            stats["sympy_calls"] += 1
            message = json.dumps({"id": self.next_id, "op": op, "a": a, "b": b}) + "\n"
            try:
                self.proc.stdin.write(message.encode())
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self._kill()
                stats["errors"] += 1
                return None
            line = self._read_line(start + timeout)
            if line is None:
                died = self.proc.poll() is not None  # e.g. the memory cap: an error, not a timeout
                self._kill()
                self._spawn()  # the replacement imports sympy while the caller moves on
                stats["errors" if died else "timeouts"] += 1
                return None
            reply = json.loads(line)
            if reply.get("id") != self.next_id or reply.get("error"):
                stats["errors"] += 1
                if reply.get("id") != self.next_id:
                    self._kill()
                return None
            return bool(reply.get("result"))
        finally:
            self.lock.release()

    def close(self) -> None:
        if os.getpid() == self.owner:
            self._kill()


_worker = _Worker()
atexit.register(_worker.close)


def sympy_check(op: str, a: str, b: str, timeout: float) -> bool | None:
    """op "equal": a == b symbolically; "proportional": a / b is a nonzero constant (equations a=0, b=0)."""
    if timeout <= 0:
        return None
    return _worker.request(op, a, b, timeout)


def shutdown() -> None:
    """Stop the worker process now (tests; a later check starts a new one)."""
    with _worker.lock:
        _worker._kill()


# ---------------------------------------------------------------- the child side


_SYMPY_FN = {
    "ln": "log",
    "arcsin": "asin",
    "arccos": "acos",
    "arctan": "atan",
    "abs": "Abs",
    "ceil": "ceiling",
}


def to_sympy(node: tuple) -> str:
    """Python source that builds the tree in sympy, using only names the worker's namespace defines."""
    kind = node[0]
    if kind == "num":
        value = node[1]
        return (
            f"Integer({value.numerator})"
            if value.denominator == 1
            else f"Rational({value.numerator},{value.denominator})"
        )
    if kind == "sym":
        return f"Symbol({node[1]!r})"
    if kind == "const":
        return {"pi": "pi", "e": "E", "i": "I", "oo": "oo"}[node[1]]
    if kind == "neg":
        return f"(-({to_sympy(node[1])}))"
    if kind in ("add", "sub", "mul", "div", "pow"):
        op = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}[kind]
        return f"(({to_sympy(node[1])}){op}({to_sympy(node[2])}))"
    if kind == "fn":
        return f"{_SYMPY_FN.get(node[1], node[1])}({to_sympy(node[2])})"
    if kind == "root":
        arg, index = to_sympy(node[1]), to_sympy(node[2])
        odd = node[2][0] == "num" and node[2][1].denominator == 1 and node[2][1].numerator % 2 == 1
        return f"real_root({arg},{index})" if odd and not free_symbols(node[1]) else f"root({arg},{index})"
    if kind == "log":
        return f"log({to_sympy(node[1])},{to_sympy(node[2])})"
    if kind == "fact":
        return f"factorial({to_sympy(node[1])})"
    if kind == "binom":
        return f"binomial({to_sympy(node[1])},{to_sympy(node[2])})"
    raise ExprError(f"unknown node {kind}")


def _namespace():
    import sympy

    names = (
        "Integer Rational Symbol pi E I oo sin cos tan cot sec csc asin acos atan sinh cosh tanh log exp "
        "sqrt Abs floor ceiling root real_root factorial binomial"
    ).split()
    return {"__builtins__": {}, **{n: getattr(sympy, n) for n in names}}


def _equal(sympy, a, b) -> bool:
    if a == b:
        return True
    if a.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan) or b.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan):
        return False
    diff = sympy.simplify(a - b)
    if diff == 0:
        return True
    if diff.is_number:
        scale = max(abs(complex(sympy.N(a, 30))), 1.0)
        return abs(complex(sympy.N(diff, 30))) <= 1e-9 * scale
    return a.equals(b) is True


def _proportional(sympy, a, b) -> bool:
    if b == 0 or a == 0:
        return False
    ratio = sympy.simplify(a / b)
    return bool(ratio.is_number and ratio != 0 and ratio.is_finite)


def serve() -> None:
    """The child's loop: a JSON request per stdin line, a JSON answer per stdout line, until stdin closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the trainer must not print a traceback from here
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ImportError, ValueError, OSError):
        pass
    import sympy

    namespace = _namespace()
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
        except ValueError:
            continue
        reply: dict = {"id": req.get("id")}
        try:
            a = eval(req["a"], dict(namespace))  # noqa: S307 - code built by to_sympy only
            b = eval(req["b"], dict(namespace))  # noqa: S307
            check = _proportional if req.get("op") == "proportional" else _equal
            reply["result"] = bool(check(sympy, sympy.sympify(a), sympy.sympify(b)))
        except BaseException as e:  # MemoryError, RecursionError, sympy internals: an answer, not a crash
            reply["error"] = f"{type(e).__name__}: {e}"[:200]
        out.write(json.dumps(reply) + "\n")
        out.flush()
