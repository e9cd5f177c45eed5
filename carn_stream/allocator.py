"""Keep glibc's allocator from returning large tensors' memory to the OS after every op.

PyTorch's CPU kernels allocate and free frame-sized buffers at every layer. With glibc's
defaults each one above the mmap threshold is a fresh ``mmap``/``munmap`` pair whose pages are
faulted in again and again; raising the thresholds keeps them in the heap. Measured on a
2-core machine: CARN-M 320x180 x4 from 2.68 s to 1.27 s per frame (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
_LARGE = 2**31 - 1


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where not glibc."""
    if not sys.platform.startswith("linux"):
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
