"""Moving coloured shapes: the embedded, fully known training set.

Clip `i` of seed `s` depends only on `(s, i)` (its own numpy Generator), so any clip can be
rebuilt alone, shards can be built in any order or in parallel, and a rebuild gives identical
bytes (for a given numpy version: the Generator's streams are stable in practice, not by
contract). The renderer works on whole clips at once (T x H x W arrays) and uses only integer
maths, `sqrt` and products on the pixel grid, which are exact or correctly rounded, so the
bytes do not depend on the CPU's SIMD flavour.

The vocabulary is public so that an evaluator can score a generated video against the truth
recorded in each sample's JSON:
- `COLOURS`: name -> RGB (uint8 values);
- `SHAPES`: shape names;
- `DIRECTIONS`: name -> unit vector (dx, dy) in IMAGE coordinates: x grows to the right,
  y grows DOWN (row index). "up" is (0, -1).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 100, 240),
    "yellow": (235, 215, 40),
    "purple": (160, 70, 215),
    "orange": (245, 140, 30),
    "white": (235, 235, 235),
    "cyan": (40, 205, 215),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
_D = 1.0 / math.sqrt(2.0)
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-_D, -_D),
    "up-right": (_D, -_D),
    "down-left": (-_D, _D),
    "down-right": (_D, _D),
}
# How a direction reads in a caption.
DIRECTION_PHRASES: dict[str, str] = {
    "left": "left",
    "right": "right",
    "up": "up",
    "down": "down",
    "up-left": "up and to the left",
    "up-right": "up and to the right",
    "down-left": "down and to the left",
    "down-right": "down and to the right",
}
# Shape "radius" (circumradius; half side for squares is 0.85 of it) as a fraction of the frame side.
# "fixed" is one radius: the object's outline is then a function of the caption alone (the demo variant;
# a radius drawn at random blurs the few pixels that tell a circle from a square of the same area).
SIZES: dict[str, tuple[float, float]] = {"small": (0.09, 0.13), "large": (0.16, 0.22), "fixed": (0.2, 0.2)}
RANDOM_SIZES: tuple[str, ...] = ("small", "large")  # what "any" size draws from
BACKGROUNDS: tuple[str, ...] = ("plain", "noise", "stripes", "checker")
# Where an object's path lies: "random" (anywhere that keeps it in view), "centred" (symmetric about
# the frame centre: the caption fixes the path up to size and background) or "outward" (from just behind
# the centre out towards the border: every first frame has the object over the centre, shifted a little
# against its direction, so the first frame is mostly colour and shape at one place and its small shift
# already tells the direction: the easy variant the CPU demo trains on).
LAYOUTS: tuple[str, ...] = ("random", "centred", "outward")
CENTRED_TRAVEL = 0.6  # of the room the object has along its direction
OUTWARD_TRAVEL = 0.9  # of the room between the centre and the border, beyond the centre
OUTWARD_BACK = 0.35   # the start lies this fraction of OUTWARD_TRAVEL behind the centre

# Colour x shape x direction combinations kept out of the train split by `--holdout` (they may
# appear in val only), to measure generalisation to unseen combinations. One per colour and one per
# direction, shapes in turn, so every colour, shape and direction still appears in train.
HELD_OUT_COMBOS: tuple[tuple[str, str, str], ...] = (
    ("red", "circle", "right"),
    ("green", "square", "up-left"),
    ("blue", "triangle", "down-right"),
    ("yellow", "circle", "up"),
    ("purple", "square", "up-right"),
    ("orange", "triangle", "left"),
    ("white", "circle", "down"),
    ("cyan", "square", "down-left"),
)

# One moving object, as a clause. Every template names colour, shape and direction.
SINGLE_TEMPLATES: tuple[str, ...] = (
    "a {colour} {shape} moves {direction}",
    "a {size} {colour} {shape} is moving {direction}",
    "the {colour} {shape} is moving {direction}",
    "a {colour} {shape} slides {direction}",
    "{colour} {shape} moving {direction}",
)
# Two objects: two clauses that start with an article, joined.
CLAUSE_TEMPLATES: tuple[str, ...] = SINGLE_TEMPLATES[:2]
PAIR_JOINERS: tuple[str, ...] = (" and ", " while ")
_A_BEFORE_VOWEL = re.compile(r"\ba (?=[aeiou])")

_SQRT3_2 = math.sqrt(3.0) / 2.0
# Outward edge normals of an upward-pointing equilateral triangle (y down): base, right, left.
TRIANGLE_NORMALS = ((0.0, 1.0), (_SQRT3_2, -0.5), (-_SQRT3_2, -0.5))
_SQUARE_HALF_SIDE = 0.85  # times the radius: a square of similar area to the circle


@dataclass(frozen=True)
class SyntheticConfig:
    """What the generator may draw. Subsets of the vocabulary narrow the task."""

    frames: int = 16
    size: int = 32
    two_shape_fraction: float = 0.3
    textured_fraction: float = 0.5
    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES
    directions: tuple[str, ...] = tuple(DIRECTIONS)
    backgrounds: tuple[str, ...] = BACKGROUNDS[1:]  # textured ones; "plain" is picked by textured_fraction
    sizes: tuple[str, ...] = RANDOM_SIZES
    # (colour, shape, direction) combinations train clips never show (`make_clip(..., split="val")` may).
    held_out: tuple[tuple[str, str, str], ...] = ()
    layout: str = "random"
    # RGB of every plain background; None: a random dark colour per clip. A fixed colour makes the first
    # frame a function of the caption alone (the demo variant): a per-clip colour is noise no text predicts.
    plain_colour: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise ValueError(f"frames must be >= 2 (motion needs two frames), got {self.frames}")
        if self.size < 8:
            raise ValueError(f"size must be >= 8 pixels, got {self.size}")
        for name, value in (("two_shape_fraction", self.two_shape_fraction),
                            ("textured_fraction", self.textured_fraction)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        for name, chosen, vocab in (("colours", self.colours, COLOURS), ("shapes", self.shapes, SHAPES),
                                    ("directions", self.directions, DIRECTIONS),
                                    ("backgrounds", self.backgrounds, BACKGROUNDS), ("sizes", self.sizes, SIZES)):
            unknown = [c for c in chosen if c not in vocab]
            if not chosen or unknown:
                raise ValueError(f"{name}: need a non-empty subset of {list(vocab)}, got {list(chosen)}")
        if self.two_shape_fraction > 0 and len(self.colours) < 2:
            raise ValueError("two-shape clips need at least two colours (objects are told apart by colour)")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {self.layout!r}")
        object.__setattr__(self, "held_out", tuple(tuple(combo) for combo in self.held_out))
        if self.plain_colour is not None:
            rgb = tuple(self.plain_colour) if isinstance(self.plain_colour, (tuple, list)) else ()
            if len(rgb) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in rgb):
                raise ValueError(f"plain_colour must be three integers in 0..255 (R, G, B), got {self.plain_colour!r}")
            object.__setattr__(self, "plain_colour", rgb)
        for combo in self.held_out:
            if len(combo) != 3 or combo[0] not in COLOURS or combo[1] not in SHAPES or combo[2] not in DIRECTIONS:
                raise ValueError(f"held_out: need (colour, shape, direction) triples of the vocabulary, got {combo}")
        for colour in self.colours:
            for shape in self.shapes:
                if not self.allowed_directions(colour, shape, "train"):
                    raise ValueError(f"held_out leaves no direction for a {colour} {shape} in train")

    def allowed_directions(self, colour: str, shape: str, split: str) -> tuple[str, ...]:
        """Directions an object of this colour and shape may take in a clip of `split`."""
        if split == "val" or not self.held_out:
            return self.directions
        return tuple(d for d in self.directions if (colour, shape, d) not in self.held_out)


@dataclass
class ShapeTruth:
    """The true attributes of one object, as recorded in the sample JSON."""

    colour: str
    shape: str
    direction: str
    size: str
    radius_px: float
    speed_px_per_frame: float
    start_xy: tuple[float, float]
    end_xy: tuple[float, float]

    def as_json(self) -> dict:
        return {
            "colour": self.colour, "rgb": list(COLOURS[self.colour]), "shape": self.shape,
            "direction": self.direction, "direction_xy": list(DIRECTIONS[self.direction]),
            "size": self.size, "radius_px": round(self.radius_px, 3),
            "speed_px_per_frame": round(self.speed_px_per_frame, 4),
            "start_xy": [round(v, 3) for v in self.start_xy], "end_xy": [round(v, 3) for v in self.end_xy],
        }


@dataclass
class SyntheticClip:
    frames: np.ndarray  # uint8 T x H x W x 3
    caption: str
    objects: list[ShapeTruth]
    background: str
    template: str

    def truth_json(self) -> dict:
        return {"objects": [o.as_json() for o in self.objects], "background": self.background,
                "caption_template": self.template}


def make_clip(seed: int, index: int, config: SyntheticConfig = SyntheticConfig(),
              split: str = "train") -> SyntheticClip:
    """Render clip `index` of dataset `seed`. Depends only on (seed, index, config, split); the split
    matters only with `config.held_out`: a train clip never shows a held-out combination."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed} index={index}")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    rng = np.random.default_rng([seed, index])
    size, frames = config.size, config.frames
    background = str(rng.choice(config.backgrounds)) if rng.random() < config.textured_fraction else "plain"
    image = _background(rng, background, size)  # drawn even for a fixed plain colour: the rest stays the same
    if background == "plain" and config.plain_colour is not None:
        image = np.broadcast_to(np.asarray(config.plain_colour, np.float32), (size, size, 3))
    canvas = np.broadcast_to(image, (frames, size, size, 3)).copy()

    num_objects = 2 if rng.random() < config.two_shape_fraction else 1
    colours = rng.choice(len(config.colours), size=num_objects, replace=False)
    objects = [_place_object(rng, config, config.colours[c], split) for c in colours]
    for obj in objects:
        _draw(canvas, obj, frames)
    pixels = np.rint(canvas).astype(np.uint8)

    if num_objects == 1:
        template = str(rng.choice(SINGLE_TEMPLATES))
        caption = _clause(template, objects[0])
    else:
        clauses = [str(rng.choice(CLAUSE_TEMPLATES)) for _ in objects]
        joiner = str(rng.choice(PAIR_JOINERS))
        template = joiner.join(clauses)
        caption = joiner.join(_clause(t, o) for t, o in zip(clauses, objects))
    return SyntheticClip(frames=pixels, caption=caption, objects=objects, background=background, template=template)


def caption_for(colour: str, shape: str, direction: str, template: str = SINGLE_TEMPLATES[0],
                size: str = "small") -> str:
    """The caption of one object, as the generator writes it: ("orange", "circle", "up-left") ->
    "an orange circle moves up and to the left"."""
    text = template.format(colour=colour, shape=shape, size=size, direction=DIRECTION_PHRASES[direction])
    return _A_BEFORE_VOWEL.sub("an ", text)  # "a orange" -> "an orange"


def _clause(template: str, obj: ShapeTruth) -> str:
    return caption_for(obj.colour, obj.shape, obj.direction, template, obj.size)



def _background(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """Dark static background (S x S x 3 float32): shapes are bright, so they stay salient."""
    base = rng.integers(0, 71, size=3).astype(np.float32)
    if kind == "plain":
        return np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    amplitude = float(rng.integers(12, 31))
    if kind == "noise":
        cell = int(rng.integers(2, 5))
        coarse = rng.integers(-1, 2, size=(-(-size // cell),) * 2).astype(np.float32)
        pattern = np.kron(coarse, np.ones((cell, cell), np.float32))[:size, :size] * 0.5 + 0.5
    else:
        y, x = np.mgrid[0:size, 0:size]
        period = int(rng.integers(2, 6))
        if kind == "stripes":
            a, b = ((1, 0), (0, 1), (1, 1), (1, -1))[int(rng.integers(0, 4))]
            pattern = (((a * x + b * y) // period) % 2).astype(np.float32)
        elif kind == "checker":
            pattern = (((x // period) + (y // period)) % 2).astype(np.float32)
        else:
            raise ValueError(f"unknown background {kind!r}; known: {list(BACKGROUNDS)}")
    tint = rng.uniform(0.5, 1.0, size=3).astype(np.float32)
    return base + amplitude * pattern[..., None] * tint


def _place_object(rng: np.random.Generator, config: SyntheticConfig, colour: str, split: str) -> ShapeTruth:
    """Pick shape, size, direction, speed and a start point that keeps the object in view."""
    size, frames = config.size, config.frames
    shape = str(rng.choice(config.shapes))
    # Without held-out combinations this is config.directions: the same draws as before they existed.
    direction = str(rng.choice(config.allowed_directions(colour, shape, split)))
    size_name = str(rng.choice(config.sizes))
    lo, hi = SIZES[size_name]
    radius = float(rng.uniform(lo, hi)) * size
    dx, dy = DIRECTIONS[direction]
    margin = 0.9 * radius  # centre at least this far from the border: the object stays (almost) whole
    room = size - 2 * margin
    travel = float(rng.uniform(0.4, 0.9)) * room / max(abs(dx), abs(dy))
    x0 = float(rng.uniform(margin + max(0.0, -dx * travel), size - margin - max(0.0, dx * travel)))
    y0 = float(rng.uniform(margin + max(0.0, -dy * travel), size - margin - max(0.0, dy * travel)))
    if config.layout == "centred":  # the draws above still happen: the rest of the clip stays the same
        travel = CENTRED_TRAVEL * room / max(abs(dx), abs(dy))
        x0, y0 = size / 2 - dx * travel / 2, size / 2 - dy * travel / 2
    elif config.layout == "outward":
        travel = OUTWARD_TRAVEL * room / 2 / max(abs(dx), abs(dy))
        back = OUTWARD_BACK * travel
        x0, y0 = size / 2 - dx * back, size / 2 - dy * back
        travel += back
    return ShapeTruth(colour=colour, shape=shape, direction=direction, size=size_name, radius_px=radius,
                      speed_px_per_frame=travel / (frames - 1), start_xy=(x0, y0),
                      end_xy=(x0 + dx * travel, y0 + dy * travel))


def _draw(canvas: np.ndarray, obj: ShapeTruth, frames: int) -> None:
    """Blend one object into the T x S x S x 3 canvas, anti-aliased by its signed distance."""
    size = canvas.shape[1]
    step = np.arange(frames, dtype=np.float32)[:, None, None] * np.float32(obj.speed_px_per_frame)
    dxu, dyu = DIRECTIONS[obj.direction]
    centre_x = np.float32(obj.start_xy[0]) + step * np.float32(dxu)
    centre_y = np.float32(obj.start_xy[1]) + step * np.float32(dyu)
    pixel = np.arange(size, dtype=np.float32) + np.float32(0.5)  # pixel centres
    dx = pixel[None, None, :] - centre_x  # T x 1 x S
    dy = pixel[None, :, None] - centre_y  # T x S x 1
    r = np.float32(obj.radius_px)
    if obj.shape == "circle":
        distance = np.sqrt(dx * dx + dy * dy) - r
    elif obj.shape == "square":
        distance = np.maximum(np.abs(dx), np.abs(dy)) - r * np.float32(_SQUARE_HALF_SIDE)
    elif obj.shape == "triangle":
        distance = np.maximum.reduce([dx * np.float32(nx) + dy * np.float32(ny) for nx, ny in TRIANGLE_NORMALS])
        distance = distance - r * np.float32(0.5)  # inradius of the triangle of circumradius r
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; known: {list(SHAPES)}")
    coverage = np.clip(np.float32(0.5) - distance, 0.0, 1.0)[..., None]
    colour = np.asarray(COLOURS[obj.colour], dtype=np.float32)
    canvas += coverage * (colour - canvas)
