"""The `python` tool's sandbox against hostile code, run as the trainer runs in containers and CI (as root).

A victim process (this file run as a script: a stand-in for the trainer) holds a secret in its environment and its
memory, a handler for SIGUSR1, an open metrics file, a private folder, a TCP listener and UNIX sockets, and runs each
attack through `run_tool_call` at one isolation level; it then reports, per attack, the observation and whether the
attack took effect (checked from the victim's side, not believed from the attacker's output). The tests assert that
bubblewrap blocks every attack with the expected reason, record what the unshare fallback blocks, and show that
without a sandbox (`isolation="guard"`) the attacks succeed, so these tests can fail.

The per-call overhead of each level is measured by `test_overhead_per_call` (printed with `pytest -s`)."""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rlhf.tools import PythonExecutor, ToolCall, parse_tool_calls, run_tool_call
from rlhf.tools.sandbox import NOBODY, detect_isolation

ROOT = os.getuid() == 0
MARKER = "rlhf-attack-survivor"


def attacks(pid: int, address: int, size: int, fd: int, private: str, port: int, unix_path: str) -> dict[str, str]:
    """Attack code by name; each knows the victim's pid and where its secrets are (a strong adversary)."""
    return {
        "mem_read": f"f = open('/proc/{pid}/mem', 'rb', 0); f.seek({address}); print(f.read({size}))",
        "mem_write": f"f = open('/proc/{pid}/mem', 'r+b', 0); f.seek({address}); f.write(b'PWNED'); print('WROTE')",
        "setns": (
            f"import ctypes, os, _socket\nfd = os.open('/proc/{pid}/ns/net', os.O_RDONLY)\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "if libc.setns(fd, 0x40000000): raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))\n"
            f"s = _socket.socket(); s.settimeout(2); s.connect(('127.0.0.1', {port})); print('CONNECTED')"
        ),
        "signal": f"import os, signal\nos.kill({pid}, signal.SIGUSR1)\nprint('SENT')",
        "survivor": (
            "import os, subprocess, sys\n"
            f"argv = [sys.executable, '-c', 'import time; time.sleep(30)', {MARKER!r}]\n"
            "subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,"
            " stderr=subprocess.DEVNULL)\n"
            "child = os.fork()\n"
            "if child == 0:\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            "        os.closerange(0, 3)\n"
            "        os.execv(sys.executable, argv)\n"
            "    os._exit(0)\n"
            "os.waitpid(child, 0)\nprint('SPAWNED')"
        ),
        "write_outside": (
            f"open({private!r} + '/evil.txt', 'w').write('x')\nimport os\nos.remove({private!r} + '/keep.txt')"
        ),
        "write_runtime": "import sys\nopen(sys.prefix + '/rlhf-attack-probe', 'w').write('x')\nprint('WROTE')",
        "parent_fds": (
            "import os\ntry:\n"
            f"    os.write({fd}, b'{{\"fake\": 1}}\\n')\nexcept OSError as e:\n    print('inherited:', e)\n"
            f"    open('/proc/{pid}/fd/{fd}', 'a').write('{{\"fake\": 2}}\\n')\nprint('WROTE')"
        ),
        "environ": (
            f"import os\nprint(open('/proc/{pid}/environ', 'rb').read().split(b'\\0'))\n"
            "print(os.environ.get('RLHF_ATTACK_SECRET'))"
        ),
        "unix_socket": (
            f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({unix_path!r})\nprint('CONNECTED')"
        ),
        "unix_abstract": (
            f"import _socket\ns = _socket.socket(_socket.AF_UNIX)\ns.connect(b'\\0' + {unix_path.encode()!r})\n"
            "print('CONNECTED')"
        ),
        "_socket": (
            f"import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\n"
            "print('CONNECTED')"
        ),
    }


def victim(level: str) -> dict[str, dict]:
    """Run every attack at `level`; per attack: {"observation": ..., "succeeded": bool}."""
    secret = os.environ["RLHF_ATTACK_SECRET"]
    memory = bytearray(("MEMSECRET-" + secret).encode())
    address = ctypes.addressof((ctypes.c_char * len(memory)).from_buffer(memory))
    received: list[int] = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    private = tempfile.mkdtemp(prefix="rlhf-attack-")  # mode 0700, the trainer's
    Path(private, "keep.txt").write_text("keep")
    metrics_path = Path(private, "metrics.jsonl")
    metrics = open(metrics_path, "a", buffering=1)  # noqa: SIM115 - held open like the trainer's tracker
    metrics.write('{"step": 1}\n')
    listener = socket.create_server(("127.0.0.1", 0))
    unix_path = f"/tmp/rlhf-attack-{os.getpid()}.sock"
    unix_server = socket.socket(socket.AF_UNIX)
    unix_server.bind(unix_path)
    os.chmod(unix_path, 0o777)  # reachable by any user, like X11's or a careless daemon's socket
    abstract_server = socket.socket(socket.AF_UNIX)
    abstract_server.bind(b"\0" + unix_path.encode())
    for server in (listener, unix_server, abstract_server):
        server.listen(8)
        server.setblocking(False)
    runtime_probe = Path(sys.prefix, "rlhf-attack-probe")

    tool = PythonExecutor(timeout=10.0, memory_mb=512, isolation=level, allow_unsafe=True)
    code = attacks(os.getpid(), address, len(memory), metrics.fileno(), private, listener.getsockname()[1], unix_path)
    results: dict[str, dict] = {"isolation": {"description": tool.isolation.describe(), "user": tool.isolation.user}}
    try:
        for name, source in code.items():
            observation = run_tool_call(ToolCall("python", source, (0, 0)), {"python": tool}, max_chars=20_000)
            time.sleep(0.05)  # let a signal or a survivor show itself
            results[name] = {"observation": observation, "succeeded": False}
        checks = {
            "mem_read": secret in results["mem_read"]["observation"],
            "mem_write": memory.startswith(b"PWNED"),
            "setns": "CONNECTED" in results["setns"]["observation"],
            "signal": bool(received),
            "survivor": bool(_survivors()),
            "write_outside": Path(private, "evil.txt").exists() or not Path(private, "keep.txt").exists(),
            "write_runtime": runtime_probe.exists(),
            "parent_fds": "fake" in metrics_path.read_text(),
            "environ": secret in results["environ"]["observation"],
            "unix_socket": _accepted(unix_server),
            "unix_abstract": _accepted(abstract_server),
            "_socket": _accepted(listener),
        }
        for name, took_effect in checks.items():
            results[name]["succeeded"] = took_effect
    finally:
        for pid in _survivors():
            os.kill(pid, signal.SIGKILL)
        runtime_probe.unlink(missing_ok=True)
        os.unlink(unix_path)
    return results


def _accepted(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def _survivors() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path("/proc", entry, "cmdline").read_bytes()
            except OSError:
                continue
            if MARKER.encode() in cmdline:
                found.append(int(entry))
    return found


def run_victim(level: str) -> dict[str, dict]:
    env = {**os.environ, "RLHF_ATTACK_SECRET": f"hf_{os.urandom(8).hex()}"}
    done = subprocess.run(
        [sys.executable, __file__, level],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 0, f"the victim died (exit {done.returncode}): {done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _level_or_skip(level: str):
    try:
        return detect_isolation(level)
    except ValueError as e:
        pytest.skip(str(e))


needs_root = pytest.mark.skipif(not ROOT, reason="these attacks are the ones a root trainer is open to")

# attack -> the reason it fails inside bubblewrap (the observation must say so)
BWRAP_REASONS = {
    "mem_read": r"FileNotFoundError: .*'/proc/\d+/mem'",  # its own /proc: the trainer does not exist in there
    "mem_write": r"FileNotFoundError: .*'/proc/\d+/mem'",
    "setns": r"FileNotFoundError: .*'/proc/\d+/ns/net'",
    "signal": r"ProcessLookupError",  # its own pid namespace
    "survivor": r"SPAWNED",  # spawned, then killed with the pid namespace when the call ended (checked from outside)
    "write_outside": r"FileNotFoundError: .*evil\.txt",  # the host's folders are not in its file system
    "write_runtime": r"Read-only file system",  # the runtime is bound read-only
    "parent_fds": r"inherited: \[Errno 9\] Bad file descriptor[\s\S]*FileNotFoundError: .*'/proc/\d+/fd/\d+'",
    "environ": r"FileNotFoundError: .*'/proc/\d+/environ'",
    "unix_socket": r"FileNotFoundError",  # a tmpfs /tmp: the host's socket files are not there
    "unix_abstract": r"ConnectionRefusedError",  # abstract sockets belong to the network namespace
    "_socket": r"ConnectionRefusedError",  # a network namespace of its own: its loopback has no listener
}


@needs_root
def test_bwrap_blocks_every_attack():
    _level_or_skip("bwrap")
    results = run_victim("bwrap")
    for name, reason in BWRAP_REASONS.items():
        result = results[name]
        assert not result["succeeded"], f"{name} got through bwrap: {result['observation']}"
        assert re.search(reason, result["observation"]), f"{name}: expected {reason!r}, got {result['observation']}"


# what unshare's namespaces block whatever the host uid (the rest depends on it: see the next test)
UNSHARE_REASONS = {k: BWRAP_REASONS[k] for k in ("mem_read", "mem_write", "setns", "signal", "survivor", "environ")}
UNSHARE_REASONS |= {
    "parent_fds": BWRAP_REASONS["parent_fds"],
    "unix_abstract": r"ConnectionRefusedError",
    "_socket": r"Network is unreachable",
}


@needs_root
def test_unshare_fallback_blocks_the_process_attacks():
    iso = _level_or_skip("unshare")
    results = run_victim("unshare")
    for name, reason in UNSHARE_REASONS.items():
        result = results[name]
        assert not result["succeeded"], f"{name} got through unshare: {result['observation']}"
        assert re.search(reason, result["observation"]), f"{name}: expected {reason!r}, got {result['observation']}"
    # the host's files: as `nobody` only world-writable places; as root (when nobody cannot reach the runtime), the
    # child's files are root's: the README's table says so, and this keeps it measured
    host_files = ("write_outside", "write_runtime", "unix_socket")
    if iso.user == NOBODY:
        assert not any(results[k]["succeeded"] for k in host_files[:2]), results
    else:
        assert all(results[k]["succeeded"] for k in host_files), results


@needs_root
def test_without_a_sandbox_the_attacks_succeed():
    """The same attacks with only the socket guard (the former behaviour as root): they work, so the tests above can
    fail."""
    results = run_victim("guard")
    must = ("mem_read", "mem_write", "signal", "environ", "survivor", "parent_fds", "setns", "_socket", "write_outside")
    for name in must:
        assert results[name]["succeeded"], f"{name} was expected to get through the guard: {results[name]}"


# ---------------------------------------------------------------- the parser and the call never stop training


def test_deep_json_call_is_an_error_observation():
    text = "<tool_call>" + "[" * 1000 + "</tool_call>"
    with pytest.raises(RecursionError):
        json.loads("[" * 100_000)  # what the parser used to do with it
    (call,) = parse_tool_calls(text, ["python"], "json")
    assert call.error and "deeper than" in call.error
    assert run_tool_call(call, {}).startswith("error: the tool call nests brackets deeper than")
    wrapped = '<tool_call>{"name": "python", "arguments": ' + "{" * 5000 + "</tool_call>"
    assert parse_tool_calls(wrapped, ["python"], "json")[0].error
    huge = "<python>" + "x" * 200_000 + "</python>"
    assert "past the limit" in run_tool_call(parse_tool_calls(huge, ["python"])[0], {})


def test_unclosed_tags_parse_fast():
    for text, names, style in [
        ("<python>" * 20_000, ["python"], "tags"),
        ("<tool_call>" * 20_000, [], "json"),
        ("<python><calculator>" * 10_000 + "</python>", ["python", "calculator"], "tags"),
    ]:
        start = time.perf_counter()
        calls = parse_tool_calls(text, names, style)
        assert time.perf_counter() - start < 0.3
        assert len(calls) == (1 if text.endswith("</python>") else 0)


def test_keyboard_interrupt_is_the_calls_failure_unless_the_trainer_was_signalled():
    def interrupts(arguments: str) -> str:
        raise KeyboardInterrupt

    def exits(arguments: str) -> str:
        sys.exit(3)

    def signalled(arguments: str) -> str:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
        return "not reached"

    # Python's own SIGINT handler, as a trainer started from a shell has it (an earlier test in the same process may
    # have left another one installed)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for fn in (interrupts, exits):
            observation = run_tool_call(ToolCall("t", "", (0, 0)), {"t": fn})
            assert observation.startswith("error: t was interrupted"), observation
        with pytest.raises(KeyboardInterrupt):
            run_tool_call(ToolCall("t", "", (0, 0)), {"t": signalled})
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    finally:
        signal.signal(signal.SIGINT, before)


SIGTERM_SCRIPT = """
import sys
from rlhf.tools import PythonExecutor
tool = PythonExecutor(timeout=30, isolation=sys.argv[1], allow_unsafe=True)
print("ready", flush=True)
tool("import time; time.sleep(30)")
"""


@pytest.mark.parametrize("level", ["bwrap", "unshare", "guard"])
def test_sigterm_during_a_call_leaves_nothing_behind(level, tmp_path):
    if level != "guard":
        _level_or_skip(level)
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_SCRIPT, level], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)}, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.7)  # the call is running
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == -signal.SIGTERM  # ended the way SIGTERM ends a process
    assert list(tmp_path.iterdir()) == []  # no work folder, no code or output file
    assert not [p for p in _survivors()]


# ---------------------------------------------------------------- cost


def test_overhead_per_call(capsys):
    """Median wall time of 20 calls of `1` per level (the README quotes these)."""
    medians = {}
    for level in ("bwrap", "unshare", "guard"):
        try:
            tool = PythonExecutor(timeout=20.0, isolation=level, allow_unsafe=True)
        except ValueError:
            continue
        times = []
        for _ in range(20):
            start = time.perf_counter()
            assert tool("1") == "1"
            times.append(time.perf_counter() - start)
        medians[level] = statistics.median(times)
    with capsys.disabled():
        print("\npython tool, median of 20 calls:", ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in medians.items()))
    assert all(v < 2.0 for v in medians.values()), medians


if __name__ == "__main__":
    print(json.dumps(victim(sys.argv[1])))
