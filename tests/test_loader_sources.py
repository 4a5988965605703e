"""Shard specs (brace patterns, folders, globs, pipe: URLs), config errors, val passes and clip sampling."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loader_fixtures import keys_of, npy_bytes, one_pass, write_dataset, write_tar
from t2v_dist.data import DataConfig, ShardLoader, expand_shards

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(frames=4, image_size=8, token_budget=32, max_rows=2, max_caption_tokens=12)


@pytest.fixture(scope="module")
def four_shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sources")
    keys = write_dataset(folder, 4, 5)
    return folder, keys


def test_brace_patterns_folders_globs_and_joined_specs(four_shards):
    folder, _ = four_shards
    names = [str(folder / f"train-{i:06d}.tar") for i in range(4)]
    assert expand_shards(str(folder / "train-{000000..000003}.tar")) == names
    assert expand_shards(str(folder / "train-{000000..000001}.tar") + "::" + str(folder / "train-00000{2,3}.tar")) == names
    assert expand_shards(str(folder)) == names
    assert expand_shards(str(folder / "train-*.tar")) == names
    assert expand_shards(f"file://{folder}/train-000000.tar") == [f"file://{folder}/train-000000.tar"]


def test_bad_specs_name_the_problem(four_shards, tmp_path):
    folder, _ = four_shards
    with pytest.raises(ValueError, match=r"6 shard\(s\) do not exist: .*train-000004.tar, .*train-000005.tar, .*train-000006.tar, ...$"):
        expand_shards(str(folder / "train-{000000..000009}.tar"))
    with pytest.raises(ValueError, match="DataConfig.train_shards is empty"):
        ShardLoader(DataConfig(**SMALL))
    with pytest.raises(ValueError, match="holds no .tar shards"):
        expand_shards(str(tmp_path))
    with pytest.raises(ValueError, match="matches no file"):
        expand_shards(str(tmp_path / "*.tar"))


def test_pipe_urls_read_the_same_samples(four_shards):
    folder, keys = four_shards
    local = ShardLoader(DataConfig(train_shards=str(folder / "train-{000000..000003}.tar"), num_workers=2, **SMALL),
                        single_pass=True)
    piped = ShardLoader(DataConfig(train_shards=f"pipe:cat {folder}/train-{{000000..000003}}.tar", num_workers=2, **SMALL),
                        single_pass=True)
    assert piped.urls[0] == f"pipe:cat {folder}/train-000000.tar"
    expected = one_pass(local)
    assert sorted(keys_of(expected)) == sorted(keys)
    assert one_pass(piped) == expected


def test_failing_pipe_is_counted_not_raised(four_shards):
    folder, keys = four_shards
    spec = f"{folder}/train-000000.tar::pipe:cat {folder}/no-such-shard.tar"
    loader = ShardLoader(DataConfig(train_shards=spec, num_workers=0, **SMALL), single_pass=True)
    assert sorted(keys_of(one_pass(loader))) == sorted(k for k in keys if k.startswith("s000_"))
    assert loader.error_counts()["unreadable_shard"] == 1


def test_too_few_shards_for_ranks_times_workers(four_shards):
    folder, _ = four_shards
    cfg = DataConfig(train_shards=str(folder), num_workers=3, **SMALL)
    with pytest.raises(ValueError, match=r"4 shards, fewer than ranks x workers = 2 x 3"):
        ShardLoader(cfg, rank=0, world_size=2)
    ShardLoader(cfg, rank=0, world_size=1)  # 4 >= 1 x 3
    resampled = DataConfig(train_shards=str(folder), num_workers=3, resampled=True, **SMALL)
    ShardLoader(resampled, rank=1, world_size=2)  # draws shards with replacement: any count works


def test_val_is_one_pass_the_same_every_time(four_shards):
    folder, keys = four_shards
    cfg = DataConfig(val_shards=str(folder / "train-000001.tar"), num_workers=2, **SMALL)
    val = ShardLoader(cfg, split="val")  # 1 shard, 2 workers: val lowers its workers to fit
    first = [(list(b.keys), b.frames.clone()) for b in val]
    second = [(list(b.keys), b.frames.clone()) for b in val]
    assert sorted(k for ks, _ in first for k in ks) == sorted(k for k in keys if k.startswith("s001_"))
    assert [ks for ks, _ in first] == [ks for ks, _ in second]
    assert all(bool((a == b).all()) for (_, a), (_, b) in zip(first, second))
    with pytest.raises(ValueError, match="fewer than ranks x workers = 2 x 1"):
        ShardLoader(cfg, split="val", rank=0, world_size=2)


@pytest.mark.parametrize("field,value,message", [
    ("frames", 1, "at least 2 frames"), ("stride", 0, ">= 1"), ("min_frames", 9, "between 2 and frames"),
    ("token_budget", 10, "max_caption_tokens \\+ frames - 1"), ("num_workers", -1, ">= 0"), ("seed", -1, ">= 0"),
])
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=f"DataConfig.{field}=.*{message}"):
        DataConfig(**{**SMALL, field: value})
    with pytest.raises(ValueError, match="split="):
        ShardLoader(DataConfig(train_shards="x"), split="test")


def _counting_clip(path, key, num_frames):
    """Frame t is filled with the value t, so a clip's frames reveal which source frames it took."""
    frames = np.broadcast_to(np.arange(num_frames, dtype=np.uint8)[:, None, None, None], (num_frames, 8, 8, 3))
    write_tar(path, [(f"{key}.frames.npy", npy_bytes(np.ascontiguousarray(frames))),
                     (f"{key}.txt", b"a red circle moves left"), (f"{key}.json", json.dumps({}).encode())])


@pytest.mark.parametrize("stride", [1, 3])
def test_clip_frames_stride_and_seeded_start(tmp_path, stride):
    for s in range(3):
        _counting_clip(tmp_path / f"c-{s:06d}.tar", f"clip{s}", 20)
    cfg = DataConfig(train_shards=str(tmp_path), num_workers=0, stride=stride, seed=7, **SMALL)
    starts = []
    for epoch in range(4):
        for batch in ShardLoader(cfg, epoch=epoch, single_pass=True):
            for b in range(batch.num_samples):
                clip = batch.frames[batch.frame_offsets[b]:batch.frame_offsets[b + 1], 0, 0, 0].tolist()
                assert len(clip) == 4 and clip == [clip[0] + stride * t for t in range(4)]
                assert clip[-1] < 20
                starts.append(clip[0])
    assert len(set(starts)) > 1, "the clip start is random"
    again = [b.frames.clone() for b in ShardLoader(cfg, epoch=2, single_pass=True)]
    same = [b.frames.clone() for b in ShardLoader(cfg, epoch=2, single_pass=True)]
    assert all(bool((a == b).all()) for a, b in zip(again, same)), "the clip start is seeded"


def test_short_clips_need_min_frames(tmp_path):
    _counting_clip(tmp_path / "c-000000.tar", "short", 5)
    strict = ShardLoader(DataConfig(train_shards=str(tmp_path), num_workers=0, stride=2, **SMALL), single_pass=True)
    assert one_pass(strict) == [] and strict.error_counts()["too_few_frames"] == 1
    cfg = DataConfig(train_shards=str(tmp_path), num_workers=0, stride=2, min_frames=3, **SMALL)
    (batch,) = list(ShardLoader(cfg, single_pass=True))
    assert batch.frames[:, 0, 0, 0].tolist() == [0, 2, 4]


def test_reads_shards_from_the_shard_builder(tmp_path):
    """End to end with `t2v-shards synthetic`: every clip of both splits is loaded once, none skipped."""
    out = tmp_path / "syn"
    subprocess.run([sys.executable, "-m", "shards.cli", "synthetic", str(out), "--num_clips", "80",
                    "--frames", "6", "--size", "8", "--samples_per_shard", "15", "--val_fraction", "0.25",
                    "--seed", "5", "--progress", "False"], check=True, capture_output=True, cwd=REPO)
    cfg = DataConfig(train_shards=str(out / "train-*.tar"), val_shards=str(out / "val-*.tar"), num_workers=2,
                     **{**SMALL, "token_budget": 64, "max_caption_tokens": 32})
    train = ShardLoader(cfg, single_pass=True)
    val = ShardLoader(cfg, split="val")
    train_keys, val_keys = keys_of(one_pass(train)), keys_of(one_pass(val))
    assert len(train_keys) + len(val_keys) == 80 and len(set(train_keys) | set(val_keys)) == 80
    assert sum(train.error_counts().values()) == sum(val.error_counts().values()) == 0
