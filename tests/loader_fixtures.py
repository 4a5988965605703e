"""Real tar shards for the loader tests, in the project's shard format.

A sample is KEY.frames.npy (uint8 T x H x W x 3), KEY.txt and KEY.json; video2dataset-style
samples have KEY.mp4 instead of the frames. Shards are written with the standard tarfile module.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import av
import numpy as np

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]
MOTIONS = ["left", "right", "up", "down"]


def caption_for(i: int) -> str:
    return f"a {COLOURS[i % 4]} {SHAPES[i % 3]} moves {MOTIONS[(i // 3) % 4]}"


def frames_for(i: int, num_frames: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (num_frames, size, size, 3), dtype=np.uint8)


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def mp4_bytes(num_frames: int, width: int, height: int, seed: int = 0) -> bytes:
    """A small MPEG-4 video: a bright bar moving over a dark background."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(num_frames):
            img = np.full((height, width, 3), 20 + seed % 50, np.uint8)
            x = (t * 3 + seed) % max(1, width - 8)
            img[:, x:x + 8] = (255, 128, 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """{key: {extension: bytes}} of every member, in tar order."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for info in tar:
            key, _, ext = info.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(info).read()
    return samples


def sample_members(key: str, i: int, num_frames: int, size: int) -> list[tuple[str, bytes]]:
    meta = {"source": "test", "fps": 8, "frames": num_frames, "size": [size, size], "split": "train"}
    return [(f"{key}.frames.npy", npy_bytes(frames_for(i, num_frames, size))),
            (f"{key}.txt", caption_for(i).encode()),
            (f"{key}.json", json.dumps(meta).encode())]


def write_dataset(folder: Path, num_shards: int, per_shard: int, *, num_frames: int = 6, size: int = 8,
                  prefix: str = "train") -> list[str]:
    """`num_shards` shards of `per_shard` good samples; returns every sample key."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for s in range(num_shards):
        members = []
        for j in range(per_shard):
            i = s * per_shard + j
            key = f"s{s:03d}_{j:04d}"
            keys.append(key)
            members += sample_members(key, i, num_frames, size)
        write_tar(folder / f"{prefix}-{s:06d}.tar", members)
    return keys


class CreatesFileWhenUnpickled:
    """Unpickling this creates `path`: proof that a loader unpickled something."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def take(loader, n: int) -> list[tuple[int, list[str]]]:
    """The next n batches as (epoch, keys), from one iterator of `loader`."""
    out = []
    it = iter(loader)
    for _ in range(n):
        batch = next(it)
        out.append((loader.epoch, list(batch.keys)))
    return out


def one_pass(loader) -> list[tuple[int, list[str]]]:
    """The rest of the current epoch (the loader must be single_pass)."""
    return [(loader.epoch, list(batch.keys)) for batch in loader]


def keys_of(batches, epoch: int | None = None) -> list[str]:
    return [k for e, keys in batches if epoch is None or e == epoch for k in keys]
