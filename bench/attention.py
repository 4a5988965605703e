"""Packed causal attention, forward + backward, at the model's real row lengths: xformers vs varlen vs SDPA.

    python bench/attention.py                        # GPU: bf16, the gpt2 shapes, every backend that runs
    python bench/attention.py --rows 2 --row-len 64 --heads 2 --head-dim 16 --iters 2   # CPU: sdpa only

Rows are packed like the loader packs them: clips of `--frames` frames with captions of about 8
tokens (so about 24 positions per sample) fill `--row-len` positions; the rest is padding, its own
causal segment. Each backend runs `PackedLayout.attend` on (rows, heads, row_len, head_dim)
tensors and its backward; the median of `--iters` timed runs (CUDA events; perf_counter on the
CPU) after warm-up, backends timed round-robin. Every backend's output and gradients are compared
with SDPA's. The fastest backend that runs is what `auto` should prefer: the last line says whether
attention.AUTO_ORDER agrees. `--out` writes the results as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ops_motion_loss import interleaved_median_ms  # noqa: E402
from t2v_dist.attention import AUTO_ORDER, PackedLayout, select_backend  # noqa: E402


def packed_rows(rows: int, row_len: int, sample_len: int, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """segment_ids (rows, row_len) and seqlens: samples of sample_len +- 25%, then padding."""
    g = torch.Generator().manual_seed(seed)
    ids, seqlens, seg = [], [], 0
    for _ in range(rows):
        row, used = [], 0
        while True:
            n = int(sample_len * (0.75 + 0.5 * torch.rand(1, generator=g)))
            if used + n > row_len:
                break
            row += [seg] * n
            seqlens.append(n)
            seg, used = seg + 1, used + n
        if used < row_len:
            row += [seg] * (row_len - used)
            seqlens.append(row_len - used)
            seg += 1
        ids.append(row)
    return torch.tensor(ids), seqlens


def step_fn(backend: str, segment_ids, seqlens, q, k, v, grad):
    def step():
        for t in (q, k, v):
            t.grad = None
        out = PackedLayout(segment_ids, seqlens, backend).attend(q, k, v)  # the mask is built per step, as in the model
        out.backward(grad)
        return out
    return step


def main() -> None:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=16, help="packed rows per micro-batch")
    ap.add_argument("--row-len", type=int, nargs="+", default=[1024, 4096], help="token_budget values to try")
    ap.add_argument("--sample-len", type=int, default=24, help="mean positions per sample (caption + frames - 1)")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16" if cuda else "float32")
    ap.add_argument("--warmup", type=int, default=5 if cuda else 1)
    ap.add_argument("--iters", type=int, default=30 if cuda else 3)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"device: {name}; torch {torch.__version__}; {args.dtype}; heads {args.heads} x {args.head_dim}; "
          f"median of {args.iters} after {args.warmup} warm-up", flush=True)
    results = {"device": name, "torch": torch.__version__, "args": vars(args), "runs": [], "skipped": {}}
    g = torch.Generator().manual_seed(0)
    for row_len in args.row_len:
        segment_ids, seqlens = packed_rows(args.rows, row_len, args.sample_len)
        segment_ids = segment_ids.to(device)
        shape = (args.rows, args.heads, row_len, args.head_dim)
        q, k, v = (torch.randn(shape, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
        grad = torch.randn(shape, generator=g).to(device, dtype)
        steps, outputs = {}, {}
        for backend in ("sdpa", "xformers", "varlen"):
            try:
                select_backend(backend, q)
                step = step_fn(backend, segment_ids, seqlens, q, k, v, grad)
                out = step()
                outputs[backend] = [out.detach().float()] + [t.grad.detach().float() for t in (q, k, v)]
                steps[backend] = step
            except Exception as exn:  # not installed, not CUDA, not this dtype: reported, not fatal
                results["skipped"][backend] = f"{type(exn).__name__}: {str(exn)[:200]}"
        ms = interleaved_median_ms(steps, device, args.warmup, args.iters)
        # causal block-diagonal attention: 2 matmuls of sum(L^2)/2 MACs each forward, 2.5x that backward
        flops = 3.5 * 4 * args.heads * args.head_dim * sum(n * n for n in seqlens) / 2
        for backend, t in ms.items():
            err = max(float((a - b).norm() / b.norm().clamp_min(1e-30))
                      for a, b in zip(outputs[backend], outputs["sdpa"]))
            run = {"row_len": row_len, "rows": args.rows, "samples": len(seqlens), "backend": backend,
                   "fwd_bwd_ms": round(t, 4), "tflops": round(flops / t / 1e9, 2),
                   "speedup_vs_sdpa": round(ms["sdpa"] / t, 2), "max_rel_err_vs_sdpa": err}
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
    for backend, why in results["skipped"].items():
        print(f"skipped {backend}: {why}")
    # auto's choice: the backend with the lowest total time over the row lengths, among those that ran at all
    totals = {}
    for run in results["runs"]:
        totals[run["backend"]] = totals.get(run["backend"], 0.0) + run["fwd_bwd_ms"]
    complete = {b: t for b, t in totals.items() if sum(r["backend"] == b for r in results["runs"]) == len(args.row_len)}
    fastest = min(complete, key=complete.get) if complete else None
    available = [b for b in AUTO_ORDER if b in complete]
    auto_now = available[0] if available else "sdpa"
    results.update(fastest=fastest, auto_picks=auto_now, auto_order=list(AUTO_ORDER),
                   auto_agrees=fastest == auto_now)
    print()
    print(f"{'row_len':>7} {'backend':>9} {'fwd+bwd ms':>10} {'TFLOP/s':>8} {'vs sdpa':>8} {'rel err':>8}")
    for r in results["runs"]:
        print(f"{r['row_len']:>7} {r['backend']:>9} {r['fwd_bwd_ms']:>10.3f} {r['tflops']:>8.1f} "
              f"{r['speedup_vs_sdpa']:>7.2f}x {r['max_rel_err_vs_sdpa']:>8.1e}")
    print(f"fastest: {fastest}; auto picks {auto_now} (AUTO_ORDER={list(AUTO_ORDER)}): "
          + ("agrees" if results["auto_agrees"] else "DISAGREES: reorder attention.AUTO_ORDER"))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
