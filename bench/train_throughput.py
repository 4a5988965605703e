"""Throughput of the real training job (launch/train.py, DeepSpeed) beside the bare model step.

    python bench/train_throughput.py --worlds 1,2 --precisions fp32,bf16 --steps 8 --budget_s 900 \
        [--authors /tmp/authors --mingpt /tmp/minGPT]

For each (ranks, precision) it trains on synthetic 16-frame 32x32 shards with the `paper` config
(overridden to a small packed batch for a CPU) and reads rank 0's train_log.jsonl: median samples/s,
frames/s, s/step and the data-loading share, skipping the first 2 steps. For 1 rank it then times the
bare model step (bench/model_throughput.py's loop: forward, backward, gradient clipping, the job's fused
AdamW, no engine) in this process, on the job's model config and a batch of the job's clips per step, same
precision and threads, and prints the job's
share of it ("job/bare"), and the job's share of the matmul peak of its precision, measured at the
start of the run. Each row prints as soon as it is measured. With --authors/--mingpt the authors'
training step is timed in the same run (bench/authors.py) for the last column.
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
from model_throughput import apply_keep_freed_memory, make_batch, measure_peaks, time_steps  # noqa: E402

from t2v_dist.config import Config, build_optimizer  # noqa: E402
from t2v_dist.model import T2VModel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _as_list(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (tuple, list)) else str(value).split(",")


def build_shards(out: Path, clips: int) -> None:
    subprocess.run([sys.executable, "-m", "shards.cli", "synthetic", "--out", str(out), "--num_clips", str(clips),
                    "--frames", "16", "--size", "32", "--seed", "0", "--samples_per_shard", str(max(clips // 16, 1)),
                    "--progress", "False"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def run_job(world: int, precision: str, preset: str, shards: Path, run_dir: Path, steps: int, token_budget: int,
            max_rows: int, workers: int, threads: int, keep_memory: bool) -> dict:
    args = [str(REPO / "launch" / "train.py"), "--config", str(REPO / "launch" / "configs" / "paper.yaml"),
            "--run_dir", str(run_dir), f"--model.preset={preset}", f"--data.train_shards={shards}/train-*.tar",
            "--data.val_shards=", f"--data.token_budget={token_budget}", f"--data.max_rows={max_rows}",
            f"--data.num_workers={workers}", f"--train.max_steps={steps}", f"--train.precision={precision}",
            "--train.warmup_steps=1", "--train.log_every=1", "--eval.every=0", "--checkpoint.every=0",
            "--metrics.enabled=false", f"--train.keep_freed_memory={str(keep_memory).lower()}"]
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
    recs = [r for r in recs if r.get("kind") == "train" and r["step"] > 2]
    med = lambda k: statistics.median(r[k] for r in recs)  # noqa: E731
    return dict(samples_per_s=med("samples_per_s"), frames_per_s=med("frames_per_s"), step_s=med("step_seconds"),
                data_share=med("data_share"), samples_per_step=med("samples_per_s") * med("step_seconds"))


def job_config(preset: str) -> Config:
    return Config.load(REPO / "launch" / "configs" / "paper.yaml", [f"--model.preset={preset}"])


def bare_step(model, cfg: Config, clips: int, precision: str, steps: int, token_budget: int,
              deadline: float) -> tuple[float, float]:
    """(seconds, FLOP) of the bare model step on `clips` clips packed like the job's rows: the job's model,
    optimizer and gradient clipping, no engine."""
    batch = make_batch(clips, 16, 32, token_budget)
    opt = build_optimizer(model.parameters(), cfg.train, "cpu")
    sec = time_steps(model, opt, batch, steps, precision, deadline, grad_clip=cfg.train.grad_clip)
    return sec, model.flops_per_step(batch)


def main(preset: str = "gpt2", worlds: str = "1,2", precisions: str = "fp32,bf16", steps: int = 8,
         token_budget: int = 400, max_rows: int = 1, workers: int = 1, clips: int = 2048, threads: int = 0,
         bare_steps: int = 4, budget_s: float = 1200, authors: str | None = None, mingpt: str | None = None,
         keep_freed_memory: bool = True):
    """Print one line per (ranks, precision) as it is measured: the job, and for 1 rank the bare step.

    Args:
        preset: model preset.
        worlds: comma-separated rank counts (1 = plain python, more = deepspeed --num_gpus N on CPU).
        precisions: comma-separated, from fp32, bf16 and auto.
        steps: optimizer steps per job (the first 2 are not counted).
        token_budget: packed row length (400 holds ~15-17 clips of 16 frames with short captions).
        max_rows: rows per micro-batch per rank.
        workers: DataLoader workers per rank.
        clips: synthetic clips to build.
        threads: torch threads per rank and for the bare step (0 = the trainer's default: cores / ranks).
        bare_steps: timed steps of the bare model step (median).
        budget_s: time budget: no new configuration starts after it.
        authors: checkout of the authors' repository: time their step in this run for the last column.
        mingpt: checkout of karpathy/minGPT (needed with --authors).
        keep_freed_memory: the job's train.keep_freed_memory, and the same for this process's bare step
            (False: both hand freed memory back to the OS, as before the option existed).
    """
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    deadline = time.perf_counter() + budget_s
    torch.set_num_threads(threads or (os.cpu_count() or 1))
    print(cpu_line(), flush=True)
    apply_keep_freed_memory(keep_freed_memory)
    peaks = measure_peaks()
    ref = authors_reference(authors, mingpt, budget_s / 4) if authors else None
    print(f"preset={preset} token_budget={token_budget} max_rows={max_rows} workers/rank={workers}", flush=True)
    print(f"{'ranks':>5} {'prec':>5} {'clips/step':>10} {'s/step':>7} {'samples/s':>10} {'frames/s':>9} "
          f"{'data':>6} {'bare s/step':>11} {'job/bare':>8} {'% peak':>7}" + (f" {'vs authors':>10}" if ref else ""),
          flush=True)
    model = None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_shards(tmp / "shards", clips)
        for world in (int(w) for w in _as_list(worlds)):
            for precision in _as_list(precisions):
                if time.perf_counter() > deadline:
                    print(f"budget of {budget_s:.0f} s spent: ranks={world} {precision} not measured", flush=True)
                    continue
                r = run_job(world, precision, preset, tmp / "shards", tmp / f"run_{world}_{precision}", steps,
                            token_budget, max_rows, workers, threads, keep_freed_memory)
                bare = share = peak = ""
                if world == 1:
                    from t2v_dist.precision import choose_precision

                    prec = choose_precision(precision, "cpu").precision
                    cfg = job_config(preset)
                    if model is None:
                        torch.manual_seed(0)
                        model = T2VModel(cfg.model)
                    clips_step = max(1, round(r["samples_per_step"]))
                    sec, flops = bare_step(model, cfg, clips_step, prec, bare_steps, token_budget, deadline)
                    job_s = r["step_s"] * clips_step / r["samples_per_step"]  # at exactly clips_step clips
                    bare, share = f"{sec:>11.2f}", f"{100 * sec / job_s:>7.0f}%"
                    peak = f"{100 * flops / job_s / peaks[prec]:>6.1f}%"
                print(f"{world:>5} {precision:>5} {r['samples_per_step']:>10.1f} {r['step_s']:>7.2f} "
                      f"{r['samples_per_s']:>10.2f} {r['frames_per_s']:>9.1f} {100 * r['data_share']:>5.1f}% "
                      f"{bare or '-':>11} {share or '-':>8} {peak or '-':>7}"
                      + (f" {r['samples_per_s'] / ref:>9.1f}x" if ref else ""), flush=True)


if __name__ == "__main__":
    fire.Fire(main)
