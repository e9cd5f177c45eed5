"""Keep glibc's allocator from returning large tensors' memory to the OS after every op.

PyTorch's CPU kernels allocate and free frame-sized buffers at every layer. With glibc's
defaults each one above the mmap threshold is a fresh ``mmap``/``munmap`` pair whose pages are
faulted in again and again; raising the thresholds keeps them in the heap. Measured on a
2-core machine: CARN-M 320x180 x4 from 2.68 s to 1.27 s per frame (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from carn_stream.settings import ALLOCATORS

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
_LARGE = 2**31 - 1


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where not glibc."""
    if not sys.platform.startswith("linux") or jemalloc_loaded():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        # One arena: threads' own arenas are capped at 64 MB heaps, so frame-sized buffers
        # allocated by the inference thread would be mmap'ed whatever the threshold.
        mallopt(_M_ARENA_MAX, 1)
        and mallopt(_M_MMAP_THRESHOLD, _LARGE)
        and mallopt(_M_TRIM_THRESHOLD, _LARGE)
        and mallopt(_M_TOP_PAD, 1 << 28)
    )


#: Where Debian/Ubuntu (any architecture) and most distributions install jemalloc.
JEMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
)
#: jemalloc options: transparent huge pages for the large activation buffers, background purging.
JEMALLOC_CONF = "background_thread:true,metadata_thp:auto,thp:always,dirty_decay_ms:30000"


def find_jemalloc() -> str | None:
    return next((p for p in JEMALLOC_PATHS if os.path.isfile(p)), None)


def jemalloc_loaded() -> bool:
    return "jemalloc" in os.environ.get("LD_PRELOAD", "")


def relaunch_with_jemalloc(choice: str, argv: list[str]) -> None:
    """With ``jemalloc``, re-execute this command with jemalloc preloaded (and transparent huge
    pages); with ``glibc`` keep glibc's malloc, tuned by :func:`tune_allocator`. Measured on
    2 cores (docs/PERFORMANCE.md) the tuned glibc is as fast or faster, and OpenVINO's int8
    path crashes under a preloaded jemalloc, so glibc is the default. Returns only when no
    relaunch happens."""
    if choice not in ALLOCATORS:  # settings refuse it first; a direct caller may not
        raise ValueError(f"allocator must be one of {ALLOCATORS}, got {choice!r}")
    if choice == "glibc" or jemalloc_loaded() or not sys.platform.startswith("linux"):
        return
    library = find_jemalloc()
    if library is None:
        raise RuntimeError(
            "CARN_STREAM_ALLOCATOR=jemalloc but libjemalloc.so.2 is not installed "
            "(Debian/Ubuntu: apt-get install libjemalloc2)"
        )
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(filter(None, [library, env.get("LD_PRELOAD", "")]))
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    os.execve(sys.executable, [sys.executable, "-m", "carn_stream.cli", *argv], env)
