"""Keep a long-lived inference process's resident memory near its working set.

glibc raises its mmap threshold each time a large block is freed (up to 32 MB), so after the first forward the
activations of later ones come from the heap, which it seldom gives back: a CPU worker holding ViT-L peaked about
110 MB higher for it. Pinning the threshold makes large blocks mmap'd again and returned on free, at the price of
faulting fresh pages in on every forward; `bench/memory.py` measures both the peak and the job time. Small blocks
freed inside the heap stay resident until the heap is trimmed, which a low-memory worker does between jobs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["pin_mmap_threshold", "release_free_heap"]

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
DEFAULT_THRESHOLD = 1 << 20


def _glibc(function: str):
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name or "libc.so.6"), function)
    except (OSError, AttributeError):
        log.debug("no glibc %s here; the heap keeps its default policy", function)
        return None


def pin_mmap_threshold(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes for this process; False where the C library is not glibc
    (nothing changes there)."""
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, int(threshold)))


def release_free_heap() -> bool:
    """Hand the free pages inside glibc's heap back to the OS (`malloc_trim(0)`); small blocks freed between
    jobs otherwise stay resident under the next job's peak. False where the C library is not glibc."""
    trim = _glibc("malloc_trim")
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
