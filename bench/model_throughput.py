"""Forward + backward + optimizer throughput of the model on this machine (samples/s, frames/s).

    python bench/model_throughput.py --preset gpt2 --batch_sizes 1,16 --steps 5 --budget_s 300 \
        [--authors /tmp/authors --mingpt /tmp/minGPT]

Each configuration trains on a fixed packed batch of `batch_size` clips (16 frames of 32x32, synthetic
captions) with AdamW (fused on CPU), in fp32 and in bf16 autocast, side by side in one process. The
CPU line (model, torch's capability) and the fp32/bf16 matmul peaks measured in the same run come
first; each row prints as soon as it is measured, with its share of the matmul peak of its precision.
With --authors/--mingpt the authors' training step is timed first (bench/authors.py) and every row
gets its ratio to it; without them that column is left out.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import fire
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from authors import authors_reference  # noqa: E402
from cpuinfo import cpu_line, matmul_peak  # noqa: E402
from t2v_dist import host_memory  # noqa: E402
from t2v_dist.model import ModelConfig, T2VModel  # noqa: E402
from t2v_dist.packing import pack_samples  # noqa: E402
from t2v_dist.tokenizer import encode_caption, load_tokenizer  # noqa: E402

CAPTIONS = ["a red circle moves left", "a small blue square is moving up", "a green triangle moves right"]


def build_model(preset: str, size: int, **overrides) -> T2VModel:
    torch.manual_seed(0)
    return T2VModel(ModelConfig.from_preset(preset, image_size=size, loss_backend="reference", **overrides))


def make_batch(batch_size: int, frames: int, size: int, token_budget: int):
    tok = load_tokenizer()
    rng = np.random.default_rng(0)
    samples = [dict(key=f"b{i}", tokens=encode_caption(tok, CAPTIONS[i % 3], 64),
                    frames=rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)) for i in range(batch_size)]
    return pack_samples(samples, token_budget, seed=0)


def apply_keep_freed_memory(keep: bool) -> None:
    """Keep freed memory in this process as the trainer does on a CPU (train.keep_freed_memory) when `keep`,
    and print whether it took."""
    kept = keep and host_memory.keep_freed_memory()
    print(f"keep_freed_memory={keep} (in this process: {'on' if kept else 'off'})", flush=True)


def train_step(model, opt, batch, precision: str, grad_clip: float = 0.0) -> dict[str, float]:
    """One bare training step: forward (bf16 autocast when `precision` is bf16), backward, optional
    clipping of the global gradient norm (`grad_clip` > 0, as the training job does), optimizer update.
    Returns the wall seconds of each phase."""
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = model(batch).loss
    t1 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    t2 = time.perf_counter()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    t3 = time.perf_counter()
    opt.step()
    t4 = time.perf_counter()
    return {"forward": t1 - t0, "backward": t2 - t1, "gradient clipping": t3 - t2, "optimizer": t4 - t3}


def time_steps(model, opt, batch, steps: int, precision: str, deadline: float = float("inf"),
               grad_clip: float = 0.0) -> float:
    """Median seconds of `steps` training steps after a warm-up; stops early (>= 1 step) past `deadline`."""
    train_step(model, opt, batch, precision, grad_clip)  # warm-up: allocator, autocast caches, optimizer state
    times = []
    while len(times) < steps and (not times or time.perf_counter() < deadline):
        times.append(sum(train_step(model, opt, batch, precision, grad_clip).values()))
    return float(np.median(times))


def measure_peaks(seconds: float = 2.0) -> dict[str, float]:
    """FLOP/s of a 2048^3 matmul per precision, printed as measured."""
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        peaks[name] = matmul_peak(dtype, seconds=seconds)
        print(f"matmul peak {name}: {peaks[name] / 1e9:.1f} GFLOP/s", flush=True)
    return peaks


def _as_list(value) -> list[str]:
    """fire turns "1,16" into a tuple; accept either form."""
    return [str(v) for v in value] if isinstance(value, (tuple, list)) else str(value).split(",")


def main(preset: str = "gpt2", frames: int = 16, size: int = 32, batch_sizes: str = "1,16", steps: int = 5,
         precisions: str = "fp32,bf16", token_budget: int = 1024, threads: int = 0, budget_s: float = 900,
         authors: str | None = None, mingpt: str | None = None, keep_freed_memory: bool = True):
    """Print the CPU, the matmul peaks, then one line per (batch, precision) as it is measured.

    Args:
        preset: model preset (tiny, gpt2, gpt2-medium, ...).
        frames: frames per clip.
        size: frame height and width.
        batch_sizes: comma-separated clips per step.
        steps: timed steps per configuration (median reported).
        precisions: comma-separated, from fp32 and bf16 (autocast).
        token_budget: packed row length.
        threads: torch threads (0 = torch default; on a shared machine 1 keeps timings stable).
        budget_s: time budget: no new configuration starts after it, and a running one stops after one step.
        authors: checkout of the authors' repository: time their step in this run for the ratio column.
        mingpt: checkout of karpathy/minGPT (needed with --authors).
        keep_freed_memory: keep freed memory in the process, as the trainer does on a CPU
            (train.keep_freed_memory; t2v_dist/host_memory.py).
    """
    start = time.perf_counter()
    deadline = start + budget_s
    if threads:
        torch.set_num_threads(threads)
    print(cpu_line(), flush=True)
    apply_keep_freed_memory(keep_freed_memory)
    peaks = measure_peaks()
    ref = authors_reference(authors, mingpt, budget_s / 4) if authors else None
    model = build_model(preset, size)
    print(f"preset={preset} params={model.num_params() / 1e6:.1f}M (backbone {model.num_params(True) / 1e6:.1f}M) "
          f"frames={frames} size={size}", flush=True)
    print(f"{'batch':>5} {'prec':>5} {'s/step':>8} {'samples/s':>10} {'frames/s':>9} {'GFLOP/s':>8} {'% peak':>7}"
          + (f" {'vs authors':>10}" if ref else ""), flush=True)
    for bs in [int(b) for b in _as_list(batch_sizes)]:
        batch = make_batch(bs, frames, size, token_budget)
        for precision in _as_list(precisions):
            if time.perf_counter() > deadline:
                print(f"budget of {budget_s:.0f} s spent: batch {bs} {precision} not measured", flush=True)
                continue
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
            sec = time_steps(model, opt, batch, steps, precision, deadline)
            flops = model.flops_per_step(batch) / sec
            line = (f"{bs:>5} {precision:>5} {sec:>8.3f} {bs / sec:>10.2f} {bs * frames / sec:>9.1f} "
                    f"{flops / 1e9:>8.1f} {100 * flops / peaks[precision]:>6.1f}%")
            print(line + (f" {bs / sec / ref:>9.1f}x" if ref else ""), flush=True)
            del opt


if __name__ == "__main__":
    fire.Fire(main)
