"""Bad shards and samples are skipped and counted per reason; nothing is ever unpickled; fuzzing."""
from __future__ import annotations

import io
import json
import pickle

import av
import numpy as np
import pytest

from loader_fixtures import (CreatesFileWhenUnpickled, keys_of, mp4_bytes, npy_bytes, one_pass,
                             sample_members, take, write_tar)
from t2v_dist.data import ERROR_REASONS, DataConfig, ShardLoader

META = json.dumps({"source": "test"}).encode()


def members(key, frames=None, caption=b"a red circle moves left", meta=META, mp4=None):
    out = []
    if frames is not None:
        out.append((f"{key}.frames.npy", frames))
    if mp4 is not None:
        out.append((f"{key}.mp4", mp4))
    if caption is not None:
        out.append((f"{key}.txt", caption))
    if meta is not None:
        out.append((f"{key}.json", meta))
    return out


def good_npy(i=0, num_frames=6, size=8):
    return npy_bytes(np.random.default_rng(i).integers(0, 256, (num_frames, size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def bad_dataset(tmp_path_factory):
    """Four shards: one of bad samples, one truncated, one of mp4 samples, one that is not a tar."""
    folder = tmp_path_factory.mktemp("bad")
    marker = folder / "UNPICKLED"
    evil = pickle.dumps(CreatesFileWhenUnpickled(marker))
    good, expected = [], {r: 0 for r in ERROR_REASONS}

    a = []
    for i in range(10):  # enough good samples that batches are cut inside the shard
        a += members(f"a_good{i}", frames=good_npy(i))
        good.append(f"a_good{i}")
    a += members("a_garbage_npy", frames=b"\x93NUMPY garbage")
    a += members("a_pickled_npy", frames=npy_bytes(np.array([CreatesFileWhenUnpickled(marker)], dtype=object), True))
    a += members("a_float_npy", frames=npy_bytes(np.zeros((6, 8, 8, 3), np.float32)))
    expected["bad_npy"] = 3
    a += members("a_big_frames", frames=good_npy(1, size=16))
    expected["wrong_frame_size"] = 1
    a += members("a_bad_mp4", mp4=b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    expected["undecodable_mp4"] = 1
    a += members("a_empty_caption", frames=good_npy(2), caption=b"  \n ")
    expected["empty_caption"] = 1
    a += members("a_latin1_caption", frames=good_npy(2), caption="caf\xe9".encode("latin-1"))
    expected["bad_caption"] = 1
    a += members("a_long_caption", frames=good_npy(2), caption=b"word " * 40)
    expected["caption_too_long"] = 1
    a += members("a_short_clip", frames=good_npy(3, num_frames=3))
    expected["too_few_frames"] = 1
    a += members("a_no_frames", frames=None)
    expected["missing_member"] = 1
    a += members("a_bad_json", frames=good_npy(4), meta=b"{not json")
    expected["bad_json"] = 1
    a += members("a_with_pickles", frames=good_npy(5)) + [("a_with_pickles.pyd", evil), ("a_with_pickles.pickle", evil)]
    good.append("a_with_pickles")
    expected["ignored_member"] = 2
    a += [("a_dup.frames.npy", good_npy(6)), ("a_dup.txt", b"a blue square moves up"),
          ("a_dup.txt", b"a second caption"), ("a_dup.json", META)]
    good.append("a_dup")
    expected["duplicate_member"] = 1
    write_tar(folder / "train-000000.tar", a)

    b = []
    for i in range(12):
        b += members(f"b_{i:02d}", frames=good_npy(10 + i))
    path = write_tar(folder / "train-000001.tar", b)
    data = path.read_bytes()
    cut = data.index(b"b_09.frames.npy") + 512 + 100  # inside the data of b_09's frames
    path.write_bytes(data[:cut])
    good += [f"b_{i:02d}" for i in range(9)]
    expected["truncated_tar"] = 1

    c = []
    for i in range(3):
        c += members(f"c_video{i}", mp4=mp4_bytes(8, 24, 16, seed=i))
        good.append(f"c_video{i}")
    write_tar(folder / "train-000002.tar", c)

    (folder / "train-000003.tar").write_bytes(b"this is not a tar file" * 40)
    expected["unreadable_shard"] = 1
    return str(folder / "train-{000000..000003}.tar"), good, expected, marker


def config(shards, num_workers, **kw):
    return DataConfig(train_shards=shards, frames=4, image_size=8, token_budget=32, max_rows=2,
                      max_caption_tokens=12, num_workers=num_workers, **kw)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_inputs_are_skipped_and_counted(bad_dataset, num_workers):
    shards, good, expected, marker = bad_dataset
    loader = ShardLoader(config(shards, num_workers), single_pass=True)
    batches = one_pass(loader)
    assert sorted(keys_of(batches)) == sorted(good)
    assert loader.error_counts() == expected
    assert not marker.exists(), "a .pyd/.pickle member or a pickled .npy was unpickled"


def test_error_counts_are_exact_across_resume(bad_dataset):
    shards, good, expected, marker = bad_dataset
    cfg = config(shards, 2)
    full = one_pass(ShardLoader(cfg, single_pass=True))
    for k in range(1, len(full)):
        first = ShardLoader(cfg, single_pass=True)
        head = take(first, k)
        resumed = ShardLoader(cfg, single_pass=True)
        resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
        assert head + one_pass(resumed) == full
        assert resumed.error_counts() == expected, f"counts after a resume at batch {k}"
    assert not marker.exists()


def test_mp4_frames_are_centre_cropped_and_resized(tmp_path):
    # 48x16 video: red | green | blue thirds; the centre crop after scaling to 8 high is the green third
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 48, 16, "yuv420p"
        img = np.zeros((16, 48, 3), np.uint8)
        img[:, :16], img[:, 16:32], img[:, 32:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
        for _ in range(5):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    write_tar(tmp_path / "v-000000.tar", members("video", mp4=buf.getvalue()))
    loader = ShardLoader(config(str(tmp_path / "v-000000.tar"), 0), single_pass=True)
    (batch,) = list(loader)
    assert tuple(batch.frames.shape) == (4, 8, 8, 3)
    centre = batch.frames[:, :, 2:6].float().mean(dim=(0, 1, 2))
    assert centre[1] > 180 and centre[0] < 60 and centre[2] < 60, centre


def _mutations(data: bytes, rng: np.random.Generator):
    n = len(data)
    yield data[: int(rng.integers(0, n))]                       # truncated anywhere
    flipped = bytearray(data)
    for at in rng.integers(0, n, int(rng.integers(1, 40))):      # random byte flips
        flipped[at] = int(rng.integers(0, 256))
    yield bytes(flipped)
    start = int(rng.integers(0, n))
    yield data[:start] + rng.bytes(int(rng.integers(1, 2048))) + data[start + 1024:]  # a garbage run
    yield rng.bytes(int(rng.integers(0, 4096)))                  # pure noise


def _mutated_member(data: bytes, rng: np.random.Generator) -> bytes:
    return list(_mutations(data, rng))[int(rng.integers(0, 4))]


def _fuzzed_shards(base: list[tuple[str, bytes]], tmp_path, rng: np.random.Generator):
    """Damaged tar streams, and intact tars whose members' bytes are damaged (fuzzing the decoders)."""
    clean = write_tar(tmp_path / "clean.tar", base).read_bytes()
    for _ in range(15):
        yield from _mutations(clean, rng)
        damaged = [(name, _mutated_member(data, rng) if rng.random() < 0.5 else data) for name, data in base]
        yield write_tar(tmp_path / "damaged.tar", damaged).read_bytes()


def test_fuzzed_shards_never_crash_the_loader(tmp_path):
    base = []
    for i in range(4):
        base += sample_members(f"n{i}", i, 6, 8)
    for i in range(2):
        base += members(f"v{i}", mp4=mp4_bytes(6, 16, 12, seed=i))
    rng = np.random.default_rng(1234)
    cfg_kw = dict(frames=4, image_size=8, token_budget=32, max_rows=2, max_caption_tokens=12, num_workers=0)
    seen = {reason: 0 for reason in ERROR_REASONS}
    for case, data in enumerate(_fuzzed_shards(base, tmp_path, rng)):
        path = tmp_path / f"fuzz-{case:03d}.tar"
        path.write_bytes(data)
        loader = ShardLoader(DataConfig(train_shards=str(path), **cfg_kw), single_pass=True)
        for batch in loader:
            assert tuple(batch.frames.shape[1:]) == (8, 8, 3) and 1 <= batch.num_samples <= 6
        for reason, n in loader.error_counts().items():
            seen[reason] += n
    # the damage reached the tar reader and every decoder
    for reason in ("unreadable_shard", "truncated_tar", "bad_npy", "undecodable_mp4", "missing_member"):
        assert seen[reason] > 0, seen
