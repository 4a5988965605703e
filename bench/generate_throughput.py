"""Generation throughput: videos/s of `T2VModel.generate` at batch 1 and batch B, side by side in one process.

    python bench/generate_throughput.py                                   # tiny and gpt2, 32 frames, batches 1 and 8
    python bench/generate_throughput.py --presets gpt2 --batch_sizes 1,4,8 --budget_s 60

Each configuration generates `frames` frames for `batch_size` prompts (random weights: the cost does not
depend on them) with the KV cache, after one warm-up call; configurations are timed round-robin until
the time budget is spent (at least `min_reps` calls each), and the median call is reported, with the
least CPU time of a call beside it (on a shared machine the fairer figure: other processes' load inflates
wall time, not this process's CPU time, at --threads 1). The target
of issue 11: batch 8 at least 4x the videos/s of batch 1. Each line is printed as soon as it is measured;
the CPU model and ATen's capability come first.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import fire
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from t2v_dist.model import ModelConfig, T2VModel  # noqa: E402
from t2v_dist.precision import describe_cpu  # noqa: E402
from t2v_dist.tokenizer import encode_caption, load_tokenizer  # noqa: E402

PROMPTS = ["a red circle moves left", "a small blue square is moving up", "a green triangle moves right",
           "a yellow circle moves down", "a purple square moves up and to the left", "an orange triangle",
           "a white circle moves right", "a cyan square moves down and to the right"]


def _as_list(value) -> list[str]:
    """fire turns "1,8" into a tuple; accept either form."""
    return [str(v) for v in value] if isinstance(value, (tuple, list)) else str(value).split(",")


def main(presets: str = "tiny,gpt2", batch_sizes: str = "1,8", frames: int = 32, budget_s: float = 60.0,
         min_reps: int = 2, threads: int = 0, device: str = "cpu"):
    """Print, per preset and batch size, the median seconds per generate call, videos/s and the gain over batch 1.

    Args:
        presets: comma-separated model presets (tiny, gpt2, ...).
        batch_sizes: comma-separated prompts per call; the first is the baseline of the gain column.
        frames: frames per video.
        budget_s: wall-clock budget for the timed calls of each preset (warm-up not counted).
        min_reps: timed calls per configuration even past the budget.
        threads: torch intra-op threads (0: torch's default).
        device: cpu or cuda.
    """
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    print(f"# CPU: {describe_cpu()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"device {dev}{' (' + torch.cuda.get_device_name(dev) + ')' if dev.type == 'cuda' else ''}", flush=True)
    print("# the machine may be shared: compare ratios within one run", flush=True)
    tok = load_tokenizer()
    sizes = [int(b) for b in _as_list(batch_sizes)]
    print(f"{'preset':<8} {'batch':>5} {'frames':>6} {'s/call':>8} {'videos/s':>9} {'gain':>6} {'reps':>5} "
          f"{'cpu s/call':>10} {'cpu gain':>8}", flush=True)
    for preset in _as_list(presets):
        torch.manual_seed(0)
        model = T2VModel(ModelConfig.from_preset(preset, max_frames=max(frames, 64))).to(dev).eval()
        ids = [encode_caption(tok, PROMPTS[i % len(PROMPTS)], model.cfg.max_caption_tokens) for i in range(max(sizes))]

        def call(b: int) -> tuple[float, float]:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0, c0 = time.perf_counter(), time.process_time()
            model.generate(ids[:b], num_frames=frames, seed=0)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return time.perf_counter() - t0, time.process_time() - c0

        for b in sizes:
            call(b)                                   # warm-up: allocator, oneDNN primitives
        times: dict[int, list[tuple[float, float]]] = {b: [] for b in sizes}
        start = time.perf_counter()
        while min(len(t) for t in times.values()) < min_reps or time.perf_counter() - start < budget_s:
            for b in sizes:                           # round-robin, so that load changes hit every size alike
                times[b].append(call(b))
        base = base_cpu = None
        for b in sizes:
            s = statistics.median(t for t, _ in times[b])
            cpu = min(c for _, c in times[b])
            rate, rate_cpu = b / s, b / cpu
            base, base_cpu = base or rate, base_cpu or rate_cpu
            print(f"{preset:<8} {b:>5} {frames:>6} {s:>8.3f} {rate:>9.2f} {rate / base:>5.2f}x {len(times[b]):>5} "
                  f"{cpu:>10.3f} {rate_cpu / base_cpu:>7.2f}x", flush=True)


if __name__ == "__main__":
    fire.Fire(main)
