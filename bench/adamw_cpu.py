"""AdamW step time on CPU for a GPT-2-small-sized parameter set (~124M fp32 parameters).

Compares torch.optim.AdamW implementations side by side in one process:
  - per GPT-2 tensor (what a plain torch optimizer sees): for-loop, foreach, fused;
  - one flat tensor (what ZeRO-1/2 hands the client optimizer: a flat fp32 partition
    per param group): foreach, fused, and DeepSpeedCPUAdam (JIT-built C++/AVX op) with --cpu-adam.

Usage: python bench/adamw_cpu.py [--steps 5] [--cpu-adam] [--budget-s 300]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpuinfo import cpu_line  # noqa: E402


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    d, vocab, ctx, layers = 768, 50257, 1024, 12
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


def make_params(shapes, flat: bool) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    if flat:
        n = sum(torch.Size(s).numel() for s in shapes)
        params = [torch.nn.Parameter(torch.randn(n, generator=gen))]
    else:
        params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    return params


def time_steps(opt: torch.optim.Optimizer, steps: int) -> float:
    """Fastest of `steps` timed steps: the machine is shared, and the minimum is the least disturbed one."""
    opt.step()  # first step allocates exp_avg / exp_avg_sq
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--cpu-adam", action="store_true", help="also time DeepSpeedCPUAdam (JIT build on first use)")
    parser.add_argument("--budget-s", type=float, default=600, help="no new variant starts after this many seconds")
    args = parser.parse_args()
    deadline = time.perf_counter() + args.budget_s
    shapes = gpt2_small_shapes()
    n = sum(torch.Size(s).numel() for s in shapes)
    print(cpu_line(), flush=True)
    print(f"params={n / 1e6:.1f}M", flush=True)
    hp = dict(lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    variants = [
        ("per-tensor for-loop", False, lambda ps: torch.optim.AdamW(ps, foreach=False, fused=False, **hp)),
        ("per-tensor foreach", False, lambda ps: torch.optim.AdamW(ps, foreach=True, **hp)),
        ("per-tensor fused", False, lambda ps: torch.optim.AdamW(ps, fused=True, **hp)),
        ("flat foreach", True, lambda ps: torch.optim.AdamW(ps, foreach=True, **hp)),
        ("flat fused", True, lambda ps: torch.optim.AdamW(ps, fused=True, **hp)),
    ]
    if args.cpu_adam:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        variants.append(("flat DeepSpeedCPUAdam", True,
                         lambda ps: DeepSpeedCPUAdam(ps, adamw_mode=True, **hp)))
    base = None
    for name, flat, build in variants:  # the for-loop first: every later line has its ratio
        if time.perf_counter() > deadline:
            print(f"{name:24s} not measured: budget of {args.budget_s:.0f} s spent", flush=True)
            continue
        params = make_params(shapes, flat)
        sec = time_steps(build(params), args.steps)
        del params
        base = base or sec
        print(f"{name:24s} {sec * 1e3:8.1f} ms/step (min)  {base / sec:5.2f}x vs for-loop", flush=True)


if __name__ == "__main__":
    main()
