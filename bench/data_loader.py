"""Loader throughput: samples/s and batches/s of ShardLoader from .frames.npy and from .mp4 shards.

    .venv/bin/python bench/data_loader.py [--samples 2048] [--mp4-samples 512] [--workers 0 1 2] [--out r.json]

Builds its own shards in a temp folder (synthetic moving bars, captions like the synthetic
generator's), then times full passes of the loader at the DataConfig defaults (T=16 frames,
32x32, token_budget 256, max_rows 8, max_caption_tokens 32; the packing ones can be set). num_workers=0 runs the whole
pipeline in the calling process: that is one worker's rate. Every figure is one run, on
whatever cores the machine has free; the first batch's latency (worker start, first shard
read) is included.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tarfile
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from t2v_dist.data import DataConfig, ShardLoader

COLOURS = ["red", "green", "blue", "yellow", "white", "purple"]
SHAPES = ["circle", "square", "triangle", "star"]
MOTIONS = ["left", "right", "up", "down"]


def clip(i: int, num_frames: int, size: int) -> np.ndarray:
    """A bar moving over a noisy background: cheap to make, not trivially compressible."""
    rng = np.random.default_rng(i)
    video = rng.integers(0, 60, (num_frames, size, size, 3), dtype=np.uint8)
    width = max(2, size // 6)
    for t in range(num_frames):
        x = (i * 7 + t * max(1, size // 16)) % (size - width)
        video[t, :, x:x + width] = (230, 40 * (i % 6), 90)
    return video


def caption(i: int) -> str:
    return f"a {COLOURS[i % 6]} {SHAPES[i % 4]} moves {MOTIONS[(i // 5) % 4]}"


def mp4_bytes(video: np.ndarray, fps: int = 8) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = video.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def write_shards(folder: Path, kind: str, num_shards: int, per_shard: int, frames: int, size: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(num_shards):
        with tarfile.open(folder / f"{kind}-{s:06d}.tar", "w") as tar:
            for j in range(per_shard):
                i = s * per_shard + j
                video = clip(i, frames, size)
                if kind == "npy":
                    buf = io.BytesIO()
                    np.save(buf, video, allow_pickle=False)
                    payload = ("frames.npy", buf.getvalue())
                else:
                    payload = ("mp4", mp4_bytes(video))
                meta = {"source": "bench", "fps": 8, "frames": frames, "size": [size, size]}
                for ext, data in (payload, ("txt", caption(i).encode()), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{i:08d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"{kind}-{{000000..{num_shards - 1:06d}}}.tar")


def measure(cfg: DataConfig, max_samples: int) -> dict:
    loader = ShardLoader(cfg, single_pass=True)
    start = time.perf_counter()
    samples = batches = frames = tokens = 0
    for batch in loader:
        samples += batch.num_samples
        batches += 1
        frames += batch.num_frames
        tokens += batch.num_tokens
        if samples >= max_samples:
            break
    seconds = time.perf_counter() - start
    errors = {k: v for k, v in loader.error_counts().items() if v}
    return {"num_workers": cfg.num_workers, "samples": samples, "batches": batches, "seconds": round(seconds, 3),
            "samples_per_s": round(samples / seconds, 1), "batches_per_s": round(batches / seconds, 2),
            "samples_per_batch": round(samples / batches, 1), "token_fill": round(tokens / (batches * cfg.max_rows * cfg.token_budget), 3),
            "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2048, help=".frames.npy samples on disk and per measurement")
    ap.add_argument("--mp4-samples", type=int, default=512, help=".mp4 samples on disk and per measurement")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--mp4-size", type=int, default=128, help="side of the square source videos in the mp4 shards")
    ap.add_argument("--source-frames", type=int, default=24, help="frames per source clip (T=16 are sampled)")
    ap.add_argument("--formats", nargs="+", default=["npy", "mp4"], choices=["npy", "mp4"])
    ap.add_argument("--token-budget", type=int, default=DataConfig.token_budget)
    ap.add_argument("--max-rows", type=int, default=DataConfig.max_rows)
    ap.add_argument("--max-caption-tokens", type=int, default=DataConfig.max_caption_tokens)
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
               "args": vars(args), "runs": []}
    with tempfile.TemporaryDirectory(prefix="t2v-bench-loader-") as tmp:
        for kind in args.formats:
            per_shard = 128
            total = args.samples if kind == "npy" else args.mp4_samples
            num_shards = max(max(args.workers, default=1), -(-total // per_shard))
            size = 32 if kind == "npy" else args.mp4_size
            t0 = time.perf_counter()
            spec = write_shards(Path(tmp) / kind, kind, num_shards, per_shard, args.source_frames, size)
            print(f"[{kind}] wrote {num_shards} shards x {per_shard} samples ({size}x{size}, "
                  f"{args.source_frames} frames) in {time.perf_counter() - t0:.1f}s", flush=True)
            for workers in args.workers:
                cfg = DataConfig(train_shards=spec, num_workers=workers, token_budget=args.token_budget,
                                 max_rows=args.max_rows, max_caption_tokens=args.max_caption_tokens)
                run = {"format": kind, "source_size": size, **measure(cfg, total)}
                results["runs"].append(run)
                print(json.dumps(run), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
