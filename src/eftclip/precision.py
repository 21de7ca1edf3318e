"""Which arithmetic a run uses: fp32, or bf16/fp16 autocast where the device does it natively.

``precision`` is ``auto``, ``fp32``, ``bf16`` or ``fp16``.  On CUDA, ``auto``
means bf16.  On CPU, ``auto`` stays fp32 (bf16 changes the numbers, and on the
project's small models it does not measure faster: ``benchmarks/results/cpu-precision``);
``bf16`` autocasts when the CPU has native bf16 instructions (AVX512-BF16 or
AMX) and falls back to fp32 with a warning otherwise; ``fp16`` is for GPUs only.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from pathlib import Path
from typing import Callable

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU does bf16 natively: AVX512-BF16 or AMX in /proc/cpuinfo, else oneDNN's own check."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        words = set(cpuinfo.read_text(encoding="utf-8", errors="replace").split())
        return any(flag in words for flag in BF16_CPU_FLAGS)
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """The precision a run on ``device`` really uses for ``requested``: ``fp32``, ``bf16`` or ``fp16``."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if requested == "auto" else requested
    if requested == "bf16" and cpu_has_bf16():
        return "bf16"
    if requested == "bf16":
        warnings.warn(f"--precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); using fp32 on {device}",
                      stacklevel=2)
    elif requested == "fp16":
        warnings.warn(f"--precision fp16: half precision is for GPUs; using fp32 on {device}", stacklevel=2)
    return "fp32"


def autocast_for(precision: str, device: torch.device | str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the autocast context for a resolved ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext
    device_type = torch.device(device).type
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type, dtype=dtype)
