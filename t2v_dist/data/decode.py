"""Stage 6 of the loader: explicit decoders for .frames.npy, .mp4, .txt and .json only.

Nothing is ever unpickled: webdataset's default decoders would unpickle .pyd/.pickle members,
so they are not used. A .npy header is checked before np.load(allow_pickle=False), which also
keeps a forged shape from allocating memory the data does not back.
"""
from __future__ import annotations

import io
import json
import math

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from t2v_dist.data.records import Sample, SampleError

_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def decode_frames_npy(data: bytes, image_size: int) -> np.ndarray:
    """uint8 T x H x W x 3 frames from .npy bytes; H and W must equal image_size."""
    buf = io.BytesIO(data)
    try:
        read_header = _NPY_HEADER_READERS[np.lib.format.read_magic(buf)]
        shape, _fortran, dtype = read_header(buf)
    except Exception as exn:
        raise SampleError("bad_npy", f"unreadable header: {exn}") from None
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise SampleError("bad_npy", f"need uint8 T x H x W x 3, got {dtype} {shape}")
    if len(data) - buf.tell() != math.prod(shape):
        raise SampleError("bad_npy", f"{len(data) - buf.tell()} data bytes for shape {shape}")
    try:
        frames = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exn:
        raise SampleError("bad_npy", str(exn)) from None
    if shape[1] != image_size or shape[2] != image_size:
        raise SampleError("wrong_frame_size", f"frames are {shape[1]}x{shape[2]}, image_size={image_size}")
    return np.ascontiguousarray(frames)


def _square_frame(frame: av.VideoFrame, size: int, scaler: VideoReformatter) -> np.ndarray:
    """Scale the short side to `size` with area averaging, then crop the centre square."""
    scale = size / min(frame.width, frame.height)
    width, height = max(size, round(frame.width * scale)), max(size, round(frame.height * scale))
    rgb = scaler.reformat(frame, width=width, height=height, format="rgb24", interpolation="AREA",
                          threads=1).to_ndarray()
    top, left = (height - size) // 2, (width - size) // 2
    return rgb[top:top + size, left:left + size]


def decode_frames_mp4(data: bytes, image_size: int) -> np.ndarray:
    """Every frame of the first video stream, as uint8 T x image_size x image_size x 3."""
    scaler = VideoReformatter()  # one per clip: frame.reformat() would set up a new scaler per frame
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise SampleError("undecodable_mp4", "no video stream")
            frames = [_square_frame(f, image_size, scaler) for f in container.decode(container.streams.video[0])]
    except SampleError:
        raise
    except Exception as exn:  # PyAV/FFmpeg raise many types on damaged input
        raise SampleError("undecodable_mp4", str(exn)) from None
    if not frames:
        raise SampleError("undecodable_mp4", "no frame decoded")
    return np.stack(frames)


def decode_caption(data: bytes) -> str:
    try:
        caption = data.decode("utf-8")
    except UnicodeDecodeError as exn:
        raise SampleError("bad_caption", str(exn)) from None
    if not caption.strip():
        raise SampleError("empty_caption")
    return caption.strip()


def decode_meta(data: bytes) -> dict:
    try:
        meta = json.loads(data)
    except Exception as exn:  # also RecursionError on absurd nesting
        raise SampleError("bad_json", str(exn)[:200]) from None
    if not isinstance(meta, dict):
        raise SampleError("bad_json", f"metadata must be a JSON object, got {type(meta).__name__}")
    return meta


def decode_sample(sample: Sample, image_size: int) -> Sample:
    """Raw members -> caption, metadata and all source frames (clip sampling comes next)."""
    members = sample.members
    if "txt" not in members or not ("frames.npy" in members or "mp4" in members):
        raise SampleError("missing_member", f"{sample.key}: has {sorted(members)}")
    sample.caption = decode_caption(members["txt"])
    if "json" in members:
        sample.meta = decode_meta(members["json"])
    if "frames.npy" in members:
        sample.frames = decode_frames_npy(members["frames.npy"], image_size)
    else:
        sample.frames = decode_frames_mp4(members["mp4"], image_size)
    sample.members = {}
    return sample
