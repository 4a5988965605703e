"""Does a video show what its caption says? Prompts, scores and the floors every score is read against.

The prompts are single-object captions of the generator's first template ("a red square moves up
and to the right"): 8 combinations the train split shows (`SEEN_COMBOS`) and the 8 combinations
`t2v-shards synthetic --holdout` keeps out of it (`shards.synthetic.HELD_OUT_COMBOS`). Each half
names every colour and direction once and every shape at least twice.

Floors, scored by the same detectors:
- chance: a uniform guess of each attribute (all three: the product);
- static_first_frame: the generator's own clip for the prompt, its first frame held for every
  frame: the right object in the right place that never moves (direction fails by design);
- shuffled_captions: the scored videos against the captions of other prompts (each video against
  the next prompt of its seed; neighbours differ in colour, shape and direction): a model that ignores
  the text scores as much here as on its own prompts, a faithful one scores 0;
- ground_truth: the generator's clips themselves: the detectors' ceiling on these prompts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from shards.synthetic import COLOURS, DIRECTIONS, HELD_OUT_COMBOS, SHAPES, SyntheticConfig, caption_for, make_clip
from t2v_dist.evaluation.detectors import Detection, detect

ATTRIBUTES = ("colour", "shape", "direction")
# Seen combinations, chosen like the held-out ones: one per colour and direction, shapes in turn.
SEEN_COMBOS: tuple[tuple[str, str, str], ...] = (
    ("red", "square", "up-right"),
    ("green", "triangle", "left"),
    ("blue", "circle", "down"),
    ("yellow", "square", "down-left"),
    ("purple", "triangle", "right"),
    ("orange", "circle", "up-left"),
    ("white", "square", "down-right"),
    ("cyan", "triangle", "up"),
)
CHANCE = {"colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES), "direction": 1 / len(DIRECTIONS),
          "all": 1 / (len(COLOURS) * len(SHAPES) * len(DIRECTIONS))}


@dataclass(frozen=True)
class PromptSpec:
    caption: str
    colour: str
    shape: str
    direction: str
    seen: bool   # False: a held-out combination, absent from a --holdout train split
    seed: int    # which repeat of the prompt (generation seed offset; the reference clip's index)

    def as_json(self) -> dict:
        return asdict(self)


def faithfulness_prompts(seeds_per_prompt: int = 3, holdout: bool = True) -> list[PromptSpec]:
    """The evaluation prompts, seed-major: all 16 prompts for seed 0, then for seed 1, ...

    `holdout=False` (a model trained without --holdout) marks every prompt as seen."""
    if seeds_per_prompt < 1:
        raise ValueError(f"seeds_per_prompt must be >= 1, got {seeds_per_prompt}")
    combos = [(c, True) for c in SEEN_COMBOS] + [(c, not holdout) for c in HELD_OUT_COMBOS]
    return [PromptSpec(caption_for(colour, shape, direction), colour, shape, direction, seen, seed)
            for seed in range(seeds_per_prompt) for (colour, shape, direction), seen in combos]


def score_videos(videos: np.ndarray, specs: list[PromptSpec], details: bool = False) -> dict:
    """Detect the attributes of each video (uint8 B x T x H x W x 3) and compare with its spec.

    Returns {"n", "accuracy": {colour, shape, direction, all}, "seen": {..., "n"}, "unseen": {..., "n"}},
    plus "detections" (one per video) when `details`."""
    videos = np.asarray(videos)
    if videos.ndim != 5 or len(videos) != len(specs):
        raise ValueError(f"score_videos needs one (T, H, W, 3) video per spec: {len(specs)} specs, "
                         f"videos of shape {videos.shape}")
    return score_detections([detect(v) for v in videos], specs, details)


def score_detections(found: list[Detection], specs: list[PromptSpec], details: bool = False) -> dict:
    """`score_videos` of videos already run through `detect`."""
    hits = np.array([[getattr(d, a) == getattr(s, a) for a in ATTRIBUTES] for d, s in zip(found, specs)],
                    dtype=bool).reshape(len(specs), len(ATTRIBUTES))
    seen = np.array([s.seen for s in specs], dtype=bool)
    result = {"n": len(specs), "accuracy": _accuracy(hits)}
    for name, rows in (("seen", seen), ("unseen", ~seen)):
        result[name] = {**_accuracy(hits[rows]), "n": int(rows.sum())}
    if details:
        result["detections"] = [d.as_json() for d in found]
    return result


def _accuracy(hits: np.ndarray) -> dict:
    if len(hits) == 0:
        return {a: None for a in (*ATTRIBUTES, "all")}
    accuracy = {a: float(hits[:, i].mean()) for i, a in enumerate(ATTRIBUTES)}
    accuracy["all"] = float(hits.all(1).mean())
    return accuracy


def reference_clips(specs: list[PromptSpec], num_frames: int, size: int, textured_fraction: float = 0.0,
                    dataset_seed: int = 10_007) -> np.ndarray:
    """The generator's clip of each spec (uint8 B x T x H x W x 3): its exact colour, shape and direction,
    with the spec's seed as the clip index (position, size, speed and background vary with it)."""
    clips = []
    for spec in specs:
        config = SyntheticConfig(frames=num_frames, size=size, two_shape_fraction=0.0,
                                 textured_fraction=textured_fraction, colours=(spec.colour,),
                                 shapes=(spec.shape,), directions=(spec.direction,))
        clips.append(make_clip(dataset_seed, spec.seed, config).frames)
    return np.stack(clips)


def shuffled(specs: list[PromptSpec]) -> list[PromptSpec]:
    """Each spec replaced by the next one of its seed (cyclically)."""
    by_seed: dict[int, list[int]] = {}
    for i, spec in enumerate(specs):
        by_seed.setdefault(spec.seed, []).append(i)
    out = list(specs)
    for rows in by_seed.values():
        for k, i in enumerate(rows):
            other = specs[rows[(k + 1) % len(rows)]]
            out[i] = PromptSpec(other.caption, other.colour, other.shape, other.direction, specs[i].seen,
                                specs[i].seed)
    return out


def floors(videos: np.ndarray, specs: list[PromptSpec], reference: np.ndarray,
           detections: list[Detection] | None = None) -> dict:
    """The floors of the module docstring. `videos` are the scored videos (`detections`: theirs, if
    already computed), `reference` the generator's clips of the same specs (`reference_clips`)."""
    static = np.repeat(reference[:, :1], reference.shape[1], axis=1)
    found = detections if detections is not None else [detect(v) for v in videos]
    return {
        "chance": dict(CHANCE),
        "static_first_frame": score_videos(static, specs)["accuracy"],
        "shuffled_captions": score_detections(found, shuffled(specs))["accuracy"],
        "ground_truth": score_videos(reference, specs)["accuracy"],
    }
