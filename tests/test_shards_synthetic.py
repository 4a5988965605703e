"""The moving-shapes generator: determinism, vocabulary, and that the recorded truth is true."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from shards.synthetic import (COLOURS, DIRECTION_PHRASES, DIRECTIONS, SHAPES, SyntheticConfig,
                              make_clip)


def test_clip_depends_only_on_seed_and_index():
    a = make_clip(7, 123)
    b = make_clip(7, 123)
    assert a.frames.tobytes() == b.frames.tobytes() and a.caption == b.caption
    assert a.truth_json() == b.truth_json()
    assert make_clip(7, 124).frames.tobytes() != a.frames.tobytes()
    assert make_clip(8, 123).frames.tobytes() != a.frames.tobytes()
    # Generating other clips in between changes nothing (no shared RNG state).
    for i in range(5):
        make_clip(1, i)
    assert make_clip(7, 123).frames.tobytes() == a.frames.tobytes()


def test_shapes_and_dtype_follow_config():
    clip = make_clip(0, 0, SyntheticConfig(frames=24, size=48))
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (24, 48, 48, 3)


def test_vocabulary_is_exported_and_covered():
    assert len(COLOURS) >= 6 and set(SHAPES) >= {"circle", "square", "triangle"}
    assert {"left", "right", "up", "down"} <= set(DIRECTIONS)
    for name, (dx, dy) in DIRECTIONS.items():
        assert abs(dx * dx + dy * dy - 1.0) < 1e-9, name
    assert DIRECTIONS["up"] == (0.0, -1.0)  # image coordinates: y grows downwards
    clips = [make_clip(3, i) for i in range(400)]
    objects = [o for c in clips for o in c.objects]
    assert {o.colour for o in objects} == set(COLOURS)
    assert {o.shape for o in objects} == set(SHAPES)
    assert {o.direction for o in objects} == set(DIRECTIONS)
    assert {c.background for c in clips} == {"plain", "noise", "stripes", "checker"}
    counts = Counter(len(c.objects) for c in clips)
    assert 0.2 < counts[2] / len(clips) < 0.4  # default two_shape_fraction 0.3
    assert len({c.template for c in clips}) >= 6


def test_captions_name_the_true_attributes():
    for i in range(200):
        clip = make_clip(11, i)
        text = clip.caption
        position = 0
        for obj in clip.objects:  # objects appear in the caption in order
            clause = text.index(f"{obj.colour} {obj.shape}", position)
            phrase = DIRECTION_PHRASES[obj.direction]
            assert text.index(phrase, clause) > clause
            position = clause + 1
        assert " a o" not in text and not text.startswith("a o"), text  # "an orange"
        if len(clip.objects) == 2:
            assert clip.objects[0].colour != clip.objects[1].colour


def _colour_mask(frames: np.ndarray, rgb) -> np.ndarray:
    """Pixels (T x H x W) within a small distance of an object's colour."""
    return np.abs(frames.astype(int) - np.array(rgb)).sum(-1) < 30


def test_objects_stay_visible_and_move_in_the_recorded_direction():
    config = SyntheticConfig(two_shape_fraction=0.0)
    for i in range(150):
        clip = make_clip(5, i, config)
        (obj,) = clip.objects
        mask = _colour_mask(clip.frames, COLOURS[obj.colour])
        area = mask.sum(axis=(1, 2))
        assert area.min() >= 0.5 * area.max() > 0, (i, area)  # the object stays (mostly) in view
        ys, xs = np.nonzero(mask[0])
        ye, xe = np.nonzero(mask[-1])
        motion = np.array([xe.mean() - xs.mean(), ye.mean() - ys.mean()])
        assert np.linalg.norm(motion) > 2.0, (i, motion)
        cosine = motion @ np.array(DIRECTIONS[obj.direction]) / np.linalg.norm(motion)
        assert cosine > 0.9, (i, obj.direction, motion)


def test_radius_matches_size_word():
    radii = {"small": [], "large": []}
    for i in range(200):
        for obj in make_clip(2, i).objects:
            radii[obj.size].append(obj.radius_px)
    assert max(radii["small"]) < min(radii["large"])


def test_subsets_of_the_vocabulary():
    config = SyntheticConfig(colours=("red", "blue"), shapes=("square",), directions=("left", "right"))
    for i in range(50):
        for obj in make_clip(0, i, config).objects:
            assert obj.colour in ("red", "blue") and obj.shape == "square" and obj.direction in ("left", "right")


@pytest.mark.parametrize("kwargs, message", [
    ({"frames": 1}, "frames"),
    ({"size": 4}, "size"),
    ({"two_shape_fraction": 1.5}, "two_shape_fraction"),
    ({"colours": ("red", "mauve")}, "colours"),
    ({"shapes": ()}, "shapes"),
    ({"colours": ("red",)}, "two colours"),
])
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**kwargs)


def test_negative_seed_is_refused():
    with pytest.raises(ValueError, match="seed"):
        make_clip(-1, 0)
