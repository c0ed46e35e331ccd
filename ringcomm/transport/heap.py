"""Process-wide heap tuning for transports that allocate a buffer per received segment."""

from __future__ import annotations

import ctypes

_malloc_tuned = False

# glibc mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc(segment_bytes: int) -> bool:
    """Keep receive buffers (one malloc per segment) on the heap; once per process.

    By default glibc serves a multi-MiB malloc with a fresh mmap whenever its adaptive
    threshold says so, and every page of it then faults on first touch: measured here at
    up to 2,300 faults and +6 ms of system time per 16 MiB allreduce on some ranks (4 ranks,
    2 cores). Fixing the mmap threshold above the segment size and the trim threshold well
    above that keeps freed frames for reuse: 0 faults per op. The cost is that up to
    ``8 * threshold`` bytes of freed heap may stay with the process, and the setting is
    the whole process's, for good: other libraries' large buffers change behaviour too
    (MPICH's 16 MiB allreduce ran 2.7x slower after it, see ``bench/side_effects.py``).
    So it is off unless ``RINGCOMM_TUNE_MALLOC=1``. Returns whether it was applied (glibc
    only).
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    threshold = min(32 << 20, max(4 << 20, 2 * segment_bytes + (64 << 10)))
    _malloc_tuned = bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 8 * threshold)
    )
    return _malloc_tuned
