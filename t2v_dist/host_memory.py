"""Keep freed host memory in the process on CPU runs, instead of handing it back to the OS after each step.

A CPU training step allocates and frees buffers of hundreds of MB (the vocab x d_model embedding
gradient, the U-Net's activations). glibc serves every allocation above its mmap threshold (at most
32 MB) with a fresh mmap and unmaps it on free, so every step page-faults those buffers in again: 12% of
the `gpt2` preset's bare fp32 step on a 2-core Xeon, 14-30% of the job's (BENCHMARKS.md, "Host memory"). `mallopt`
turns that off for the rest of the process: large blocks come from the heap, and freed memory stays
there for the next step. The process's resident memory then stays at about its peak, which a training
process reaches every step anyway; glibc does not always reuse the same places for the large blocks, so
the heap can grow somewhat past it before it settles (gpt2 preset fp32 job: 4.91 GB peak, 4.73 GB without).
"""
from __future__ import annotations

import ctypes
import ctypes.util

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4

_SETTINGS = (
    (M_MMAP_MAX, 0),                 # no mmap for large blocks: they come from the heap and stay there
    (M_TRIM_THRESHOLD, 2**31 - 1),   # return the heap's free top to the OS only beyond 2 GiB
    (M_TOP_PAD, 64 << 20),           # grow the heap 64 MiB at a time
)


def keep_freed_memory() -> bool:
    """Apply the settings above to this process (and processes it forks later); False where the C
    library is not glibc or refuses one of them (nothing then changes but what was already set)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in _SETTINGS)
