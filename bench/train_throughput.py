"""Throughput of the real training job (launch/train.py, DeepSpeed ZeRO-2) on this machine.

    python bench/train_throughput.py --preset gpt2 --worlds 1,2 --precisions fp32,bf16 --steps 8

For each (ranks, precision) it trains on synthetic 16-frame 32x32 shards with the `paper` config
(overridden to a small packed batch for a CPU), then reads rank 0's train_log.jsonl: median samples/s
and frames/s of the whole job, s/step, and the data-loading share, skipping the first 2 steps.
Runs are sequential in one invocation, so the rows are comparable. The authors' code: 0.909 samples/s.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]


def _as_list(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (tuple, list)) else str(value).split(",")


def build_shards(out: Path, clips: int) -> None:
    subprocess.run([sys.executable, "-m", "shards.cli", "synthetic", "--out", str(out), "--num_clips", str(clips),
                    "--frames", "16", "--size", "32", "--seed", "0", "--samples_per_shard", str(max(clips // 16, 1)),
                    "--progress", "False"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def run(world: int, precision: str, preset: str, shards: Path, run_dir: Path, steps: int, token_budget: int,
        max_rows: int, workers: int) -> dict:
    args = [str(REPO / "launch" / "train.py"), "--config", str(REPO / "launch" / "configs" / "paper.yaml"),
            "--run_dir", str(run_dir), f"--model.preset={preset}", f"--data.train_shards={shards}/train-*.tar",
            "--data.val_shards=", f"--data.token_budget={token_budget}", f"--data.max_rows={max_rows}",
            f"--data.num_workers={workers}", f"--train.max_steps={steps}", f"--train.precision={precision}",
            "--train.warmup_steps=1", "--train.log_every=1", "--eval.every=0", "--checkpoint.every=0",
            "--metrics.enabled=false"]
    if world == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(world), *args]
    log = run_dir.with_suffix(".log")
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ)).returncode
    if rc:
        raise SystemExit(f"run failed ({rc}); see {log}")
    recs = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    recs = [r for r in recs if r.get("kind") == "train" and r["step"] > 2]
    med = lambda k: statistics.median(r[k] for r in recs)  # noqa: E731
    return dict(samples_per_s=med("samples_per_s"), frames_per_s=med("frames_per_s"), step_s=med("step_seconds"),
                data_share=med("data_share"), samples_per_step=med("samples_per_s") * med("step_seconds"))


def main(preset: str = "gpt2", worlds: str = "1,2", precisions: str = "fp32,bf16", steps: int = 8,
         token_budget: int = 400, max_rows: int = 1, workers: int = 1, clips: int = 2048):
    """Print samples/s, frames/s, s/step and data-loading share per (ranks, precision).

    Args:
        preset: model preset.
        worlds: comma-separated rank counts (1 = plain python, more = deepspeed --num_gpus N on CPU).
        precisions: comma-separated, from fp32 and bf16.
        steps: optimizer steps per run (the first 2 are not counted).
        token_budget: packed row length (400 holds ~17 clips of 16 frames with short captions).
        max_rows: rows per micro-batch per rank.
        workers: DataLoader workers per rank.
        clips: synthetic clips to build.
    """
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_shards(tmp / "shards", clips)
        rows = []
        for world in (int(w) for w in _as_list(worlds)):
            for precision in _as_list(precisions):
                r = run(world, precision, preset, tmp / "shards", tmp / f"run_{world}_{precision}", steps,
                        token_budget, max_rows, workers)
                rows.append((world, precision, r))
                print(f"ranks={world} {precision}: {r}", flush=True)
    print(f"\npreset={preset} token_budget={token_budget} max_rows={max_rows} workers/rank={workers}")
    print(f"{'ranks':>5} {'prec':>5} {'clips/step':>10} {'s/step':>7} {'samples/s':>10} {'frames/s':>9} "
          f"{'data share':>10} {'vs authors':>10}")
    for world, prec, r in rows:
        print(f"{world:>5} {prec:>5} {r['samples_per_step']:>10.1f} {r['step_s']:>7.2f} {r['samples_per_s']:>10.2f} "
              f"{r['frames_per_s']:>9.1f} {100 * r['data_share']:>9.1f}% {r['samples_per_s'] / 0.909:>9.1f}x")


if __name__ == "__main__":
    fire.Fire(main)
