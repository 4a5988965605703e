"""Stage 7 of the loader: pick the clip's frames (T frames, a stride, a seeded random start)."""
from __future__ import annotations

import numpy as np

from t2v_dist.data.records import Sample, SampleError


def clip_indices(num_source: int, frames: int, stride: int, min_frames: int | None,
                 rng: np.random.Generator) -> np.ndarray:
    """Source frame indices of the clip; raises SampleError("too_few_frames") if it cannot be made."""
    span = (frames - 1) * stride + 1
    if num_source >= span:
        start = int(rng.integers(0, num_source - span + 1))
        return start + stride * np.arange(frames)
    available = (num_source - 1) // stride + 1 if num_source > 0 else 0
    if min_frames is not None and available >= min_frames:
        return stride * np.arange(available)
    need = span if min_frames is None else (min_frames - 1) * stride + 1
    raise SampleError("too_few_frames", f"{num_source} source frames, need {need} (frames={frames}, stride={stride})")


def sample_clip(sample: Sample, frames: int, stride: int, min_frames: int | None) -> Sample:
    """The start depends only on the sample's entropy (seed, epoch, shard, index): not on rank or worker."""
    rng = np.random.default_rng(sample.entropy)
    idx = clip_indices(len(sample.frames), frames, stride, min_frames, rng)
    sample.frames = np.ascontiguousarray(sample.frames[idx])
    return sample
