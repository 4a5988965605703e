"""Write generated clips for people to look at: mp4 (PyAV), gif (Pillow) and a PNG contact sheet.

Frames are uint8 arrays (T, H, W, 3). 32x32 frames are tiny on screen, so every writer first
upscales by an integer factor with nearest-neighbour (pixels stay crisp, nothing is invented).
"""
from __future__ import annotations

import textwrap
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

FORMATS = ("mp4", "gif", "png")


def as_frames(frames: np.ndarray | torch.Tensor, name: str = "frames") -> np.ndarray:
    """Validate and convert one clip to a uint8 numpy array (T, H, W, 3)."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 frames, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape) == 0:
        raise ValueError(f"{name}: expected shape (T, H, W, 3) with T, H, W >= 1, got {frames.shape}")
    return frames


def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour integer upscaling of (T, H, W, 3) frames."""
    if scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}")
    if scale == 1:
        return frames
    return frames.repeat(scale, axis=1).repeat(scale, axis=2)


def write_mp4(path: str | Path, frames: np.ndarray | torch.Tensor, fps: int = 8, scale: int = 4,
              codec: str = "libx264") -> Path:
    """H.264 (or any PyAV encoder) in yuv420p, which players expect; odd sizes get one edge pixel added."""
    frames = upscale(as_frames(frames), scale)
    if fps < 1:
        raise ValueError(f"fps must be >= 1, got {fps}")
    # 4:2:0 chroma needs even width and height.
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps, 1))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "17"}  # near-lossless: flat synthetic colours otherwise smear
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_gif(path: str | Path, frames: np.ndarray | torch.Tensor, fps: int = 8, scale: int = 4) -> Path:
    """Looping GIF (one palette per frame, chosen by Pillow)."""
    frames = upscale(as_frames(frames), scale)
    if fps < 1:
        raise ValueError(f"fps must be >= 1, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=round(1000 / fps), loop=0, disposal=1)
    return path


def _caption_font():
    """Pillow's built-in bitmap font (6 x 11 px, Latin-1): shipped with Pillow, nothing to download."""
    return ImageFont.load_default_imagefont()


def _wrap(caption: str, width_px: int, font) -> list[str]:
    """Lines of `caption` that fit `width_px`; characters outside Latin-1 become '?'."""
    text = " ".join(str(caption).split()).encode("latin-1", "replace").decode("latin-1")
    chars = max(1, width_px // max(1, round(font.getlength("M"))))
    return textwrap.wrap(text, width=chars) or [""]


def contact_sheet(clips: Sequence[np.ndarray | torch.Tensor], scale: int = 1, gap: int = 2,
                  background: int = 255, captions: Sequence[str] | None = None) -> np.ndarray:
    """One row per clip, its frames left to right, `gap` pixels apart; shorter clips leave blank cells.

    With `captions` (one per clip), each row's caption is written under it, wrapped to the sheet's width.
    """
    if not clips:
        raise ValueError("contact_sheet: no clips")
    if captions is not None and len(captions) != len(clips):
        raise ValueError(f"contact_sheet: {len(captions)} captions for {len(clips)} clips")
    clips = [upscale(as_frames(c, f"clips[{i}]"), scale) for i, c in enumerate(clips)]
    h, w = clips[0].shape[1:3]
    for i, c in enumerate(clips):
        if c.shape[1:3] != (h, w):
            raise ValueError(f"clips[{i}]: frame size {c.shape[1:3]} differs from clips[0] {(h, w)}")
    cols = max(c.shape[0] for c in clips)
    width = cols * (w + gap) + gap
    font = _caption_font() if captions is not None else None
    lines = [_wrap(c, width - 2 * gap, font) for c in captions] if captions is not None else [[] for _ in clips]
    line_h = font.getbbox("Ay")[3] + 1 if font else 0
    tops = np.cumsum([gap] + [h + gap + len(ls) * line_h for ls in lines])
    sheet = np.full((int(tops[-1]), width, 3), background, dtype=np.uint8)
    for r, clip in enumerate(clips):
        for c, frame in enumerate(clip):
            y, x = tops[r], gap + c * (w + gap)
            sheet[y:y + h, x:x + w] = frame
    if font is not None:
        image = Image.fromarray(sheet)
        draw = ImageDraw.Draw(image)
        ink = (0, 0, 0) if background >= 128 else (255, 255, 255)
        for r, row_lines in enumerate(lines):
            for k, line in enumerate(row_lines):
                draw.text((gap, int(tops[r]) + h + 1 + k * line_h), line, font=font, fill=ink)
        sheet = np.asarray(image).copy()
    return sheet


def write_contact_sheet(path: str | Path, clips: Sequence[np.ndarray | torch.Tensor], scale: int = 1,
                        gap: int = 2, captions: Sequence[str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(contact_sheet(clips, scale=scale, gap=gap, captions=captions)).save(path, format="PNG")
    return path


def save_samples(out_dir: str | Path, videos: np.ndarray | torch.Tensor | Sequence, formats: Sequence[str] = FORMATS,
                 fps: int = 8, scale: int = 4, prefix: str = "sample",
                 captions: Sequence[str] | None = None) -> list[Path]:
    """Write each clip of `videos` ((B, T, H, W, 3) or a list of clips) as `<prefix>_<i>.mp4/.gif`, and
    all of them as one `<prefix>_sheet.png` (one row per clip, `captions` under their rows).
    Returns the written paths."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"formats: unknown {unknown}; choose from {FORMATS}")
    clips = [as_frames(v, f"videos[{i}]") for i, v in enumerate(videos)]
    out_dir = Path(out_dir)
    written = []
    for i, clip in enumerate(clips):
        if "mp4" in formats:
            written.append(write_mp4(out_dir / f"{prefix}_{i}.mp4", clip, fps=fps, scale=scale))
        if "gif" in formats:
            written.append(write_gif(out_dir / f"{prefix}_{i}.gif", clip, fps=fps, scale=scale))
    if "png" in formats and clips:
        written.append(write_contact_sheet(out_dir / f"{prefix}_sheet.png", clips, scale=scale, captions=captions))
    return written
