"""Loader throughput (samples/s, batches/s) and, at real shard sizes, memory per worker and time to first batch.

    .venv/bin/python bench/data_loader.py [--samples 2048] [--mp4-samples 512] [--workers 0 1 2] [--out r.json]
    .venv/bin/python bench/data_loader.py --formats big --big-shard-mb 1024 --big-workers 0 2   # memory only

Builds its own shards in a temp folder (synthetic moving bars, captions like the synthetic
generator's), then times full passes of the loader at the DataConfig defaults (T=16 frames,
32x32, token_budget 256, max_rows 8, max_caption_tokens 32; the packing ones can be set). num_workers=0 runs the whole
pipeline in the calling process: that is one worker's rate. Every figure is one run, on
whatever cores the machine has free; the first batch's latency (worker start, first shard
read) is included.

`--formats big` writes `--big-shards` shards of about `--big-shard-mb` MB each (video2dataset-sized:
1 MB .frames.npy samples of 24 frames at 128x128) under /tmp, deleted afterwards, and runs each
`--big-workers` setting in a fresh process: time to first batch, then up to `--big-batches`
batches, then the time to the first batch of a new iterator (new workers, as every epoch and every
evaluation starts them). It reports the peak RSS of every worker process (VmHWM, read from /proc while it runs)
and how much of it the worker added after it started (its RSS then is mostly pages shared with
the parent); num_workers=0 runs the pipeline in the measuring process, whose peak is reset first.
To measure another version of the loader, put its tree first on PYTHONPATH.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import threading
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


def write_big_shards(folder: Path, num_shards: int, shard_mb: int, frames: int = 24, size: int = 128) -> str:
    """Shards of about shard_mb MB of incompressible .frames.npy samples (about 1 MB each)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per_shard = max(1, shard_mb * 2**20 // (frames * size * size * 3))
    for s in range(num_shards):
        with tarfile.open(folder / f"big-{s:06d}.tar", "w") as tar:
            for j in range(per_shard):
                i = s * per_shard + j
                buf = io.BytesIO()
                np.save(buf, rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8), allow_pickle=False)
                for ext, data in (("frames.npy", buf.getvalue()), ("txt", caption(i).encode()), ("json", b"{}")):
                    info = tarfile.TarInfo(f"{i:08d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"big-{{000000..{num_shards - 1:06d}}}.tar")


def _status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _workers(pid: int) -> list[int]:
    """The DataLoader workers among the descendants of `pid` (they are forked from a fork server)."""
    out, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            todo += children
            out += [c for c in children if _comm(c) == "pt_data_worker"]
    return out


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


class WorkerMemory:
    """Polls the RSS of this process's DataLoader workers until stopped."""

    def __init__(self, interval: float = 0.02):
        self.start_kb: dict[int, int] = {}
        self.peak_kb: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(interval,), daemon=True)
        self._thread.start()

    def _poll(self, interval: float) -> None:
        while not self._stop.is_set():
            for child in _workers(os.getpid()):
                rss, hwm = _status_kb(child, "VmRSS"), _status_kb(child, "VmHWM")
                if rss is not None and child not in self.start_kb:
                    self.start_kb[child] = rss
                if hwm is not None:
                    self.peak_kb[child] = max(hwm, self.peak_kb.get(child, 0))
            time.sleep(interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def probe_memory(spec: str, workers: int, batches: int, image_size: int) -> dict:
    """Runs in a fresh process: time to first batch, peak RSS per worker over `batches` batches."""
    torch.set_num_threads(1)
    cfg = DataConfig(train_shards=spec, num_workers=workers, image_size=image_size, frames=16)
    loader = ShardLoader(cfg, single_pass=True)  # loads the tokenizer: not the shard reader's memory
    own_start = _status_kb(os.getpid(), "VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    watch = WorkerMemory() if workers else None
    start = time.perf_counter()
    it = iter(loader)
    first = next(it)
    first_s = time.perf_counter() - start
    samples, done = first.num_samples, 1
    for batch in it:
        samples += batch.num_samples
        done += 1
        if done >= batches:
            break
    seconds = time.perf_counter() - start
    if watch is None:
        peak = [_status_kb(os.getpid(), "VmHWM")]
        added = [peak[0] - own_start]
    else:
        time.sleep(0.1)
        watch.stop()
        pids = sorted(watch.peak_kb)
        peak = [watch.peak_kb[p] for p in pids]
        added = [watch.peak_kb[p] - watch.start_kb.get(p, watch.peak_kb[p]) for p in pids]
    del it  # its workers stop; a new iterator starts new ones, as every epoch and every evaluation does
    start = time.perf_counter()
    next(iter(loader))
    restart_s = time.perf_counter() - start
    return {"num_workers": workers, "first_batch_s": round(first_s, 2), "restart_first_batch_s": round(restart_s, 2),
            "batches": done, "samples": samples,
            "samples_per_s": round(samples / seconds, 1),
            "peak_rss_mb_per_worker": [round(kb / 1024) for kb in peak],
            "added_rss_mb_per_worker": [round(kb / 1024) for kb in added]}


def run_big(args, tmp: str) -> list[dict]:
    t0 = time.perf_counter()
    spec = write_big_shards(Path(tmp) / "big", args.big_shards, args.big_shard_mb)
    sizes = sorted(p.stat().st_size for p in (Path(tmp) / "big").glob("*.tar"))
    print(f"[big] wrote {len(sizes)} shards of {sizes[0] / 2**20:.0f}-{sizes[-1] / 2**20:.0f} MB "
          f"in {time.perf_counter() - t0:.1f}s", flush=True)
    runs = []
    for workers in args.big_workers:
        cmd = [sys.executable, __file__, "--probe", json.dumps([spec, workers, args.big_batches, 128])]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        run = {"format": "big", "shard_mb": round(sizes[-1] / 2**20), **json.loads(out.strip().splitlines()[-1])}
        runs.append(run)
        print(json.dumps(run), flush=True)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2048, help=".frames.npy samples on disk and per measurement")
    ap.add_argument("--mp4-samples", type=int, default=512, help=".mp4 samples on disk and per measurement")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--mp4-size", type=int, default=128, help="side of the square source videos in the mp4 shards")
    ap.add_argument("--source-frames", type=int, default=24, help="frames per source clip (T=16 are sampled)")
    ap.add_argument("--formats", nargs="+", default=["npy", "mp4"], choices=["npy", "mp4", "big"],
                    help="big: memory and time to first batch at real shard sizes (see above)")
    ap.add_argument("--big-shard-mb", type=int, default=1024)
    ap.add_argument("--big-shards", type=int, default=2)
    ap.add_argument("--big-workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--big-batches", type=int, default=20, help="batches per big run after the first")
    ap.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one big run in this fresh process
    ap.add_argument("--token-budget", type=int, default=DataConfig.token_budget)
    ap.add_argument("--max-rows", type=int, default=DataConfig.max_rows)
    ap.add_argument("--max-caption-tokens", type=int, default=DataConfig.max_caption_tokens)
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()
    if args.probe:
        print(json.dumps(probe_memory(*json.loads(args.probe))))
        return
    torch.set_num_threads(1)
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
               "args": vars(args), "runs": []}
    with tempfile.TemporaryDirectory(prefix="t2v-bench-loader-") as tmp:
        for kind in args.formats:
            if kind == "big":
                results["runs"] += run_big(args, tmp)
                continue
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
