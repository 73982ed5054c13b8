"""Which floating-point dtype the frozen weights use: `auto` picks bfloat16 where the device computes it natively and
float32 where bfloat16 would be emulated.

Why it matters (measured, 2 cores, one thread, a 576x576 @ 576x1536 matmul):

| CPU class | float32 | bfloat16 |
|---|---|---|
| AVX2 only (AMD EPYC before Zen 4, Intel before Cooper Lake) | 49-52 GFLOP/s | 0.9-1.4 GFLOP/s (emulated) |
| AVX512_BF16 (AMD Zen 4) | 90 GFLOP/s | 194 GFLOP/s |
| AMX (Intel Sapphire Rapids and later) | ~430 GFLOP/s (2 threads, 2048^2) | ~2,200 GFLOP/s |

So bfloat16 is a 2-5x lever where it is native and a 50x loss where it is not.

How `auto` decides (`native_bf16`), in this order:
- CUDA: `torch.cuda.is_bf16_supported()` (Ampere and later).
- An x86 CPU whose flags are readable (Linux `/proc/cpuinfo`): bfloat16 when the CPU has `avx512_bf16` or `amx_bf16`
  **and** the kernels torch will run may use them (oneDNN reports bf16 support and torch's ATen capability is an
  AVX-512 one; `ONEDNN_MAX_CPU_ISA=AVX2` or `ATEN_CPU_CAPABILITY=avx2` turn both off). This is read, not timed, so the
  same machine always makes the same choice: a timed probe on 2 shared cores could flip between runs, and the dtype is
  part of what a resumed run checks. The flags are reliable on x86: the emulated path is the only one without them.
- Anything else (ARM, macOS, a CPU whose flags cannot be read): a probe, timed once per process (~50 ms): the same
  matmul in both dtypes, bfloat16 chosen only if it is at least 1.3x faster.

An explicit dtype always wins; the resolved value (never `auto`) is what a run records in its config.yaml."""

from __future__ import annotations

import functools
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)
PROBE_MIN_SPEEDUP = 1.3
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choice:
    """A resolved dtype and why: `dtype` is a key of DTYPES, `reason` one human sentence."""

    dtype: str
    reason: str


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags (Linux x86), or None where they cannot be read."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def torch_may_use_bf16_units() -> bool:
    """Whether the kernels torch runs here may use the CPU's bfloat16 instructions (oneDNN's own check, which
    honours ONEDNN_MAX_CPU_ISA, and an AVX-512 ATen capability, which honours ATEN_CPU_CAPABILITY)."""
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn = False
    return onednn and torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def matmul_flops(dtype: torch.dtype, m: int = 256, k: int = 576, n: int = 1536, seconds: float = 0.025) -> float:
    """FLOP/s of an [m, k] @ [k, n] matmul in `dtype` with torch's threads, timed for about `seconds` after one
    warm-up call (the default shape is a SmolLM2 MLP projection of 256 tokens)."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        a @ b
        calls += 1
    return 2 * m * k * n * calls / elapsed


@functools.cache
def bf16_speedup(seconds: float = 0.025) -> float:
    """bfloat16 matmul throughput over float32 on this CPU, timed once per process (~2 x `seconds`)."""
    return matmul_flops(torch.bfloat16, seconds=seconds) / matmul_flops(torch.float32, seconds=seconds)


def native_bf16(device: str | torch.device = "cpu", flags: set[str] | None | str = "read") -> Choice:
    """bfloat16 if `device` computes it natively, else float32; the module docstring says how it decides.
    `flags` is for tests: a set of CPU flags, None (unreadable), or "read" (this machine's)."""
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Choice("bfloat16", f"{torch.cuda.get_device_name(device)} computes bfloat16 natively")
        return Choice("float32", f"{torch.cuda.get_device_name(device)} has no native bfloat16")
    if device.type != "cpu":
        return Choice("float32", f"no bfloat16 rule for device {device.type!r}; float32 is always correct")
    flags = cpu_flags() if flags == "read" else flags
    if flags is not None and platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
        units = sorted({"avx512_bf16", "amx_bf16"} & flags)
        if not units:
            return Choice(
                "float32", "this CPU has no AVX512_BF16 or AMX: bfloat16 matmuls would be emulated (~50x slower)"
            )
        if not torch_may_use_bf16_units():
            isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("ATEN_CPU_CAPABILITY") or "this torch build"
            return Choice("float32", f"the CPU has {'/'.join(units)} but {isa} keeps torch's kernels off them")
        return Choice("bfloat16", f"this CPU has {'/'.join(u.upper() for u in units)}: bfloat16 matmuls run natively")
    ratio = bf16_speedup()
    if ratio >= PROBE_MIN_SPEEDUP:
        return Choice("bfloat16", f"a timed probe found bfloat16 matmuls {ratio:.1f}x as fast as float32 here")
    return Choice("float32", f"a timed probe found bfloat16 matmuls {ratio:.2g}x as fast as float32 here")


def default_device() -> torch.device:
    """Where a model will run when nothing else says: the current CUDA device, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(name: str, device: str | torch.device | None = None) -> Choice:
    """`auto` -> native_bf16(device) (device: the default one); any other name of DTYPES is returned as given."""
    if name == "auto":
        return native_bf16(default_device() if device is None else device)
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPE_CHOICES)}")
    return Choice(name, "set explicitly")


def torch_dtype(name: str, device: str | torch.device | None = None) -> torch.dtype:
    """The torch dtype for a name of DTYPE_CHOICES (`auto` resolved on `device`)."""
    return DTYPES[resolve_dtype(name, device).dtype]


_logged: set[tuple[str, str]] = set()


def resolve_recipe_dtypes(cfg) -> None:
    """Replace `auto` in a validated Config by the dtype it resolves to (model.dtype; algorithm.teacher.dtype when
    the algorithm has a teacher), logging the choice and its reason once per process."""
    slots = [("model.dtype", cfg.model)]
    if cfg.algorithm.name == "distill":
        slots.append(("algorithm.teacher.dtype", cfg.algorithm.teacher))
    for key, section in slots:
        if section.dtype != "auto":
            continue
        choice = resolve_dtype("auto")
        section.dtype = choice.dtype
        if (key, choice.dtype) not in _logged:
            _logged.add((key, choice.dtype))
            log.info("%s: auto -> %s (%s)", key, choice.dtype, choice.reason)
