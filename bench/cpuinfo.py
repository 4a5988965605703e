"""The CPU a benchmark ran on, and its measured matmul peak, for the line printed beside every table.

    python bench/cpuinfo.py [--size 2048] [--seconds 2] [--threads 0]

The name comes from /proc/cpuinfo's "model name" (cpuinfo's short name where there is none), the
capability from torch (t2v_dist.precision). The peak is the best of repeated n^3 matmuls (2 n^3 FLOP
each) in fp32 and bf16, timed in the calling process so that a benchmark can divide by it.
"""
from __future__ import annotations

import platform
import time
from pathlib import Path

import fire
import torch

from t2v_dist.precision import cpu_capabilities, describe_cpu


def cpu_model() -> str:
    """Marketing name of the CPU ("Intel(R) Xeon(R) Platinum 8480+"), for display only."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu_capabilities().get("cpu_name") or platform.processor() or "unknown CPU"


def cpu_line() -> str:
    return f"CPU: {cpu_model()}; torch: {describe_cpu()}; threads={torch.get_num_threads()} torch={torch.__version__}"


def matmul_peak(dtype: torch.dtype = torch.float32, size: int = 2048, seconds: float = 2.0) -> float:
    """Best FLOP/s of `size`^3 matmuls of `dtype` over about `seconds` (at least 3 timed repeats)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dtype)
    b = torch.randn(size, size, generator=gen).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: oneDNN picks and caches its kernel
    best, start, runs = float("inf"), time.perf_counter(), 0
    while runs < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
        runs += 1
        if runs >= 3 and time.perf_counter() - start > 4 * seconds:
            break
    return 2 * size ** 3 / best


def main(size: int = 2048, seconds: float = 2.0, threads: int = 0):
    """Print the CPU line and the fp32 / bf16 matmul peaks.

    Args:
        size: matrix size n of the n x n x n matmul.
        seconds: time spent per dtype (best repeat reported).
        threads: torch threads (0 = torch default).
    """
    if threads:
        torch.set_num_threads(threads)
    print(cpu_line(), flush=True)
    for dtype in (torch.float32, torch.bfloat16):
        print(f"matmul {size}^3 {str(dtype).removeprefix('torch.')}: {matmul_peak(dtype, size, seconds) / 1e9:.1f} GFLOP/s",
              flush=True)


if __name__ == "__main__":
    fire.Fire(main)
