"""Speed machinery of the Encoder: native-bf16 detection, out-of-memory recognition, torch.compile."""

from __future__ import annotations

import functools
import gc
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

#: /proc/cpuinfo flags of CPUs that compute bf16 natively (x86 AVX512-BF16 / AMX, Arm BF16).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")

#: Fragments of allocator messages that mean "out of memory" (CUDA, MPS, CPU, XPU).
OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16, AMX or Arm BF16).

    Without it, PyTorch emulates bf16 matmuls and convolutions, which on such CPUs is several
    times slower than fp32 (about 4-5x on an AVX2 EPYC), so bf16 is no speed-up there.
    """
    try:
        capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    except Exception:  # older torch or an exotic build: fall back to the flags
        capability = ""
    if "AVX512_BF16" in capability or "AMX" in capability:
        return True
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):  # x86 / Arm
                    flags = set(line.split(":", 1)[1].split())
                    return any(flag in flags for flag in NATIVE_BF16_FLAGS)
    except OSError:
        pass
    return False


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` is an allocator's out-of-memory error (CUDA, MPS, CPU)."""
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if isinstance(t, type))
    if oom_types and isinstance(error, oom_types):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error).lower() for m in OOM_MESSAGES)


def free_cache(device: torch.device) -> None:
    """Give cached allocator blocks back after an out-of-memory error, so a smaller batch can fit."""
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        try:
            torch.mps.empty_cache()
        except Exception:  # pragma: no cover - MPS-only
            pass


def compile_model(model: nn.Module, name: str) -> nn.Module | None:
    """``torch.compile(model)`` (default mode), or None with a warning when it cannot compile.

    Compilation itself happens at the first forward; the Encoder falls back to eager there too.
    """
    try:
        return torch.compile(model)
    except Exception as e:
        log.warning("torch.compile failed for %s (%s: %s); running it eagerly", name, type(e).__name__,
                    str(e).strip().splitlines()[0] if str(e).strip() else "")
        return None
