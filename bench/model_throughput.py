"""Forward + backward + optimizer throughput of the model on this machine (samples/s, frames/s).

    python bench/model_throughput.py --preset gpt2 --frames 16 --size 32 --batch_sizes 1,16 --steps 5

Each configuration trains on a fixed packed batch of `batch_size` clips (16 frames of 32x32, synthetic
captions) with AdamW (fused on CPU), in fp32 and in bf16 autocast, side by side in one process.
The authors' code took 1.10 s per step at batch 1 (0.909 samples/s) on this class of machine.
"""
from __future__ import annotations

import time

import fire
import numpy as np
import torch

from t2v_dist.model import ModelConfig, T2VModel
from t2v_dist.packing import pack_samples
from t2v_dist.tokenizer import encode_caption, load_tokenizer

CAPTIONS = ["a red circle moves left", "a small blue square is moving up", "a green triangle moves right"]


def make_batch(batch_size: int, frames: int, size: int, token_budget: int):
    tok = load_tokenizer()
    rng = np.random.default_rng(0)
    samples = [dict(key=f"b{i}", tokens=encode_caption(tok, CAPTIONS[i % 3], 64),
                    frames=rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)) for i in range(batch_size)]
    return pack_samples(samples, token_budget, seed=0)


def time_steps(model, opt, batch, steps: int, precision: str) -> float:
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: allocator, autocast caches, optimizer state
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _as_list(value) -> list[str]:
    """fire turns "1,16" into a tuple; accept either form."""
    return [str(v) for v in value] if isinstance(value, (tuple, list)) else str(value).split(",")


def main(preset: str = "gpt2", frames: int = 16, size: int = 32, batch_sizes: str = "1,16", steps: int = 5,
         precisions: str = "fp32,bf16", token_budget: int = 1024, threads: int = 0):
    """Print a table of step time, samples/s and frames/s.

    Args:
        preset: model preset (tiny, gpt2, gpt2-medium, ...).
        frames: frames per clip.
        size: frame height and width.
        batch_sizes: comma-separated clips per step.
        steps: timed steps per configuration (median reported).
        precisions: comma-separated, from fp32 and bf16 (autocast).
        token_budget: packed row length.
        threads: torch threads (0 = torch default).
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = T2VModel(ModelConfig.from_preset(preset, image_size=size, loss_backend="reference"))
    print(f"preset={preset} params={model.num_params() / 1e6:.1f}M (backbone {model.num_params(True) / 1e6:.1f}M) "
          f"threads={torch.get_num_threads()} torch={torch.__version__}")
    rows = []
    for bs in [int(b) for b in _as_list(batch_sizes)]:
        batch = make_batch(bs, frames, size, token_budget)
        for precision in _as_list(precisions):
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
            sec = time_steps(model, opt, batch, steps, precision)
            rows.append((bs, precision, sec, bs / sec, bs * frames / sec, model.flops_per_step(batch) / sec / 1e12))
            del opt
    print(f"{'batch':>5} {'prec':>5} {'s/step':>8} {'samples/s':>10} {'frames/s':>9} {'TFLOP/s':>8} {'vs authors':>10}")
    for bs, prec, sec, sps, fps, tflops in rows:
        print(f"{bs:>5} {prec:>5} {sec:>8.3f} {sps:>10.2f} {fps:>9.1f} {tflops:>8.3f} {sps / 0.909:>9.1f}x")


if __name__ == "__main__":
    fire.Fire(main)
