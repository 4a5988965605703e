"""Detectors of the synthetic task's attributes in a video, with no neural network.

A video (uint8 T x H x W x 3) is read as one object over a static background, the way
`shards.synthetic` draws it, and it may be blurry (a model's output):
1. background: the per-pixel median over time, except where that median is far from the frame's
   median colour (an object that moves little or not at all covers those pixels most of the time),
   where the frame's median colour is used instead;
2. object: per frame, the largest connected region (by contrast mass) of pixels whose distance from
   the background is over half of the frame's strongest contrast;
3. colour: the median of the object's strongest pixels, over all frames -> the nearest palette colour;
4. coverage: each pixel's fraction of object colour over its background (the renderer's blend
   inverted), so edges count fractionally and blur keeps the object's mass;
5. shape: each frame's coverage against the renderer's circle, square and triangle of the same area
   and centroid, at a few blur widths (blur is a nuisance, not a shape); least squared error wins;
6. direction: a straight line fitted to the coverage centroids; a displacement under
   `static_fraction` of the frame side is "static", else the nearest of the 8 directions.

Calibration on the generator's clips and on noise videos is in tests/test_evaluation.py.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from shards.synthetic import COLOURS, DIRECTIONS, SHAPES, TRIANGLE_NORMALS

STATIC = "static"   # the direction of a video whose object does not move
NONE = "none"       # an attribute of a video with no object to read
_PALETTE_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[c] for c in _PALETTE_NAMES], dtype=np.float32)
_DIRECTION_NAMES = tuple(DIRECTIONS)
_DIRECTION_VECTORS = np.array([DIRECTIONS[d] for d in _DIRECTION_NAMES], dtype=np.float64)
_BLURS = (0.0, 0.6, 1.2, 2.0)        # Gaussian sigmas (pixels) tried for every shape template
_MIN_CONTRAST = 24.0                 # an object's colour differs from its background by more than this
_TEXTURE_TOLERANCE = 60.0            # a textured background strays at most ~52 from its median colour


@dataclass(frozen=True)
class Detection:
    colour: str
    shape: str
    direction: str
    area_px: float                   # mean object area (coverage sum) over the frames it was found in
    displacement_px: tuple[float, float]  # fitted centroid travel over the clip (x right, y down)
    frames_found: int

    def as_json(self) -> dict:
        return {"colour": self.colour, "shape": self.shape, "direction": self.direction,
                "area_px": round(self.area_px, 2), "displacement_px": [round(v, 2) for v in self.displacement_px],
                "frames_found": self.frames_found}


def detect(video: np.ndarray, static_fraction: float = 0.06) -> Detection:
    """Colour, shape and direction of the one object in `video` (uint8 T x H x W x 3)."""
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.shape[1] != video.shape[2] or video.shape[0] < 2:
        raise ValueError(f"detect needs a uint8 (T >= 2, H, H, 3) video, got {video.dtype} {video.shape}")
    frames = video.astype(np.float32)
    T, H, W, _ = frames.shape
    background = _background(frames)
    contrast = np.linalg.norm(frames - background, axis=-1)                 # T x H x W
    strongest = contrast.reshape(T, -1).max(1)
    found = strongest >= max(_MIN_CONTRAST, 0.5 * float(strongest.max()))
    masks = _largest_regions((contrast > 0.5 * strongest[:, None, None]) & found[:, None, None], contrast)
    if not masks.any():
        return Detection(NONE, NONE, STATIC, 0.0, (0.0, 0.0), 0)

    core = masks & (contrast >= 0.75 * strongest[:, None, None])
    observed = np.median(frames[core], axis=0)
    colour = _PALETTE_NAMES[int(np.argmin(((_PALETTE - observed) ** 2).sum(1)))]

    coverage = _coverage(frames, background, observed, _dilate(masks, 3))
    area = coverage.sum((1, 2))
    valid = found & (area >= 1.0)
    if valid.sum() < 1:
        return Detection(colour, NONE, STATIC, 0.0, (0.0, 0.0), 0)
    grid = np.arange(H, dtype=np.float32) + 0.5                             # pixel centres, as the renderer
    cx = (coverage.sum(1) * grid).sum(1) / np.maximum(area, 1e-6)
    cy = (coverage.sum(2) * grid).sum(1) / np.maximum(area, 1e-6)
    shape = _shape(coverage[valid], cx[valid], cy[valid], area[valid])
    direction, displacement = _direction(np.nonzero(valid)[0], cx[valid], cy[valid], T, static_fraction * H)
    return Detection(colour, shape, direction, float(area[valid].mean()), displacement, int(valid.sum()))


def _background(frames: np.ndarray) -> np.ndarray:
    """Per-frame background estimate (T x H x W x 3): see step 1 of the module docstring."""
    per_pixel = np.median(frames, axis=0)                                    # H x W x 3
    per_frame = np.median(frames.reshape(frames.shape[0], -1, 3), axis=1)    # T x 3
    far = np.linalg.norm(per_pixel[None] - per_frame[:, None, None], axis=-1) > _TEXTURE_TOLERANCE
    return np.where(far[..., None], per_frame[:, None, None], per_pixel[None])


def _largest_regions(masks: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per frame of masks (T x H x W), its 8-connected region with the largest summed `weight`.

    Label propagation (each pixel takes its neighbours' smallest index, then the label of that
    label: pointer jumping) over all frames at once; a region's label is an index in its frame."""
    T, H, W = masks.shape
    big = T * H * W
    labels = np.where(masks, np.arange(big).reshape(T, H, W), big)
    padded = np.full((T, H + 2, W + 2), big)
    while True:
        padded[:, 1:-1, 1:-1] = labels
        new = labels.copy()
        for dy in range(3):
            for dx in range(3):
                np.minimum(new, padded[:, dy:dy + H, dx:dx + W], out=new)
        new = np.where(masks, np.append(new.ravel(), big)[new], big)
        if np.array_equal(new, labels):
            break
        labels = new
    mass = np.bincount(labels[masks], weights=weight[masks], minlength=big).reshape(T, H * W)
    best = mass.argmax(1) + np.arange(T) * H * W
    return masks & (labels == best[:, None, None])


def _dilate(masks: np.ndarray, steps: int) -> np.ndarray:
    out = masks
    for _ in range(steps):
        padded = np.pad(out, ((0, 0), (1, 1), (1, 1)))
        H, W = out.shape[1:]
        out = np.stack([padded[:, 1 + dy:1 + dy + H, 1 + dx:1 + dx + W]
                        for dy in (-1, 0, 1) for dx in (-1, 0, 1)]).any(0)
    return out


def _coverage(frames: np.ndarray, background: np.ndarray, colour: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Fraction of `colour` over the background at each pixel of `region` (renderer: p = b + a (c - b))."""
    towards = colour[None, None, None] - background
    alpha = ((frames - background) * towards).sum(-1) / np.maximum((towards ** 2).sum(-1), 1.0)
    return np.where(region, np.clip(alpha, 0.0, 1.0), 0.0).astype(np.float32)


def _templates(shape: str, cx: np.ndarray, cy: np.ndarray, area: np.ndarray, size: int) -> np.ndarray:
    """The renderer's anti-aliased `shape` (T x S x S) of each frame's area, centred on its (cx, cy)."""
    pixel = np.arange(size, dtype=np.float32) + 0.5
    dx = pixel[None, None, :] - cx[:, None, None]
    dy = pixel[None, :, None] - cy[:, None, None]
    area = area[:, None, None]
    if shape == "circle":
        distance = np.sqrt(dx * dx + dy * dy) - np.sqrt(area / math.pi)
    elif shape == "square":
        distance = np.maximum(np.abs(dx), np.abs(dy)) - np.sqrt(area) / 2
    else:  # triangle, pointing up; area = 3 sqrt(3) inradius^2
        distance = np.maximum.reduce([dx * nx + dy * ny for nx, ny in TRIANGLE_NORMALS]) \
            - np.sqrt(area / (3 * math.sqrt(3)))
    return np.clip(0.5 - distance, 0.0, 1.0)


@functools.lru_cache(maxsize=32)
def _blur_matrix(sigma: float, size: int) -> np.ndarray:
    """K with K @ image @ K.T = a Gaussian blur of `sigma` pixels (zero outside the frame)."""
    if sigma == 0:
        return np.eye(size, dtype=np.float32)
    offsets = np.arange(size)[:, None] - np.arange(size)[None, :]
    taps = np.exp(-0.5 * (offsets / sigma) ** 2)
    return (taps / taps.sum(1, keepdims=True)).astype(np.float32)


def _shape(coverage: np.ndarray, cx: np.ndarray, cy: np.ndarray, area: np.ndarray) -> str:
    size = coverage.shape[-1]
    errors = []
    for shape in SHAPES:
        templates = _templates(shape, cx, cy, area, size)
        per_blur = [(((coverage - k @ templates @ k.T) ** 2).sum((1, 2)))
                    for k in (_blur_matrix(sigma, size) for sigma in _BLURS)]
        errors.append(float((np.min(per_blur, axis=0) / area).sum()))  # best blur per frame, area-normalised
    return SHAPES[int(np.argmin(errors))]


def _direction(t: np.ndarray, cx: np.ndarray, cy: np.ndarray, frames: int, static_px: float):
    if len(t) < 2 or np.ptp(t) == 0:
        return STATIC, (0.0, 0.0)
    design = np.stack([t.astype(np.float64), np.ones(len(t))], 1)
    (vx, _), (vy, _) = (np.linalg.lstsq(design, c.astype(np.float64), rcond=None)[0] for c in (cx, cy))
    travel = np.array([vx, vy]) * (frames - 1)
    displacement = (float(travel[0]), float(travel[1]))
    if np.linalg.norm(travel) < static_px:
        return STATIC, displacement
    return _DIRECTION_NAMES[int(np.argmax(_DIRECTION_VECTORS @ travel))], displacement
