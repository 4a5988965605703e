"""What flows between the loader's stages: samples, skip events and worker batches."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from t2v_dist.packing import PackedBatch

# Every reason a shard member or sample is skipped; error counts always carry all of them.
ERROR_REASONS = (
    "unreadable_shard",   # the shard could not be opened, or is not a tar file
    "truncated_tar",      # the tar stream broke after some members; the rest of the shard is lost
    "damaged_tar_header",  # a member header in the middle of the shard is not a tar header: the rest is lost
    "lost_sample",        # a sample after a damaged header (found by scanning on), not read
    "duplicate_member",   # two members with the same key and extension; the first one is kept
    "ignored_member",     # an extension the loader never decodes (.pyd, .pickle, ...); not read
    "missing_member",     # no .frames.npy/.mp4 or no .txt caption
    "bad_npy",            # not a plain uint8 T x H x W x 3 .npy (pickled, other dtype, cut short)
    "wrong_frame_size",   # .frames.npy frames are not image_size x image_size
    "undecodable_mp4",
    "bad_json",
    "bad_caption",        # caption is not UTF-8
    "empty_caption",
    "caption_too_long",   # over max_caption_tokens
    "too_few_frames",     # shorter than the clip (frames, stride, min_frames)
)


def zero_counts() -> dict[str, int]:
    return {reason: 0 for reason in ERROR_REASONS}


class SampleError(Exception):
    """A sample (or shard) that is skipped and counted under `reason`."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in ERROR_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Skip:
    """One counted problem, in stream order (so that it is counted by the batch that passes it)."""
    reason: str


@dataclass
class Sample:
    key: str
    item: int                  # index of its shard in the role's work list
    pos: int                   # position in the shard's visit order; (item, pos) is a resume cursor
    index: int                 # position in the shard's tar order: (shard, index) is its provenance
    entropy: tuple[int, ...]   # seeds everything random about this sample (clip start)
    members: dict[str, bytes]  # raw tar members, dropped once decoded
    caption: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    frames: np.ndarray | None = None
    tokens: list[int] | None = None


@dataclass
class WorkerBatch:
    """What a worker sends to the main process: a batch plus where its role stands after it.

    `cursor` is the (item, pos) of the first sample NOT in this batch; `final` marks the role's
    last message of the epoch (its batch may be None: it then only carries error counts).
    """
    role: int
    epoch: int
    cursor: tuple[int, int]
    final: bool
    errors: dict[str, int]
    batch: PackedBatch | None

    def pin_memory(self) -> "WorkerBatch":
        """Called by DataLoader(pin_memory=True): pin the batch's tensors for async copies."""
        if self.batch is None:
            return self
        pinned = {f.name: getattr(self.batch, f.name) for f in fields(self.batch)}
        pinned = {k: v.pin_memory() if hasattr(v, "pin_memory") else v for k, v in pinned.items()}
        return WorkerBatch(self.role, self.epoch, self.cursor, self.final, self.errors, PackedBatch(**pinned))
