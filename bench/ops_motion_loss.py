"""Frame-level losses (frame, diff, first, motion), forward + backward: PyTorch reference vs torch.compile(reference) vs the Triton kernel.

Sizes are those of a real step of the gpt2 preset: clips of 16 or 64 frames of 32x32 or 64x64, 256 or 4096
frames per step, K motion pairs per sample. For each size and implementation it reports the median
forward+backward time (CUDA events on GPU, perf_counter on CPU; after warm-up, implementations
timed round-robin), the peak memory on top of the
inputs, and the achieved bandwidth: the ideal traffic (forward reads pred and target, backward reads them
again and writes grad_pred: 5 * F * P * itemsize bytes) over the time, also as a share of the bandwidth of a
pure read of pred and target (two sum reductions) measured on the same tensors.

  python bench/ops_motion_loss.py                      # GPU: every size, bf16, all three implementations
  python bench/ops_motion_loss.py                      # CPU: the 256-frame sizes, fp32, reference vs compile
  python bench/ops_motion_loss.py --sizes quick --no-compile

The Triton rows run only on CUDA. The table comes last.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ops import motion_frame_loss, sample_motion_pairs  # noqa: E402
from ops.reference import motion_frame_loss_reference  # noqa: E402
from t2v_dist.precision import describe_cpu  # noqa: E402


@dataclass(frozen=True)
class Size:
    frames_per_sample: int
    image_size: int
    frames_per_step: int

    @property
    def pixels(self) -> int:
        return 3 * self.image_size ** 2

    @property
    def label(self) -> str:
        return f"{self.frames_per_sample}f {self.image_size}x{self.image_size} F={self.frames_per_step}"


SIZE_SETS = {
    "gpt2": [Size(m, r, F) for F in (256, 4096) for r in (32, 64) for m in (16, 64)],
    "cpu": [Size(m, r, 256) for r in (32, 64) for m in (16, 64)],
    "quick": [Size(16, 32, 256)],
}


@dataclass
class Row:
    size: Size
    impl: str
    ms: float
    peak_mib: float
    gbs: float
    read_share: float
    speedup: float
    max_rel_err: float


class PeakMemory:
    """Peak bytes allocated during fn() on top of what was live before: the CUDA allocator's statistics on GPU;
    on the CPU, the process's resident high-water mark (reset through /proc/self/clear_refs) with glibc told
    to mmap every block over 64 KiB, so that freed tensors leave the resident set at once."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cpu":
            ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16)   # M_MMAP_THRESHOLD: fixed, no dynamic growth

    @staticmethod
    def _status(key: str) -> int:
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{key} missing from /proc/self/status")

    def measure(self, fn: Callable[[], None]) -> float:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                   # VmHWM := VmRSS
        base = self._status("VmRSS:")
        fn()
        return (self._status("VmHWM:") - base) / 2 ** 20


def interleaved_median_ms(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int,
                          iters: int) -> dict[str, float]:
    """Median time of each fn, measured round-robin (one call of each per round) so that load drift on a
    shared machine hits every implementation alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                fn()
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def make_inputs(size: Size, dtype: torch.dtype, device: torch.device, pairs_per_sample: int):
    g = torch.Generator().manual_seed(0)
    F, P = size.frames_per_step, size.pixels
    target = torch.rand(F, P, generator=g).mul_(2).sub_(1)
    pred = (target + 0.3 * torch.randn(F, P, generator=g)).to(device=device, dtype=dtype).requires_grad_()
    offsets = torch.arange(0, F + 1, size.frames_per_sample)
    pairs = sample_motion_pairs(offsets, pairs_per_sample, g)
    return pred, target.to(device=device, dtype=dtype), offsets.to(device), pairs.to(device)


def implementations(device: torch.device, with_compile: bool) -> dict[str, Callable]:
    """Fresh for each size: torch.compile specialises on the shapes (dynamic=False), so it starts from a reset."""
    impls: dict[str, Callable] = {"reference": motion_frame_loss_reference}
    if with_compile:
        torch._dynamo.reset()
        impls["compile(reference)"] = torch.compile(motion_frame_loss_reference, dynamic=False)
    if device.type == "cuda":
        from ops.triton_kernel import motion_frame_loss_triton
        impls["triton"] = motion_frame_loss_triton
        impls["ops.motion_frame_loss"] = lambda *a, **k: motion_frame_loss(*a, **k, backend="triton")
    return impls


def bench_size(size: Size, args, device: torch.device, memory: PeakMemory) -> list[Row]:
    pred, target, offsets, pairs = make_inputs(size, args.dtype, device, args.pairs_per_sample)
    F, P = pred.shape
    item = pred.element_size()
    ideal_bytes = 5 * F * P * item
    read = "pure read of pred+target"
    steps: dict[str, Callable[[], object]] = {
        read: lambda: (pred.detach().sum(dtype=torch.float32), target.sum(dtype=torch.float32))}
    outputs, first_call_s = {}, {}
    for name, fn in implementations(device, args.compile).items():
        def step(fn=fn):
            pred.grad = None
            losses = fn(pred, target, offsets, pairs, motion_weighted=args.motion_weighted, tau=args.tau)
            sum(term.sum() for term in losses).backward()
            return losses

        t0 = time.perf_counter()
        losses = step()                              # first call: compiles (torch.compile, Triton JIT)
        first_call_s[name] = time.perf_counter() - t0
        outputs[name] = (*(term.detach() for term in losses), pred.grad.detach().clone())
        steps[name] = step

    ms = interleaved_median_ms(steps, device, args.warmup, args.iters)
    read_gbs = 2 * F * P * item / ms[read] / 1e6
    print(f"  {size.label:28s} {read:22s} {ms[read]:9.3f} ms  {read_gbs:7.1f} GB/s", flush=True)
    rows = []
    want = outputs["reference"]
    for name in outputs:
        peak = memory.measure(steps[name])
        gbs = ideal_bytes / ms[name] / 1e6
        err = max(float((g.float() - w.float()).abs().max() / w.float().abs().max().clamp_min(1e-30))
                  for g, w in zip(outputs[name], want))
        rows.append(Row(size, name, ms[name], peak, gbs, gbs / read_gbs, ms["reference"] / ms[name], err))
        print(f"  {size.label:28s} {name:22s} {ms[name]:9.3f} ms  peak {peak:8.1f} MiB  {gbs:7.1f} GB/s"
              f"  (first call {first_call_s[name]:.1f} s)", flush=True)
    return rows


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", choices=sorted(SIZE_SETS), default="gpt2" if cuda else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16" if cuda else "float32")
    parser.add_argument("--warmup", type=int, default=5 if cuda else 2)
    parser.add_argument("--iters", type=int, default=25 if cuda else 5)
    parser.add_argument("--pairs-per-sample", type=int, default=4, help="K (the model's motion_pairs default)")
    parser.add_argument("--motion-weighted", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="include torch.compile of the reference")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    args.dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"# CPU: {describe_cpu()}", flush=True)
    print(f"device: {name}; torch {torch.__version__}; dtype {args.dtype}; K={args.pairs_per_sample}; "
          f"motion_weighted={args.motion_weighted}; median of {args.iters} after {args.warmup} warm-up", flush=True)

    memory = PeakMemory(device)
    rows = [row for size in SIZE_SETS[args.sizes] for row in bench_size(size, args, device, memory)]

    print()
    print(f"{'size':28s} {'implementation':22s} {'fwd+bwd ms':>10s} {'speedup':>8s} {'peak MiB':>9s} "
          f"{'GB/s':>8s} {'% read':>7s} {'max rel err':>11s}")
    for r in rows:
        print(f"{r.size.label:28s} {r.impl:22s} {r.ms:10.3f} {r.speedup:7.2f}x {r.peak_mib:9.1f} "
              f"{r.gbs:8.1f} {100 * r.read_share:6.0f}% {r.max_rel_err:11.1e}")


if __name__ == "__main__":
    main()
