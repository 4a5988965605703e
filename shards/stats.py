"""Summarise a shard folder from its per-shard stats files, optionally checking every tar.

A tar without a stats file is reported as incomplete (an interrupted build); `verify` reads
every tar (member headers and .npy headers only, nothing unpickled) and compares it with its
stats: sample count, the three members per sample, frame arrays' dtype and shape.
"""
from __future__ import annotations

import io
import json
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np

from shards.keys import SPLITS
from shards.writer import CAPTION_EXT, FRAMES_EXT, META_EXT, stats_path

_SPLIT_IN_NAME = re.compile(rf"(?:^|-)({'|'.join(SPLITS)})-\d{{6}}\.tar$")
_MAX_LISTED_ERRORS = 50


def summarize(folder: str, verify: bool = False) -> dict:
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"--src {folder}: not a directory")
    tars = sorted(p for p in root.glob("*.tar") if _SPLIT_IN_NAME.search(p.name))
    if not tars:
        raise ValueError(f"--src {folder}: no shards ([PREFIX-]train|val-NNNNNN.tar)")
    splits = {split: {"shards": 0, "samples": 0, "frames": 0, "inputs": 0, "errors": 0, "bytes": 0}
              for split in SPLITS}
    clip_lengths: Counter[int] = Counter()
    reasons: Counter[str] = Counter()
    errors: list[dict] = []
    incomplete, mismatches = [], []
    seconds = 0.0
    for tar_path in tars:
        try:
            stats = json.loads(stats_path(tar_path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            incomplete.append(tar_path.name)
            continue
        split = splits[stats["split"]]
        split["shards"] += 1
        for field in ("samples", "frames", "inputs", "bytes"):
            split[field] += stats[field]
        split["errors"] += len(stats["errors"])
        clip_lengths.update({int(k): v for k, v in stats["clip_lengths"].items()})
        reasons.update(e["reason"].split(":", 1)[0] for e in stats["errors"])
        errors.extend({"shard": tar_path.name, **e} for e in stats["errors"])
        seconds += stats["seconds"]
        if verify:
            mismatches.extend(_verify(tar_path, stats))
    summary = {
        "folder": str(root), "splits": splits,
        "samples": sum(s["samples"] for s in splits.values()),
        "frames": sum(s["frames"] for s in splits.values()),
        "clip_length_histogram": {str(k): v for k, v in sorted(clip_lengths.items())},
        "errors": len(errors), "errors_by_reason": dict(reasons.most_common()),
        "error_list": errors[:_MAX_LISTED_ERRORS], "incomplete_shards": incomplete,
        "build_seconds": round(seconds, 3),
    }
    if verify:
        summary["verify"] = {"ok": not mismatches and not incomplete, "problems": mismatches}
    return summary


def _verify(tar_path: Path, stats: dict) -> list[str]:
    """Differences between a tar and its stats; empty when they agree."""
    members: dict[str, dict[str, tarfile.TarInfo]] = {}
    problems = []
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                members.setdefault(key, {})[ext] = info
            for key, parts in members.items():
                if set(parts) != {FRAMES_EXT, CAPTION_EXT, META_EXT}:
                    problems.append(f"{tar_path.name}: sample {key} has members {sorted(parts)}")
                    continue
                header = tar.extractfile(parts[FRAMES_EXT]).read(1024)
                shape, dtype = _npy_header(header)
                if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3:
                    problems.append(f"{tar_path.name}: sample {key} frames are {dtype} {shape}")
    except (tarfile.TarError, OSError, ValueError) as exc:
        return [f"{tar_path.name}: unreadable: {exc}"]
    if len(members) != stats["samples"]:
        problems.append(f"{tar_path.name}: {len(members)} samples in the tar, {stats['samples']} in its stats")
    return problems


def _npy_header(data: bytes) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the start of a .npy file, without reading the array."""
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    return shape, dtype
