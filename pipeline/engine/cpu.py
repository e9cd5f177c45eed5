"""What this CPU is: its name and the matrix/vector features the precision modes depend on."""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

#: The features that decide which precision modes are fast here.
FEATURES = (
    "avx2",
    "avx_vnni",
    "avx512_bf16",
    "avx512_vnni",
    "avx512_fp16",
    "amx_bf16",
    "amx_int8",
)


@cache
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def cpu_features() -> tuple[str, ...]:
    """The :data:`FEATURES` this CPU reports, in that order."""
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return tuple(f for f in FEATURES if f in flags)
    return ()


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX-512 BF16 or AMX); elsewhere bf16 is
    emulated and slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_features()))


def cpu_has_vnni() -> bool:
    """True where the CPU has int8 dot-product instructions (AVX-VNNI, AVX-512 VNNI or AMX);
    without them int8 multiply-adds go through 16-bit sums that can saturate."""
    return bool({"avx_vnni", "avx512_vnni", "amx_int8"} & set(cpu_features()))
