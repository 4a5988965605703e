"""Where the bare training step's time goes, by kind of operator, and what that caps the step at.

    python bench/step_profile.py --preset gpt2 --precision fp32 --steps 3

The step is bench/model_throughput.py's (forward, backward, gradient clipping, the job's fused AdamW, no
engine) on the batches a one-rank job of bench/train_throughput.py trains on (the same synthetic shards
and loader overrides). It prints, for the profiled steps:

- the wall time of each phase (forward, backward, gradient clipping, optimizer);
- each kind of operator's own CPU time (torch.profiler; the calling thread's time, which with intra-op
  threads is wall time) and, for matmuls, convolutions and attention, the FLOP/s of their own work
  (FlopCounterMode on the same batch) beside the measured matmul peak;
- the model's FLOP/s (the FLOPs the trainer counts) as a share of the peak, and the same share if every
  kind but the matmuls, convolutions and attention took no time: the ceiling that the rest leaves.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import fire
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpuinfo import cpu_line, matmul_peak  # noqa: E402
from model_throughput import apply_keep_freed_memory, train_step  # noqa: E402
from train_throughput import PAPER, build_shards, job_batches, job_overrides  # noqa: E402

from t2v_dist.config import Config, build_optimizer  # noqa: E402
from t2v_dist.model import T2VModel  # noqa: E402

# Operator kinds, by the aten name of the operator that does the work (its own time, not its children's):
# a name matches a kind when it contains one of the kind's needles; the first kind that matches wins.
KINDS = [
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul")),
    ("convolution", ("convolution",)),
    ("attention", ("attention",)),
    ("normalization", ("group_norm", "layer_norm")),
    ("activation", ("silu", "gelu", "tanh", "sigmoid")),
    ("optimizer", ("adam",)),
    ("norm for clipping", ("vector_norm", "foreach_norm")),
    ("loss (softmax, cross-entropy)", ("softmax", "nll_loss", "cross_entropy")),
    ("copy, fill, cat, index", ("copy_", "fill_", "zero_", "cat", "index", "clone", "empty", "stack", "gather",
                                "scatter", "embedding")),
]
ELEMENTWISE = {"add", "mul", "sub", "div", "sum", "mean", "pow", "abs", "exp", "log", "sqrt", "clamp", "clamp_min",
               "where", "neg", "rsub", "reciprocal", "sgn"}  # also with a trailing "_" (in place)
COMPUTE = ("matmul", "convolution", "attention")
FLOP_KIND = {"mm": "matmul", "addmm": "matmul", "bmm": "matmul", "baddbmm": "matmul",
             "convolution": "convolution", "convolution_backward": "convolution"}


def kind_of(op: str) -> str:
    for kind, needles in KINDS:
        if any(n in op for n in needles):
            return kind
    if op.startswith("aten::") and op[6:].rstrip("_") in ELEMENTWISE:
        return "elementwise"
    return "other"


def counted_flops(model, batch, precision: str) -> dict[str, float]:
    """FLOPs of one forward + backward by kind (matmul, convolution, attention), as torch counts them."""
    flops: dict[str, float] = defaultdict(float)
    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(batch).loss
        loss.backward()
    model.zero_grad(set_to_none=True)
    for op, n in counter.get_flop_counts().get("Global", {}).items():
        name = str(op).split(".")[-1]
        flops[FLOP_KIND.get(name, "attention" if "attention" in name else "other")] += n
    return flops


def main(preset: str = "gpt2", precision: str = "fp32", steps: int = 3, token_budget: int = 400, max_rows: int = 1,
         threads: int = 0, clips: int = 512, keep_freed_memory: bool = True):
    """Profile `steps` bare training steps on the job's batches; print phases, kinds and the ceiling.

    Args:
        preset: model preset.
        precision: fp32 or bf16 (autocast), as the job's train.precision.
        steps: profiled steps (after 2 warm-up steps on the first batches).
        token_budget: packed row length, as bench/train_throughput.py.
        max_rows: rows per batch.
        threads: torch threads (0 = all cores).
        clips: synthetic clips to build.
        keep_freed_memory: keep freed memory in the process, as the trainer does on a CPU.
    """
    if precision not in ("fp32", "bf16"):
        raise SystemExit(f"--precision {precision!r}: expected fp32 or bf16")
    if threads:
        torch.set_num_threads(threads)
    print(cpu_line(), flush=True)
    apply_keep_freed_memory(keep_freed_memory)
    peak = matmul_peak(torch.float32 if precision == "fp32" else torch.bfloat16)
    print(f"matmul peak {precision}: {peak / 1e9:.1f} GFLOP/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_shards(tmp / "shards", clips)
        overrides = job_overrides(preset, tmp / "shards", tmp / "run", steps + 2, precision, token_budget,
                                  max_rows, 0, keep_freed_memory)
        cfg = Config.load(PAPER, overrides)
        batches = job_batches(cfg, steps + 2)
    torch.manual_seed(0)
    model = T2VModel(cfg.model)
    opt = build_optimizer(model.parameters(), cfg.train, "cpu")
    for batch in batches[:2]:  # warm-up: allocator, optimizer state
        train_step(model, opt, batch, precision, cfg.train.grad_clip)
    measured = batches[2:]
    phases: dict[str, float] = defaultdict(float)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in measured:
            for k, v in train_step(model, opt, batch, precision, cfg.train.grad_clip).items():
                phases[k] += v
    wall = sum(phases.values())
    own: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        own[kind_of(event.key)] += event.self_cpu_time_total / 1e6
    flops: dict[str, float] = defaultdict(float)
    for batch in measured:
        for k, v in counted_flops(model, batch, precision).items():
            flops[k] += v
    model_flops = sum(model.flops_per_step(b) for b in measured)

    n = len(measured)
    tokens = statistics.mean(b.num_tokens for b in measured)
    clips_per_step = statistics.mean(b.num_samples for b in measured)
    print(f"preset={preset} precision={precision} steps={n} tokens/step={tokens:.0f} clips/step={clips_per_step:.1f} "
          f"s/step={wall / n:.3f}", flush=True)
    print("\n| phase | s/step | share |\n| --- | ---: | ---: |")
    for k, v in phases.items():
        print(f"| {k} | {v / n:.3f} | {100 * v / wall:.1f}% |")
    print("\n| kind of operator | own s/step | share | GFLOP/s | % of peak |\n| --- | ---: | ---: | ---: | ---: |")
    profiled = sum(own.values())
    for k, v in sorted(own.items(), key=lambda kv: -kv[1]):
        rate = flops.get(k, 0.0) / v if k in COMPUTE and v > 0 else 0.0
        print(f"| {k} | {v / n:.3f} | {100 * v / profiled:.1f}% | {rate / 1e9:.0f} | {100 * rate / peak:.0f}% |"
              if rate else f"| {k} | {v / n:.3f} | {100 * v / profiled:.1f}% | | |")
    compute_s = sum(own[k] for k in COMPUTE)
    print(f"\nmodel FLOP/s: {model_flops / wall / 1e9:.1f} G = {100 * model_flops / wall / peak:.1f}% of the "
          f"{precision} matmul peak; if everything but {', '.join(COMPUTE)} took no time: "
          f"{100 * model_flops / compute_s / peak:.1f}%", flush=True)


if __name__ == "__main__":
    fire.Fire(main)
