"""What this CPU is: its name and the matrix/vector features the precision modes depend on.

The features are those the math libraries will use: oneDNN's ``ONEDNN_MAX_CPU_ISA`` (honoured
by torch and OpenVINO alike) caps them, so that a capped run (e.g. an AVX2-only CPU measured on
a newer one, docs/PERFORMANCE.md) makes the choices that CPU would make.
"""

from __future__ import annotations

import os
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


#: oneDNN's ISA caps -> the :data:`FEATURES` they leave usable (a cap not listed leaves all).
ISA_CAPS = {
    "SSE41": (),
    "AVX": (),
    "AVX2": ("avx2",),
    "AVX2_VNNI": ("avx2", "avx_vnni"),
    "AVX2_VNNI_2": ("avx2", "avx_vnni"),
    "AVX512_CORE": ("avx2",),
    "AVX512_CORE_VNNI": ("avx2", "avx512_vnni"),
    "AVX512_CORE_BF16": ("avx2", "avx512_vnni", "avx512_bf16"),
    "AVX512_CORE_FP16": ("avx2", "avx512_vnni", "avx512_bf16", "avx512_fp16"),
    "AVX10_1_512": ("avx2", "avx512_vnni", "avx512_bf16", "avx512_fp16"),
}


def isa_cap() -> str | None:
    """The ISA cap set for oneDNN (``ONEDNN_MAX_CPU_ISA``, or its older ``DNNL_`` name), upper
    case, or None."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value else None


def cpu_features() -> tuple[str, ...]:
    """The :data:`FEATURES` this CPU reports, in that order, less those an ISA cap excludes."""
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            allowed = ISA_CAPS.get(isa_cap() or "", FEATURES)
            return tuple(f for f in FEATURES if f in flags and f in allowed)
    return ()


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX-512 BF16 or AMX); elsewhere bf16 is
    emulated and slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_features()))
