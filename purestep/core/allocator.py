"""glibc's malloc thresholds, raised in a training process so a step's fresh tensors reuse freed memory.

A functional step allocates new params, optimizer state and gradients every step and frees the
last step's. glibc serves a block above its mmap threshold with a new mapping and returns a
freed heap top above its trim threshold to the system, so such a step can fault in and zero
fresh pages every time (glibc's own adjustment of the threshold settles on some sizes, not on a
step's mix of them). `keep_freed_memory` raises both with `mallopt`, glibc's documented call:
freed blocks are reused, at the price of up to `TRIM_BYTES` of freed memory kept by the process.
Measured in BENCHMARKS.md ("The allocator"). Nothing changes off glibc or with
`PURESTEP_FAST_PATHS=0`.
"""

from __future__ import annotations

import ctypes
import functools
import os

from purestep.core import fastpath

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""`mallopt`'s parameter numbers (glibc's malloc.h)."""
MMAP_BYTES = 32 * 2**20
"""The largest mmap threshold glibc accepts on a 64-bit system: smaller blocks come from the heap."""
TRIM_BYTES = 256 * 2**20


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds, once per process; whether both were set."""
    if not fastpath.enabled():
        return False
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return False
        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
