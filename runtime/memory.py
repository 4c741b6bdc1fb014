"""Keeping freed memory in the process heap, so a training loop's steady state takes no page faults.

Every step of the NumPy runtime allocates and frees the same large arrays (im2col matrices, activations,
gradients). glibc serves such sizes with mmap, or trims them off the heap when freed, so each step maps
fresh pages and the kernel zero-fills them: on the seed CNN at batch 32, about 2,700 page faults a step,
a third of its time. Raising glibc's mmap and trim thresholds keeps freed blocks in the heap for the next
step instead. It is the steady-state buffer reuse of a memory plan, done by the allocator. The setting is
process-wide, so it is made once, only for the NumPy backend, and NND_KEEP_HEAP=0 turns it off; on
systems without glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks below this size come from the heap, not from mmap; glibc caps the mmap threshold at 32 MiB on
# 64-bit systems (HEAP_MAX_SIZE / 2), which covers a CNN's buffers up to large batches.
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 1 << 30

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse; True when the setting took effect (once per process)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("NND_KEEP_HEAP", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _applied
