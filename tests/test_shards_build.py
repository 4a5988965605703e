"""The shard builder on the synthetic source: tar format, determinism, splits, incremental reruns."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from loader_fixtures import read_tar, write_tar
from shards.build import BuildConfig, build, plan_jobs
from shards.keys import split_of
from shards.source import InputError, InputItem, Sample
from shards.stats import summarize
from shards.synthetic import SyntheticConfig
from shards.synthetic_source import SyntheticSource

SMALL = SyntheticConfig(frames=8, size=16)


def _build(out: Path, num_clips=60, seed=7, **config):
    config.setdefault("samples_per_shard", 20)
    config.setdefault("val_fraction", 0.2)
    return build(SyntheticSource(num_clips=num_clips, seed=seed, config=SMALL),
                 BuildConfig(out=str(out), progress=False, **config))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shards_are_plain_tars_with_three_members_per_sample(tmp_path):
    summary = _build(tmp_path)
    train = sorted(tmp_path.glob("train-*.tar"))
    val = sorted(tmp_path.glob("val-*.tar"))
    assert [p.name for p in train][:1] == ["train-000000.tar"] and val[0].name == "val-000000.tar"
    listing = subprocess.run(["tar", "tf", str(train[0])], check=True, capture_output=True, text=True).stdout.split()
    keys = sorted({name.split(".", 1)[0] for name in listing})
    stats = json.loads((tmp_path / "train-000000_stats.json").read_text())
    assert len(listing) == 3 * len(keys) == 3 * stats["samples"]
    for key in keys:
        assert "." not in key and "/" not in key
        assert {f"{key}.frames.npy", f"{key}.txt", f"{key}.json"} <= set(listing)
    assert summary["samples"] == 60 and summary["errors"] == 0
    assert summary["splits"]["train"]["samples"] + summary["splits"]["val"]["samples"] == 60
    assert summary["splits"]["train"]["pattern"] == f"train-{{000000..{len(train) - 1:06d}}}.tar"


def test_frames_captions_and_meta_round_trip(tmp_path):
    from shards.synthetic import make_clip

    _build(tmp_path)
    seen = 0
    for tar_path in tmp_path.glob("*.tar"):
        for key, parts in read_tar(tar_path).items():
            frames = np.load(io.BytesIO(parts["frames.npy"]), allow_pickle=False)
            meta = json.loads(parts["json"])
            clip = make_clip(7, meta["index"], SMALL)
            assert frames.dtype == np.uint8 and frames.shape == (8, 16, 16, 3)
            assert np.array_equal(frames, clip.frames)
            assert parts["txt"].decode("utf-8") == clip.caption
            assert meta["key"] == key and meta["split"] == tar_path.name.split("-")[0]
            assert meta["frame_count"] == 8 and meta["objects"][0]["colour"] == clip.objects[0].colour
            seen += 1
    assert seen == 60


def test_webdataset_reads_the_shards(tmp_path):
    summary = _build(tmp_path)
    pattern = str(tmp_path / summary["splits"]["train"]["pattern"])
    samples = list(wds.WebDataset(pattern, shardshuffle=False).decode())
    assert len(samples) == summary["splits"]["train"]["samples"]
    first = samples[0]
    assert first["frames.npy"].shape == (8, 16, 16, 3) and isinstance(first["txt"], str)
    assert first["json"]["split"] == "train"


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    _build(tmp_path / "a")
    _build(tmp_path / "b", workers=2)  # parallel build, same bytes
    _build(tmp_path / "c", seed=8)
    names = sorted(p.name for p in (tmp_path / "a").glob("*.tar"))
    assert names == sorted(p.name for p in (tmp_path / "b").glob("*.tar"))
    for name in names:
        assert _sha(tmp_path / "a" / name) == _sha(tmp_path / "b" / name)
    a = read_tar(tmp_path / "a" / "train-000000.tar")
    c = read_tar(tmp_path / "c" / "train-000000.tar")
    assert next(iter(a.values()))["frames.npy"] != next(iter(c.values()))["frames.npy"]


def test_split_is_stable_and_follows_the_fraction():
    keys = [f"video_{i}" for i in range(4000)]
    splits = [split_of(k, 0.05) for k in keys]
    assert splits == [split_of(k, 0.05) for k in keys]
    assert 0.035 < splits.count("val") / len(keys) < 0.065
    assert all(split_of(k, 0.0) == "train" for k in keys[:200])
    assert all(split_of(k, 1.0) == "val" for k in keys[:200])
    # Growing the val fraction only moves keys from train to val.
    wider = [split_of(k, 0.2) for k in keys]
    assert all(w == "val" for s, w in zip(splits, wider) if s == "val")


def test_split_of_a_clip_does_not_depend_on_dataset_size(tmp_path):
    small, large = _build(tmp_path / "small", num_clips=40), _build(tmp_path / "large", num_clips=80)
    assert small["samples"] == 40 and large["samples"] == 80

    def val_keys(folder):
        return {k for p in folder.glob("val-*.tar") for k in read_tar(p)}

    assert val_keys(tmp_path / "small") == {k for k in val_keys(tmp_path / "large") if int(k.rsplit("_", 1)[1]) < 40}


def test_incremental_rerun_skips_complete_shards_and_overwrite_rebuilds(tmp_path):
    first = _build(tmp_path)
    files = sorted(tmp_path.glob("*.tar")) + sorted(tmp_path.glob("*_stats.json"))
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    again = _build(tmp_path)
    assert again["built"] == [] and again["reused"] == first["built"]
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    assert again["samples"] == first["samples"]

    # A shard whose stats file is gone is not complete: only it is rebuilt.
    (tmp_path / "train-000001_stats.json").unlink()
    partial = _build(tmp_path)
    assert partial["built"] == ["train-000001.tar"]

    rebuilt = _build(tmp_path, mode="overwrite")
    assert sorted(rebuilt["built"]) == sorted(first["built"]) and rebuilt["reused"] == []
    stats_file = tmp_path / "train-000000_stats.json"
    assert stats_file.stat().st_mtime_ns > mtimes[stats_file]


def test_changed_settings_make_shards_stale(tmp_path):
    _build(tmp_path)
    changed = build(SyntheticSource(num_clips=60, seed=7, config=SyntheticConfig(frames=6, size=16)),
                    BuildConfig(out=str(tmp_path), samples_per_shard=20, val_fraction=0.2, progress=False))
    assert changed["reused"] == []  # incremental, but every shard was made with other settings
    frames = np.load(io.BytesIO(next(iter(read_tar(tmp_path / "train-000000.tar").values()))["frames.npy"]))
    assert frames.shape[0] == 6


def test_fewer_inputs_leave_stale_shards_reported(tmp_path):
    _build(tmp_path, num_clips=60)
    summary = _build(tmp_path, num_clips=10)
    assert summary["samples"] == 10
    assert "train-000001.tar" in summary["stale_shards"]


def test_leftover_temp_file_is_not_a_shard(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / ".train-000000.tar.tmp").write_bytes(b"half a tar")
    summary = _build(tmp_path)
    assert "train-000000.tar" in summary["built"]
    assert not (tmp_path / ".train-000000.tar.tmp").exists()


def test_prefix_names_shards_and_summary(tmp_path):
    summary = _build(tmp_path, prefix="syn")
    assert (tmp_path / "syn-train-000000.tar").is_file() and (tmp_path / "syn-summary.json").is_file()
    assert summary["splits"]["val"]["pattern"].startswith("syn-val-{000000..")


def test_stats_summary_and_verify(tmp_path):
    built = _build(tmp_path)
    summary = summarize(str(tmp_path), verify=True)
    assert summary["samples"] == built["samples"] == 60
    assert summary["clip_length_histogram"] == {"8": 60}
    assert summary["verify"] == {"ok": True, "problems": []}
    assert summary["splits"]["val"]["samples"] == built["splits"]["val"]["samples"]

    # A tar that does not match its stats, and one without stats, are both reported.
    tar_path = tmp_path / "train-000000.tar"
    members = list(read_tar(tar_path).items())[:-1]
    write_tar(tar_path, [(f"{key}.{ext}", data) for key, parts in members for ext, data in parts.items()])
    (tmp_path / "train-000001_stats.json").unlink()
    broken = summarize(str(tmp_path), verify=True)
    assert broken["verify"]["ok"] is False
    assert any("train-000000.tar" in p for p in broken["verify"]["problems"])
    assert broken["incomplete_shards"] == ["train-000001.tar"]


@dataclass(frozen=True)
class _FlakySource:
    """Inputs 'bad*' raise InputError after one sample, 'silent*' yield nothing, 'bug' raises a plain error."""

    names: tuple[str, ...]
    kind: str = "test"
    problems: dict = field(default_factory=dict)

    def settings(self) -> dict:
        return {}

    def plan(self) -> list[InputItem]:
        return [InputItem(key=n, path=f"/in/{n}", split_key=n, payload=n, problem=self.problems.get(n))
                for n in self.names]

    def samples(self, item):
        frames = np.zeros((2, 4, 4, 3), np.uint8)
        if item.payload == "bug":
            raise RuntimeError("a bug, not bad input")
        if item.payload.startswith("silent"):
            return
        yield Sample(key=item.key, frames=frames, caption="c", meta={})
        if item.payload.startswith("bad"):
            raise InputError("broke half way")


def test_every_input_is_written_or_reported(tmp_path):
    source = _FlakySource(("good1", "bad1", "silent1", "planned1", "good2"), problems={"planned1": "known problem"})
    summary = build(source, BuildConfig(out=str(tmp_path), samples_per_shard=10, val_fraction=0.0, progress=False))
    stats = json.loads((tmp_path / "train-000000_stats.json").read_text())
    reasons = {e["key"]: e for e in stats["errors"]}
    assert set(reasons) == {"bad1", "silent1", "planned1"}
    assert reasons["bad1"]["reason"] == "broke half way" and reasons["bad1"]["samples_kept"] == 1
    assert reasons["silent1"]["reason"] == "input gave no samples"
    assert reasons["planned1"]["path"] == "/in/planned1"
    assert stats["samples"] == 3 and stats["inputs"] == 5 and stats["inputs_with_samples"] == 3
    assert summary["errors"] == 3


def test_a_bug_stops_the_build_and_leaves_no_half_shard(tmp_path):
    with pytest.raises(RuntimeError, match="a bug"):
        build(_FlakySource(("good1", "bug")), BuildConfig(out=str(tmp_path), val_fraction=0.0, progress=False))
    assert list(tmp_path.glob("*.tar")) == [] and list(tmp_path.glob("*.tmp")) == []
    assert list(tmp_path.glob("*_stats.json")) == []


def test_duplicate_keys_are_refused(tmp_path):
    with pytest.raises(ValueError, match="duplicate source key 'a'"):
        build(_FlakySource(("a", "a")), BuildConfig(out=str(tmp_path), progress=False))


def test_work_assignment_is_deterministic(tmp_path):
    source = SyntheticSource(num_clips=95, seed=1, config=SMALL)
    config = BuildConfig(out=str(tmp_path), samples_per_shard=10, val_fraction=0.1)
    jobs = plan_jobs(source, source.plan(), config)
    again = plan_jobs(source, source.plan(), config)
    assert [(j.tar_path, j.fingerprint, [i.key for i in j.items]) for j in jobs] == \
           [(j.tar_path, j.fingerprint, [i.key for i in j.items]) for j in again]
    train = [j for j in jobs if j.split == "train"]
    assert all(len(j.items) == 10 for j in train[:-1]) and 0 < len(train[-1].items) <= 10
    keys = [i.key for j in jobs for i in j.items]
    assert sorted(keys) == sorted(i.key for i in source.plan())


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "append"}, "mode"),
    ({"samples_per_shard": 0}, "samples_per_shard"),
    ({"workers": -1}, "workers"),
    ({"val_fraction": 2.0}, "val_fraction"),
    ({"prefix": "a.b"}, "invalid sample key"),
    ({"num_tasks": 0}, "num_tasks"),
    ({"task_index": 3, "num_tasks": 3}, "task_index"),
    ({"task_index": -1, "num_tasks": 2}, "task_index"),
])
def test_bad_build_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BuildConfig(out="x", **kwargs)



def test_tasks_split_the_shards_and_together_equal_a_single_build(tmp_path):
    """What an array job does (launch/shards_slurm.sh): task k of 3 builds shards k, k+3, ...; then a run
    without the split reuses them all and writes summary.json. The bytes equal a single build's."""
    single, split = tmp_path / "single", tmp_path / "split"
    whole = _build(single, num_clips=90, samples_per_shard=8)
    names = sorted(p.name for p in single.glob("*.tar"))
    assert len(names) >= 9
    built: list[str] = []
    for task in (2, 0, 1):  # any order
        part = _build(split, num_clips=90, samples_per_shard=8, task_index=task, num_tasks=3)
        assert part["task"] == {"index": task, "count": 3} and part["reused"] == []
        assert not (split / "summary.json").exists(), "a task must not write a summary of a partial set"
        assert all(part["splits"][s]["pattern"] is None for s in ("train", "val"))
        assert not set(part["built"]) & set(built) and not part["stale_shards"]
        built += part["built"]
    assert sorted(built) == names
    for name in names:
        assert _sha(split / name) == _sha(single / name), name
    again = _build(split, num_clips=90, samples_per_shard=8, task_index=1, num_tasks=3)
    assert again["built"] == [] and len(again["reused"]) == len(names[1::3])  # resumable: complete shards kept
    final = _build(split, num_clips=90, samples_per_shard=8)
    assert final["built"] == [] and sorted(final["reused"]) == names
    for key in ("splits", "inputs", "samples", "errors", "settings"):
        assert final[key] == whole[key], key
    assert {**final["config"], "out": ""} == {**whole["config"], "out": ""}
    assert json.loads((split / "summary.json").read_text())["samples"] == 90


def test_cli_task_flags(tmp_path):
    import sys

    run = lambda *a: subprocess.run([sys.executable, "-m", "shards.cli", "synthetic", "--out", str(tmp_path),  # noqa: E731
                                     "--num_clips", "20", "--frames", "4", "--size", "16", "--samples_per_shard",
                                     "5", "--progress", "False", *a], capture_output=True, text=True,
                                    cwd=Path(__file__).resolve().parents[1])
    ok = run("--task_index", "1", "--num_tasks", "2")
    assert ok.returncode == 0 and "task 1 of 2" in ok.stdout and not (tmp_path / "summary.json").exists()
    bad = run("--task_index", "2", "--num_tasks", "2")
    assert bad.returncode == 2 and "task_index must be in [0, num_tasks=2)" in bad.stderr
