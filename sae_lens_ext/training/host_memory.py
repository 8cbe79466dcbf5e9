"""Keep freed host memory in malloc's heap, so that training steps stop re-faulting pages.

PyTorch's CPU allocator takes every tensor from ``malloc``. glibc serves a block above its
mmap threshold (128 KiB at first, raised as blocks are freed) with ``mmap`` and unmaps it
on ``free``, and it trims the heap's free top: a step's ``(batch, d_sae)`` temporaries
then land on fresh pages, step after step. Upstream's runner on the tiny local model took
3.4 million page faults (7 s of system time) for 1M tokens; with both thresholds raised,
0.2 million, and 17% less wall time (docs/benchmarks-speed.md). Every ``sae-lens`` command
raises them before it runs: ``mmap`` only for blocks over 64 MiB, the heap trimmed only when
256 MiB of its top is free. Freed memory is reused, not returned: the peak resident size
does not change. glibc only (elsewhere nothing changes); ``SAE_LENS_EXT_KEEP_HOST_MEMORY=0``
leaves malloc as it is.
"""

from __future__ import annotations

import ctypes
import os

ENV = "SAE_LENS_EXT_KEEP_HOST_MEMORY"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 256 << 20


def keep_freed_host_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; whether they were raised."""
    if os.environ.get(ENV, "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc, not musl or macOS  # noqa: B018
    except (OSError, AttributeError):
        return False
    # the mmap threshold first: a raised trim threshold alone stops glibc from raising its
    # mmap threshold, and every block over 128 KiB would then be mapped afresh
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
