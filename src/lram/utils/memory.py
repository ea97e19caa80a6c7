"""Process-level memory settings that make CPU training faster.

glibc's malloc hands allocations above its mmap threshold (128 KB, growing dynamically) back to the
operating system when they are freed, so every training step maps fresh pages for its large activations and
pays a page fault per 4 KB page on first touch (PyTorch's CPU allocator does not cache).  Raising the mmap
threshold to its maximum (32 MB on 64-bit glibc) and the trim threshold keeps freed activations in the heap
for the next step; measured: +10-30% training throughput for every backbone on a 2-core CPU
(benchmarks/RESULTS.md).  Memory that was freed stays reserved by the process (up to the peak of a step).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_MAX_64BIT = 32 * 1024 * 1024  # glibc refuses larger mmap thresholds (HEAP_MAX_SIZE / 2)
_done: list[bool] = []


def keep_freed_memory() -> bool:
    """Keep freed allocations below 32 MB in the heap (glibc ``mallopt``); True if applied.  Off with
    ``LRAM_MALLOC_TUNING=0``; a no-op where the C library is not glibc."""
    if _done:
        return _done[0]
    ok = False
    if os.environ.get("LRAM_MALLOC_TUNING", "1") != "0":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            ok = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX_64BIT)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
        except (OSError, AttributeError):
            ok = False
    _done.append(ok)
    return ok
