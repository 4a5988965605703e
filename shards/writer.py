"""Write one shard: a plain tar of samples, complete under its final name or not there at all.

The tar is written under a temporary name and renamed when closed; its stats JSON is written
(also atomically) after that, and is the mark of a complete shard. Tar members carry a fixed
mtime, owner and mode, so a shard's bytes depend only on its samples.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np

from shards.keys import check_key
from shards.source import Sample

FRAMES_EXT, CAPTION_EXT, META_EXT = "frames.npy", "txt", "json"
_FIXED_MTIME = 946684800  # 2000-01-01: member times must not depend on when the shard was built


def shard_stem(prefix: str, split: str, index: int) -> str:
    """'train-000003', or 'ucf-train-000003' with a prefix."""
    return f"{prefix}-{split}-{index:06d}" if prefix else f"{split}-{index:06d}"


def stats_path(tar_path: Path) -> Path:
    """train-000003.tar -> train-000003_stats.json"""
    return tar_path.with_name(tar_path.name.removesuffix(".tar") + "_stats.json")


def encode_sample(sample: Sample) -> list[tuple[str, bytes]]:
    """The tar members of one sample: KEY.frames.npy, KEY.json, KEY.txt."""
    check_key(sample.key)
    frames = sample.frames
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"sample {sample.key}: frames must be uint8 T x H x W x 3, got {frames.dtype} {frames.shape}")
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(frames), allow_pickle=False)
    # ASCII JSON: a path with undecodable bytes (surrogates) is escaped instead of failing to encode.
    meta = json.dumps(sample.meta, sort_keys=True).encode("ascii")
    return [(f"{sample.key}.{FRAMES_EXT}", buffer.getvalue()), (f"{sample.key}.{META_EXT}", meta),
            (f"{sample.key}.{CAPTION_EXT}", sample.caption.encode("utf-8"))]


class ShardWriter:
    """`with ShardWriter(path) as w: w.add(sample)`: the tar appears at `path` only on a clean exit."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.temp_path = self.path.with_name(f".{self.path.name}.tmp")
        self.samples = 0
        self.frames = 0
        self._tar: tarfile.TarFile | None = None

    def __enter__(self) -> "ShardWriter":
        self._tar = tarfile.open(self.temp_path, "w", format=tarfile.PAX_FORMAT)
        return self

    def add(self, sample: Sample) -> None:
        for name, data in encode_sample(sample):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), _FIXED_MTIME, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1
        self.frames += int(sample.frames.shape[0])

    def __exit__(self, exc_type, exc, tb) -> None:
        self._tar.close()
        if exc_type is None:
            _fsync(self.temp_path)
            os.replace(self.temp_path, self.path)
        else:
            self.temp_path.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n", encoding="ascii")
    _fsync(temp)
    os.replace(temp, path)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
