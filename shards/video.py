"""Decode a video with PyAV and cut it into fixed-length, square, downscaled clips.

Frames are sampled either every `stride`-th decoded frame or at a target `fps` (the latest
frame at or just before each sampling time, by timestamps). Consecutive runs of `frames`
sampled frames make clips (no overlap); a tail shorter than a clip is dropped. Each sampled
frame is centre-cropped to a square and area-resized (PIL BOX) as soon as it is decoded, so
memory stays at one clip whatever the video length.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterator

import av
import numpy as np
from PIL import Image

from shards.source import InputError


@dataclass(frozen=True)
class ClipSpec:
    frames: int = 16
    size: int = 32
    stride: int | None = None   # every stride-th frame; the default when fps is not set is 1
    fps: float | None = None    # or resample to this frame rate (timestamps)
    max_clips: int = 0          # clips per video at most (the first ones); 0 = all

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        if self.stride is not None and self.fps is not None:
            raise ValueError("give either stride or fps, not both")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.max_clips < 0:
            raise ValueError(f"max_clips must be >= 0, got {self.max_clips}")

    def settings(self) -> dict:
        return {"frames": self.frames, "size": self.size, "stride": self.stride, "fps": self.fps,
                "max_clips": self.max_clips}


def crop_resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Centre square crop of an H x W x 3 uint8 image, then area (box filter) resize to size x size."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 H x W x 3 pixels, got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    side = min(width, height)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(np.ascontiguousarray(pixels[top:top + side, left:left + side]))
    return np.asarray(square.resize((size, size), Image.Resampling.BOX, reducing_gap=None), dtype=np.uint8)


def decode_clips(source: str | bytes, spec: ClipSpec, start_s: float | None = None,
                 end_s: float | None = None) -> Iterator[tuple[np.ndarray, dict]]:
    """Yield (clip T x S x S x 3 uint8, clip metadata) for a video file path or its bytes.

    Times are seconds from the start of the video stream; `end_s` is exclusive. Raises
    InputError when the video cannot be opened or decoded (possibly after some clips) or
    yields no clip at all ('too short').
    """
    try:
        container = av.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Exception as exc:  # PyAV raises many types for garbage input: any of them means "unreadable"
        raise InputError(f"cannot open video: {_describe(exc)}") from None
    with container:
        if not container.streams.video:
            raise InputError("no video stream")
        stream = container.streams.video[0]
        try:
            rate = stream.average_rate or stream.guessed_rate
            stream_start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
            original_size = {"width": stream.codec_context.width, "height": stream.codec_context.height}
        except Exception as exc:  # a damaged header can leave the stream without a codec context
            raise InputError(f"cannot read video stream: {_describe(exc)}") from None
        source_fps = float(rate) if rate else None
        if spec.fps is not None and source_fps is None:
            raise InputError("cannot resample to --fps: the video has no frame rate")
        sampler = _Sampler(spec, source_fps)
        clip_fps = spec.fps or (source_fps / sampler.stride if source_fps else None)
        meta_base = {"source_fps": _round(source_fps), "fps": _round(clip_fps),
                     "stride": None if spec.fps else sampler.stride, "original_size": original_size}
        buffer: list[np.ndarray] = []
        times: list[float] = []
        decoded = clips = 0
        try:
            if start_s:
                container.seek(int((stream_start + start_s) / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                decoded += 1
                t = frame.time - stream_start if frame.time is not None else (decoded - 1) / (source_fps or 1.0)
                if start_s and t < start_s - 1e-6:
                    continue
                if end_s is not None and t >= end_s - 1e-6:
                    break
                repeats = sampler.take(t)
                if not repeats:
                    continue
                pixels = crop_resize(frame.to_ndarray(format="rgb24"), spec.size)
                for _ in range(repeats):
                    buffer.append(pixels)
                    times.append(t)
                    if len(buffer) == spec.frames:
                        yield np.stack(buffer), _clip_meta(meta_base, clips, times, source_fps)
                        clips += 1
                        buffer, times = [], []
                        if spec.max_clips and clips >= spec.max_clips:
                            return
        except Exception as exc:
            raise InputError(f"decode error after {decoded} frames: {_describe(exc)}") from None
        if clips == 0:
            if decoded == 0:
                raise InputError("too short: no frames decoded (empty video)")
            raise InputError(f"too short: {sampler.taken} sampled frames "
                             f"({decoded} decoded, {sampler.describe()}), a clip needs {spec.frames}")


class _Sampler:
    """Decides, per decoded frame, how many times it enters the clip stream (0, 1, or more when
    resampling to a higher fps than the source's)."""

    def __init__(self, spec: ClipSpec, source_fps: float | None):
        self.fps = spec.fps
        self.stride = spec.stride or 1
        self.source_fps = source_fps
        self.taken = 0
        self._seen = 0
        self._first_t: float | None = None

    def take(self, t: float) -> int:
        if self.fps is None:
            take = 1 if self._seen % self.stride == 0 else 0
        else:
            # Sampling times are first_t + k / fps. A frame stands for the times up to half a
            # source frame after its own: it fills every sampling time not filled yet up to there.
            if self._first_t is None:
                self._first_t = t
            half_frame = 0.5 / self.source_fps
            take = 0
            while self._first_t + (self.taken + take) / self.fps <= t + half_frame:
                take += 1
        self._seen += 1
        self.taken += take
        return take

    def describe(self) -> str:
        return f"fps {self.fps}" if self.fps is not None else f"stride {self.stride}"


def _clip_meta(base: dict, clip_index: int, times: list[float], source_fps: float | None) -> dict:
    """Where the clip lies in the source: seconds [start, end) and source frame indices (from
    timestamps x source fps), end exclusive."""
    frame_period = 1.0 / source_fps if source_fps else 0.0
    indices = [round(t * source_fps) for t in times] if source_fps else None
    return {**base, "clip_index": clip_index,
            "clip_start_s": round(times[0], 6), "clip_end_s": round(times[-1] + frame_period, 6),
            "clip_start_frame": indices[0] if indices else None,
            "clip_end_frame": indices[-1] + 1 if indices else None, "source_frames": indices}


def _round(value: float | None) -> float | None:
    return round(value, 6) if value else None


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"
