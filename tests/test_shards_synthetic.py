"""The moving-shapes generator: determinism, vocabulary, and that the recorded truth is true."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from shards.synthetic import (COLOURS, DIRECTION_PHRASES, DIRECTIONS, HELD_OUT_COMBOS, SHAPES, SyntheticConfig,
                              caption_for, make_clip)
from shards.synthetic_source import SyntheticSource

REPO = Path(__file__).resolve().parents[1]


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
    ({"held_out": (("red", "circle", "sideways"),)}, "held_out"),
    ({"held_out": (("red", "circle"),)}, "held_out"),
    ({"held_out": tuple(("red", "circle", d) for d in DIRECTIONS)}, "no direction for a red circle"),
])
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**kwargs)


def test_negative_seed_is_refused():
    with pytest.raises(ValueError, match="seed"):
        make_clip(-1, 0)
    with pytest.raises(ValueError, match="split"):
        make_clip(0, 0, split="test")


def test_held_out_combinations_leave_every_value_in_train():
    held = set(HELD_OUT_COMBOS)
    assert len(held) == len(HELD_OUT_COMBOS) == 8
    for values, index in ((COLOURS, 0), (SHAPES, 1), (DIRECTIONS, 2)):
        assert {combo[index] for combo in held} <= set(values)
        # every value keeps most of its combinations in train
        for value in values:
            total = len(COLOURS) * len(SHAPES) * len(DIRECTIONS) // len(values)
            assert sum(combo[index] == value for combo in held) < total


def test_train_clips_never_show_a_held_out_combination():
    config = SyntheticConfig(held_out=HELD_OUT_COMBOS)
    held = set(HELD_OUT_COMBOS)
    train = [o for i in range(600) for o in make_clip(4, i, config, "train").objects]
    assert not [o for o in train if (o.colour, o.shape, o.direction) in held]
    assert {o.colour for o in train} == set(COLOURS) and {o.shape for o in train} == set(SHAPES)
    assert {o.direction for o in train} == set(DIRECTIONS)
    val = [o for i in range(600) for o in make_clip(4, i, config, "val").objects]
    assert [o for o in val if (o.colour, o.shape, o.direction) in held]
    # A val clip is the clip the generator makes without held-out combinations: same draws, same bytes.
    for i in range(20):
        assert make_clip(4, i, config, "val").frames.tobytes() == make_clip(4, i).frames.tobytes()


def test_caption_for_matches_the_generator():
    assert caption_for("orange", "circle", "up-left") == "an orange circle moves up and to the left"
    clip = make_clip(0, 1, SyntheticConfig(two_shape_fraction=0.0))
    (obj,) = clip.objects
    assert caption_for(obj.colour, obj.shape, obj.direction, clip.template, obj.size) == clip.caption


def test_default_settings_are_those_of_builds_before_held_out():
    """Incremental builds compare fingerprints made from these settings: old shards must stay valid."""
    assert set(SyntheticSource(num_clips=1).settings()) == {
        "seed", "frames", "size", "two_shape_fraction", "textured_fraction", "colours", "shapes", "directions",
        "backgrounds"}
    held = SyntheticSource(num_clips=1, config=SyntheticConfig(held_out=HELD_OUT_COMBOS), val_fraction=0.2)
    assert held.settings()["held_out"] == [list(c) for c in HELD_OUT_COMBOS]
    assert held.settings()["val_fraction"] == 0.2


def _shard_truth(tar_path: Path) -> list[dict]:
    with tarfile.open(tar_path) as tar:
        return [json.load(io.BytesIO(tar.extractfile(m).read())) for m in tar if m.name.endswith(".json")]


def _build(out: Path, *extra: str) -> str:
    done = subprocess.run([sys.executable, "-m", "shards.cli", "synthetic", "--out", str(out), "--num_clips", "400",
                           "--frames", "8", "--size", "32", "--seed", "5", "--samples_per_shard", "100",
                           "--val_fraction", "0.3", "--progress", "False", *extra],
                          cwd=REPO, check=True, capture_output=True, text=True)
    return done.stdout


def test_cli_holdout_plain_single_object_shards(tmp_path):
    out = tmp_path / "syn"
    _build(out)
    first = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    # The new options enter the fingerprint: an incremental rebuild with them rebuilds every shard.
    log = _build(out, "--holdout", "True", "--textured_fraction", "0", "--two_shape_fraction", "0")
    assert "reused 0" in log, log
    held = set(HELD_OUT_COMBOS)
    train = [m for p in out.glob("train-*.tar") for m in _shard_truth(p)]
    val = [m for p in out.glob("val-*.tar") for m in _shard_truth(p)]
    assert len(train) + len(val) == 400 and len(val) > 60
    for meta in train + val:
        assert meta["background"] == "plain" and len(meta["objects"]) == 1
        (obj,) = meta["objects"]
        assert meta["held_out_combo"] == ((obj["colour"], obj["shape"], obj["direction"]) in held)
    assert not any(m["held_out_combo"] for m in train)
    assert any(m["held_out_combo"] for m in val)
    for attribute, values in (("colour", COLOURS), ("shape", SHAPES), ("direction", DIRECTIONS)):
        assert {m["objects"][0][attribute] for m in train} == set(values), attribute
    # Back to the defaults: the same bytes as the first build.
    _build(out)
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == first


def test_cli_demo_variant_outward_fixed_plain_colour_large(tmp_path):
    """The demo's variant: every first frame is the object at the centre on one fixed colour, so the caption
    alone fixes it; the objects still move along their directions, and every caption word still occurs."""
    out = tmp_path / "demo"
    _build(out, "--textured_fraction", "0", "--two_shape_fraction", "0", "--layout", "outward",
           "--plain_colour", "20,30,40", "--object_size", "large")
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        for name, data in members.items():
            if not name.endswith(".frames.npy"):
                continue
            frames = np.load(io.BytesIO(data))
            meta = json.loads(members[name.replace(".frames.npy", ".json")])
            (obj,) = meta["objects"]
            assert obj["size"] == "large", obj
            assert (frames[:, 0, 0] == (20, 30, 40)).all()  # a corner is background in every frame
            along = np.array(DIRECTIONS[obj["direction"]])
            start, end = np.array(obj["start_xy"]) - 16.0, np.array(obj["end_xy"]) - 16.0
            assert -5.5 < start @ along < -1.0 and end @ along > 5.0  # from just behind the centre, outwards
            lit = np.argwhere((frames[0] != (20, 30, 40)).any(-1))[:, ::-1] + 0.5  # (x, y) pixel centres
            if obj["shape"] != "triangle":  # (a triangle's pixels are not centred on its centre)
                assert np.abs(lit.mean(0) - obj["start_xy"]).max() < 1.0  # drawn where the metadata says


def test_cli_fixed_object_size_draws_one_radius(tmp_path):
    """--object_size fixed: every object has radius 0.2 of the frame side, so a caption fixes its outline."""
    out = tmp_path / "fixed"
    _build(out, "--two_shape_fraction", "0", "--object_size", "fixed")
    radii = set()
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            radii |= {obj["radius_px"] for m in tar if m.name.endswith(".json")
                      for obj in json.loads(tar.extractfile(m).read())["objects"]}
    assert len(radii) == 1 and radii.pop() == pytest.approx(0.2 * 32)


@pytest.mark.parametrize("flag, value, message", [
    ("--plain_colour", "20,30", "3 comma-separated values"),
    ("--plain_colour", "20,30,256", "three integers in 0..255"),
    ("--object_size", "huge", "--object_size must be"),
    ("--layout", "diagonal", "layout must be one of"),
])
def test_cli_rejects_bad_variant_options(tmp_path, flag, value, message):
    done = subprocess.run([sys.executable, "-m", "shards.cli", "synthetic", "--out", str(tmp_path / "x"),
                           "--num_clips", "4", "--progress", "False", flag, value],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").glob("*.tar"))
