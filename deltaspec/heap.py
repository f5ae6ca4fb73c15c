"""Hand freed heap memory back to the OS between dense layers (glibc's malloc_trim; a no-op elsewhere).

Why: torch's CPU tensors come from malloc. After a large tensor is freed, glibc raises its mmap threshold
(up to 32 MB), so the next layers' ΔW, upcasts and SVD workspaces are carved from the heap instead of
being mapped and unmapped; the small top-k factors kept per layer sit between those chunks, the heap
cannot shrink, and resident memory grows with the number of layers although only one ΔW is alive
(measured in benchmarks/README.md, "Stable Diffusion: resize and extract": +13 MB per 1280×5120 layer).
malloc_trim(0) returns the free pages (also those inside the heap); it costs milliseconds, a dense SVD
costs seconds, so it is called once per dense layer only.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim  # glibc only (musl has none)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def release_freed() -> bool:
    """Return the process's free heap pages to the OS; True where glibc's malloc_trim ran."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
