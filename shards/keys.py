"""Sample keys and the train/val split.

Keys are made of `[A-Za-z0-9_-]` only: webdataset splits a member name at the first '.' into
key and extension, and a '/' would make a directory inside the tar.
"""
from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from pathlib import PurePosixPath

_NOT_KEY_CHAR = re.compile(r"[^A-Za-z0-9_-]+")
_VALID_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
SPLITS = ("train", "val")


def check_key(key: str) -> str:
    if not _VALID_KEY.match(key):
        raise ValueError(f"invalid sample key {key!r}: use only letters, digits, '_' and '-'")
    return key


def key_from_relpath(relpath: str) -> str:
    """'Class A/v_x.avi' -> 'Class_A_v_x' (extension dropped, other characters folded to '_')."""
    path = PurePosixPath(relpath)
    stem = str(path.with_suffix("")) if path.suffix else str(path)
    key = _NOT_KEY_CHAR.sub("_", stem).strip("_")
    return key or "x"


def unique_keys(relpaths: list[str]) -> list[str]:
    """Keys for these paths; paths whose keys collide ('a/b.mp4', 'a_b.avi') all get a short hash
    of their path appended, so every key stays a function of the input set alone."""
    keys = [key_from_relpath(p) for p in relpaths]
    holders: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        holders[key].append(i)
    for key, indices in holders.items():
        if len(indices) > 1:
            for i in indices:
                keys[i] = f"{key}_x{hashlib.sha1(_bytes(relpaths[i])).hexdigest()[:8]}"
    return keys


def clip_key(source_key: str, clip_index: int) -> str:
    """Key of clip k of a video. The fixed-width suffix keeps clip keys of distinct sources distinct."""
    return f"{source_key}_c{clip_index:05d}"


def split_of(split_key: str, val_fraction: float) -> str:
    """'val' for a stable pseudo-random `val_fraction` of split keys, else 'train'.
    A hash of the key (not Python's salted hash()), so it is the same on every rebuild."""
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    digest = hashlib.sha256(_bytes(split_key)).digest()
    return "val" if int.from_bytes(digest[:8], "big") < val_fraction * 2.0**64 else "train"


def _bytes(text: str) -> bytes:
    """UTF-8, keeping file names that are not UTF-8 (surrogate-escaped by the OS layer) as their bytes."""
    return text.encode("utf-8", "surrogateescape")
