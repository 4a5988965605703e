"""What every input kind gives the shard builder: a sorted plan of inputs, and samples per input.

An input is one unit of work assigned to a shard: a synthetic clip index, a video file, a
manifest row or a sample of an input shard. One input may yield several samples (a long video
is cut into several clips) or none; whatever keeps it from yielding is an `InputError`, which
the builder records in the shard's stats (path + reason) before going on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import numpy as np


class InputError(Exception):
    """This input (or the rest of it) cannot be used; `reason` says why, for the stats."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class InputItem:
    key: str            # unique source key within the dataset, no '.' (webdataset splits keys on it)
    path: str           # what an error report names: a file, a manifest row, a tar member
    split_key: str      # hashed to choose train/val: inputs sharing it land in the same split
    payload: Any        # source-specific, picklable: what `samples` needs to read the input
    version: str = ""   # changes when the input's content may have changed (size, mtime)
    problem: str | None = None  # known while planning (e.g. missing caption file): reported, not read


@dataclass
class Sample:
    key: str            # sample key: the source key, plus a clip suffix for video clips
    frames: np.ndarray  # uint8 T x H x W x 3
    caption: str
    meta: dict          # goes into KEY.json


class Source(Protocol):
    """An input kind. Must be picklable: shards are built in worker processes."""

    kind: str

    def settings(self) -> dict:
        """Everything besides the inputs that changes the output bytes (frames, size, stride...)."""

    def plan(self) -> list[InputItem]:
        """All inputs, in a deterministic order (sorted), so shard assignment is stable."""

    def samples(self, item: InputItem) -> Iterator[Sample]:
        """Samples of one input; raises InputError (possibly after yielding some)."""
