"""Reading tar shards: damaged headers are counted (never taken for the end), samples are read one at a
time from local shards, non-seekable shards are buffered up to a limit."""
from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

import numpy as np
import pytest

from loader_fixtures import keys_of, one_pass, write_dataset
from t2v_dist.data import DataConfig, ShardLoader
from t2v_dist.data.tario import ShardTooLarge, open_shard

SMALL = dict(frames=4, image_size=8, token_budget=32, max_rows=2, max_caption_tokens=12)
MEMBERS_PER_SAMPLE = 3  # .frames.npy, .txt, .json


def damage_header(path: Path, member: int) -> None:
    """Overwrite the 512 header bytes of tar member `member` with random bytes."""
    offset = tarfile.open(path).getmembers()[member].offset
    data = bytearray(path.read_bytes())
    data[offset:offset + 512] = np.random.default_rng(member).bytes(512)
    path.write_bytes(bytes(data))


def test_damaged_header_mid_shard_is_counted_with_the_samples_it_loses(tmp_path):
    keys = write_dataset(tmp_path, 1, 100)
    shard = tmp_path / "train-000000.tar"
    damage_header(shard, 150)  # the first member of sample 50
    loader = ShardLoader(DataConfig(train_shards=str(shard), num_workers=0, **SMALL), single_pass=True)
    assert sorted(keys_of(one_pass(loader))) == keys[:50]
    counts = loader.error_counts()
    assert counts["damaged_tar_header"] == 1 and counts["lost_sample"] == 50
    assert sum(counts.values()) == 51, counts


@pytest.mark.parametrize("member", range(0, 30))
def test_a_damaged_header_anywhere_loses_only_what_follows(tmp_path, member):
    write_dataset(tmp_path, 1, 10)
    shard = tmp_path / "train-000000.tar"
    damage_header(shard, member)
    sample, nth = divmod(member, MEMBERS_PER_SAMPLE)
    with open_shard(str(shard), 2**30) as index:
        kept = [index.samples[i].key for i in range(len(index.samples))]
        # samples before the damaged one are whole; the damaged sample keeps the members before it
        assert kept == [f"s000_{i:04d}" for i in range(sample + (nth > 0))]
        assert all(len(index.read(i)) == MEMBERS_PER_SAMPLE for i in range(sample))
        if nth:
            assert len(index.read(sample)) == nth
        assert index.problems.count("damaged_tar_header") == 1
        assert index.problems.count("lost_sample") == 10 - sample - (nth > 0)
        assert set(index.problems) == {"damaged_tar_header", "lost_sample"} - ({"lost_sample"} if sample == 9 and nth else set())


def test_shard_cut_at_a_member_boundary_is_truncated(tmp_path):
    write_dataset(tmp_path, 1, 10)
    shard = tmp_path / "train-000000.tar"
    cut = tarfile.open(shard).getmembers()[15].offset  # sample 5 starts here; no end-of-archive block
    shard.write_bytes(shard.read_bytes()[:cut])
    loader = ShardLoader(DataConfig(train_shards=str(shard), num_workers=0, **SMALL), single_pass=True)
    assert len(keys_of(one_pass(loader))) == 5
    assert loader.error_counts()["truncated_tar"] == 1


def _proc_read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io to count bytes read")
def test_local_shards_are_indexed_then_read_one_sample_at_a_time(tmp_path):
    write_dataset(tmp_path, 1, 40, num_frames=16, size=48)  # about 110 KB per sample
    shard = tmp_path / "train-000000.tar"
    size = shard.stat().st_size
    before = _proc_read_bytes()
    with open_shard(str(shard), 2**30) as index:
        indexed = _proc_read_bytes() - before
        assert len(index.samples) == 40 and index.problems == []
        assert indexed < 0.1 * size, f"indexing read {indexed} of {size} bytes: it read the data too"
        before = _proc_read_bytes()
        members = index.read(7)
        one = _proc_read_bytes() - before
    sample_bytes = sum(len(v) for v in members.values())
    assert sample_bytes <= one < sample_bytes + 64 * 1024 and one < 0.05 * size


def _big_dataset(folder: Path) -> list[str]:
    return write_dataset(folder, 2, 8, num_frames=16, size=64)  # about 1.6 MB per shard


BIG = {**SMALL, "image_size": 64}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_pipe_shard_over_the_buffer_limit_fails_naming_the_shard(tmp_path, num_workers):
    _big_dataset(tmp_path)
    spec = f"pipe:cat {tmp_path}/train-{{000000..000001}}.tar"
    small = ShardLoader(DataConfig(train_shards=spec, num_workers=num_workers, max_buffered_shard_mb=1, **BIG),
                        single_pass=True)
    with pytest.raises(ShardTooLarge, match=r"shard pipe:cat .*train-00000[01]\.tar is over "
                                            r"DataConfig.max_buffered_shard_mb=1 MB"):
        one_pass(small)
    enough = ShardLoader(DataConfig(train_shards=spec, num_workers=num_workers, max_buffered_shard_mb=2, **BIG),
                         single_pass=True)
    assert len(keys_of(one_pass(enough))) == 16, enough.error_counts()


def test_compressed_shards_read_like_plain_ones_and_obey_the_limit(tmp_path):
    keys = _big_dataset(tmp_path / "plain")
    (tmp_path / "gz").mkdir()
    for name in ("train-000000.tar", "train-000001.tar"):
        (tmp_path / "gz" / f"{name}.gz").write_bytes(gzip.compress((tmp_path / "plain" / name).read_bytes(), 1))
    plain = ShardLoader(DataConfig(train_shards=str(tmp_path / "plain"), num_workers=0, **BIG), single_pass=True)
    spec = str(tmp_path / "gz" / "train-*.tar.gz")
    packed = ShardLoader(DataConfig(train_shards=spec, num_workers=0, **BIG), single_pass=True)
    expected = one_pass(plain)
    assert sorted(keys_of(expected)) == sorted(keys) and one_pass(packed) == expected
    with pytest.raises(ShardTooLarge, match="train-000000.tar.gz is over"):  # counted after decompression
        one_pass(ShardLoader(DataConfig(train_shards=spec, num_workers=0, max_buffered_shard_mb=1, **BIG),
                             single_pass=True))


def test_cut_compressed_shard_keeps_the_samples_before_the_cut(tmp_path):
    write_dataset(tmp_path, 1, 10)
    packed = gzip.compress((tmp_path / "train-000000.tar").read_bytes(), 1)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(packed[: len(packed) * 6 // 10])
    with open_shard(str(cut), 2**30) as index:
        assert 3 <= len(index.samples) < 10 and index.problems == ["truncated_tar"]
    with open_shard(f"pipe:cat {cut}", 2**30) as piped:
        assert [s.key for s in piped.samples] == [s.key for s in index.samples]
        assert piped.problems == ["truncated_tar"]
