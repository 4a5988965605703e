"""Throughput of the real training job (launch/train.py, DeepSpeed) beside the bare model step.

    python bench/train_throughput.py --worlds 1,2 --precisions fp32,bf16 --steps 8 --budget_s 900 \
        [--authors /tmp/authors --mingpt /tmp/minGPT]

For each (ranks, precision) it trains on synthetic 16-frame 32x32 shards with the `paper` config
(overridden to a small packed batch for a CPU) and reads rank 0's train_log.jsonl: median samples/s,
frames/s, s/step and the data-loading share, skipping the first 2 steps. For 1 rank it then reads the
job's own batches again (the same shards, loader config and seed) and times the bare model step on each
of them in this process (bench/model_throughput.py's step: forward, backward, gradient clipping, the job's
fused AdamW, no engine), same precision and threads. "job/bare" is the median over steps 3..N of the bare
step's time over the job's on the same batch, "GFLOP/s" the median of the job's model FLOP/s (counted on
each batch), and "% peak" that over the matmul peak of its precision, measured at the start of the run.
Each row prints as soon as it is measured. With --authors/--mingpt the authors' training step is timed in
the same run (bench/authors.py) for the last column.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fire
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from authors import authors_reference  # noqa: E402
from cpuinfo import cpu_line  # noqa: E402
from model_throughput import apply_keep_freed_memory, measure_peaks, train_step  # noqa: E402

from t2v_dist.config import Config, build_optimizer  # noqa: E402
from t2v_dist.data.loader import ShardLoader  # noqa: E402
from t2v_dist.model import T2VModel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "launch" / "configs" / "paper.yaml"


def _as_list(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (tuple, list)) else str(value).split(",")


def build_shards(out: Path, clips: int) -> None:
    subprocess.run([sys.executable, "-m", "shards.cli", "synthetic", "--out", str(out), "--num_clips", str(clips),
                    "--frames", "16", "--size", "32", "--seed", "0", "--samples_per_shard", str(max(clips // 16, 1)),
                    "--progress", "False"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)


SKIP = 2  # the job's first steps (allocator, optimizer state, loader start) are not counted


def job_overrides(preset: str, shards: Path, run_dir: Path, steps: int, precision: str, token_budget: int,
                  max_rows: int, workers: int, keep_memory: bool) -> list[str]:
    """The job's overrides of the paper config: also how this process reads the job's batches again."""
    return ["--run_dir", str(run_dir), f"--model.preset={preset}", f"--data.train_shards={shards}/train-*.tar",
            "--data.val_shards=", f"--data.token_budget={token_budget}", f"--data.max_rows={max_rows}",
            f"--data.num_workers={workers}", f"--train.max_steps={steps}", f"--train.precision={precision}",
            "--train.warmup_steps=1", "--train.log_every=1", "--eval.every=0", "--checkpoint.every=0",
            "--metrics.enabled=false", f"--train.keep_freed_memory={str(keep_memory).lower()}"]


def run_job(world: int, overrides: list[str], threads: int, run_dir: Path) -> dict:
    """Run launch/train.py; rank 0's logged steps after the first SKIP, as lists, and their medians."""
    args = [str(REPO / "launch" / "train.py"), "--config", str(PAPER), *overrides]
    if world == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(world), *args]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # the trainer keeps a pinned OMP_NUM_THREADS per rank
    log = run_dir.with_suffix(".log")
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc:
        raise SystemExit(f"run failed ({rc}); see {log}")
    recs = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    recs = [r for r in recs if r.get("kind") == "train" and r["step"] > SKIP]
    med = lambda k: statistics.median(r[k] for r in recs)  # noqa: E731
    return dict(samples_per_s=med("samples_per_s"), frames_per_s=med("frames_per_s"), step_s=med("step_seconds"),
                data_share=med("data_share"), samples_per_step=med("samples_per_s") * med("step_seconds"),
                steps_s=[r["step_seconds"] for r in recs],
                tokens=[round(r["tokens_per_s"] * r["step_seconds"]) for r in recs],
                flops=[r["flops_per_s"] * r["step_seconds"] for r in recs])


def job_batches(cfg: Config, steps: int) -> list:
    """The first `steps` batches rank 0 of a one-rank job with `cfg` trains on (same shards, seed, packing)."""
    batches = iter(ShardLoader(cfg.data, split="train", rank=0, world_size=1))
    try:
        return [next(batches) for _ in range(steps)]
    finally:
        batches.close()


def bare_steps(model, cfg: Config, batches: list, precision: str) -> list[float]:
    """Seconds of the bare model step on each of `batches` after SKIP of them: the job's model, optimizer and
    gradient clipping, no engine. The first batches warm up (allocator, optimizer state), as in the job."""
    opt = build_optimizer(model.parameters(), cfg.train, "cpu")
    times = [sum(train_step(model, opt, batch, precision, cfg.train.grad_clip).values()) for batch in batches]
    return times[SKIP:]


def main(preset: str = "gpt2", worlds: str = "1,2", precisions: str = "fp32,bf16", steps: int = 8,
         token_budget: int = 400, max_rows: int = 1, workers: int = 1, clips: int = 2048, threads: int = 0,
         budget_s: float = 1200, authors: str | None = None, mingpt: str | None = None,
         keep_freed_memory: bool = True):
    """Print one line per (ranks, precision) as it is measured: the job, and for 1 rank the bare step.

    Args:
        preset: model preset.
        worlds: comma-separated rank counts (1 = plain python, more = deepspeed --num_gpus N on CPU).
        precisions: comma-separated, from fp32, bf16 and auto.
        steps: optimizer steps per job; the first 2 are not counted, and the bare step runs the same batches.
        token_budget: packed row length (400 holds ~14-15 clips of 16 frames with the synthetic captions).
        max_rows: rows per micro-batch per rank.
        workers: DataLoader workers per rank.
        clips: synthetic clips to build.
        threads: torch threads per rank and for the bare step (0 = the trainer's default: cores / ranks).
        budget_s: time budget: no new configuration starts after it.
        authors: checkout of the authors' repository: time their step in this run for the last column.
        mingpt: checkout of karpathy/minGPT (needed with --authors).
        keep_freed_memory: the job's train.keep_freed_memory, and the same for this process's bare step
            (False: both hand freed memory back to the OS, as before the option existed).
    """
    if steps <= SKIP:
        raise SystemExit(f"--steps must be over {SKIP}: the first {SKIP} steps are not counted")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    deadline = time.perf_counter() + budget_s
    torch.set_num_threads(threads or (os.cpu_count() or 1))
    print(cpu_line(), flush=True)
    apply_keep_freed_memory(keep_freed_memory)
    peaks = measure_peaks()
    ref = authors_reference(authors, mingpt, budget_s / 4) if authors else None
    print(f"preset={preset} token_budget={token_budget} max_rows={max_rows} workers/rank={workers}", flush=True)
    print(f"{'ranks':>5} {'prec':>5} {'clips/step':>10} {'s/step':>7} {'samples/s':>10} {'frames/s':>9} "
          f"{'data':>6} {'bare s/step':>11} {'job/bare':>8} {'GFLOP/s':>8} {'% peak':>7}"
          + (f" {'vs authors':>10}" if ref else ""), flush=True)
    model = None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_shards(tmp / "shards", clips)
        for world in (int(w) for w in _as_list(worlds)):
            for precision in _as_list(precisions):
                if time.perf_counter() > deadline:
                    print(f"budget of {budget_s:.0f} s spent: ranks={world} {precision} not measured", flush=True)
                    continue
                run_dir = tmp / f"run_{world}_{precision}"
                overrides = job_overrides(preset, tmp / "shards", run_dir, steps, precision, token_budget,
                                          max_rows, workers, keep_freed_memory)
                r = run_job(world, overrides, threads, run_dir)
                bare = share = rate = peak = ""
                if world == 1:
                    from t2v_dist.precision import choose_precision

                    prec = choose_precision(precision, "cpu").precision
                    cfg = Config.load(PAPER, overrides)
                    batches = job_batches(cfg, steps)
                    counted = batches[SKIP:]
                    if [b.num_tokens for b in counted] != r["tokens"]:
                        raise SystemExit(f"the batches read again hold {[b.num_tokens for b in counted]} tokens, "
                                         f"the job logged {r['tokens']}: not the job's batches")
                    if model is None:
                        torch.manual_seed(0)
                        model = T2VModel(cfg.model)
                    bare_s = bare_steps(model, cfg, batches, prec)
                    job_s = r["steps_s"]
                    flops = [model.flops_per_step(b) for b in counted]
                    if any(abs(f - g) > 1e-6 * f for f, g in zip(flops, r["flops"])):
                        raise SystemExit(f"the job logged {r['flops']} model FLOPs per step, its batches hold {flops}")
                    rates = [f / s for f, s in zip(flops, job_s)]
                    bare = f"{statistics.median(bare_s):>11.2f}"
                    share = f"{100 * statistics.median(b / j for b, j in zip(bare_s, job_s)):>7.0f}%"
                    rate = f"{statistics.median(rates) / 1e9:>8.1f}"
                    peak = f"{100 * statistics.median(rates) / peaks[prec]:>6.1f}%"
                print(f"{world:>5} {precision:>5} {r['samples_per_step']:>10.1f} {r['step_s']:>7.2f} "
                      f"{r['samples_per_s']:>10.2f} {r['frames_per_s']:>9.1f} {100 * r['data_share']:>5.1f}% "
                      f"{bare or '-':>11} {share or '-':>8} {rate or '-':>8} {peak or '-':>7}"
                      + (f" {r['samples_per_s'] / ref:>9.1f}x" if ref else ""), flush=True)


if __name__ == "__main__":
    fire.Fire(main)
