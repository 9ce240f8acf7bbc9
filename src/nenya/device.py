"""One device and precision policy for extraction and training, and the speed machinery around it.

``auto`` means the same everywhere: bf16 on GPUs (fp16 where bf16 is missing) and on CPUs that
compute bf16 natively (AVX512-BF16, AMX, Arm BF16); fp32 elsewhere. Also: out-of-memory
recognition, giving cached memory back, and ``torch.compile`` with a fallback.
"""

from __future__ import annotations

import functools
import gc
import logging
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:  # torch is imported where it is used: the CLI builds its parser without it
    import torch
    from torch import nn

from nenya._errors import NenyaError

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
    import torch

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
    import torch

    oom_types = tuple(
        t
        for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
        if isinstance(t, type)
    )
    if oom_types and isinstance(error, oom_types):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error).lower() for m in OOM_MESSAGES)


def free_cache(device: torch.device) -> None:
    """Give cached allocator blocks back after an out-of-memory error, so a smaller batch can fit."""
    import torch

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
    import torch

    try:
        return cast("nn.Module", torch.compile(model))
    except Exception as e:
        log.warning(
            "torch.compile failed for %s (%s: %s); running it eagerly",
            name,
            type(e).__name__,
            str(e).strip().splitlines()[0] if str(e).strip() else "",
        )
        return None


PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a clear error."""
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NenyaError("device 'cuda' was asked for but torch sees no GPU; use --device cpu (or auto)")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision name (None means plain fp32).

    ``auto``: bf16 (or fp16 without bf16) on CUDA; on a CPU, bf16 only where the CPU computes it
    natively (AVX512-BF16, AMX, Arm BF16), else fp32. Asking for ``bf16`` on a CPU without native
    support logs a warning: PyTorch then emulates it, several times slower than fp32.
    """
    import torch

    if precision not in PRECISIONS:
        raise NenyaError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return None  # fp32: bf16 is only fast on CPUs with native support
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning(
            "bf16 was asked for on a CPU without native bf16 (no AVX512-BF16/AMX): it will likely be "
            "slower than fp32 here (about 4-5x on AVX2 CPUs), with latents that differ slightly; "
            "use --precision fp32 (or auto) on this machine"
        )
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``; a no-op context for fp32 (``dtype`` None)."""
    import contextlib

    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
