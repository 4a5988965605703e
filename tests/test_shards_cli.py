"""`t2v-shards` through the real console script and `python -m shards.cli`, in subprocesses."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "t2v-shards"


def run(*args: str, script: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    command = [str(SCRIPT)] if script else [sys.executable, "-m", "shards.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=300, cwd=cwd or REPO, env=env)


def write_mp4(path: Path, frames: int, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.full((size, size, 3), 8 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_console_script_is_installed():
    assert SCRIPT.is_file(), "run `make install` (pip install -e .): pyproject declares t2v-shards"


def test_synthetic_example_then_incremental_rerun_then_stats(tmp_path):
    out = tmp_path / "syn"
    args = ["synthetic", "--out", str(out), "--num_clips", "120", "--frames", "16", "--size", "32", "--seed", "7",
            "--samples_per_shard", "50", "--workers", "2", "--progress", "False"]
    first = run(*args)
    assert first.returncode == 0, first.stderr
    assert "120 inputs -> 120 samples" in first.stdout
    listing = subprocess.run(["tar", "tf", str(out / "train-000000.tar")], capture_output=True, text=True, check=True)
    assert len(listing.stdout.split()) == 3 * 50
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 120 and summary["settings"]["seed"] == 7 and summary["settings"]["frames"] == 16
    assert sorted(summary["built"]) == sorted(p.name for p in out.glob("*.tar"))
    assert f"built {len(summary['built'])}, reused 0" in first.stdout

    rerun = run(*args)
    assert rerun.returncode == 0 and "built 0" in rerun.stdout

    stats = run("stats", "--src", str(out), "--verify", "True", script=False)
    assert stats.returncode == 0, stats.stderr
    report = json.loads(stats.stdout)
    assert report["samples"] == 120 and report["clip_length_histogram"] == {"16": 120}
    assert report["verify"]["ok"] is True
    assert report["splits"]["train"]["samples"] + report["splits"]["val"]["samples"] == 120


def test_from_folder_with_bad_inputs_exits_zero_and_reports_them(tmp_path):
    src = tmp_path / "videos"
    write_mp4(src / "good.mp4", 20)
    (src / "good.txt").write_text("a grey square", encoding="utf-8")
    (src / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    (src / "corrupt.txt").write_text("x", encoding="utf-8")
    (src / "empty.mp4").write_bytes(b"")
    (src / "empty.txt").write_text("x", encoding="utf-8")
    shutil.copy(src / "good.mp4", src / "blank_caption.mp4")
    (src / "blank_caption.txt").write_text("\n", encoding="utf-8")
    shutil.copy(src / "good.mp4", src / "latin1.mp4")
    (src / "latin1.txt").write_bytes(b"\xe9t\xe9")
    out = tmp_path / "out"
    result = run("from-folder", "--src", str(src), "--out", str(out), "--frames", "8", "--size", "16",
                 "--stride", "2", "--progress", "False", script=False)
    assert result.returncode == 0, result.stderr
    assert "5 inputs -> 1 samples" in result.stdout and "4 reported" in result.stdout
    errors = {Path(e["path"]).name: e["reason"] for f in out.glob("*_stats.json")
              for e in json.loads(f.read_text())["errors"]}
    assert set(errors) == {"corrupt.mp4", "empty.mp4", "blank_caption.mp4", "latin1.mp4"}
    with tarfile.open(out / "train-000000.tar") as tar:
        (frames_member,) = [m for m in tar if m.name.endswith(".frames.npy")]
        frames = np.load(io.BytesIO(tar.extractfile(frames_member).read()), allow_pickle=False)
    assert frames.shape == (8, 16, 16, 3)
    assert [round(f.mean() / 8) for f in frames] == [0, 2, 4, 6, 8, 10, 12, 14]  # --stride 2


def test_manifest_ucf101_and_wds_subcommands(tmp_path):
    videos = tmp_path / "videos"
    write_mp4(videos / "a.mp4", 12)
    (tmp_path / "list.jsonl").write_text(json.dumps({"path": "videos/a.mp4", "caption": "grey"}) + "\n")
    manifest = run("from-manifest", "--src", str(tmp_path / "list.jsonl"), "--out", str(tmp_path / "m"),
                   "--frames", "4", "--size", "8", "--fps", "5", "--val_fraction", "0", "--progress", "False")
    assert manifest.returncode == 0, manifest.stderr
    assert "1 inputs -> 1 samples" in manifest.stdout  # 12 frames at 10 fps -> 6 at 5 fps -> one clip of 4

    ucf = tmp_path / "UCF-101" / "JumpRope"
    ucf.mkdir(parents=True)
    shutil.copy(videos / "a.mp4", ucf / "v_JumpRope_g01_c01.avi")  # the container is probed, not the name
    result = run("ucf101", "--src", str(tmp_path / "UCF-101"), "--out", str(tmp_path / "u"), "--frames", "4",
                 "--size", "8", "--template", "someone doing {action}", "--val_fraction", "0", "--prefix", "ucf",
                 "--progress", "False")
    assert result.returncode == 0, result.stderr
    with tarfile.open(tmp_path / "u" / "ucf-train-000000.tar") as tar:
        assert tar.extractfile("JumpRope_v_JumpRope_g01_c01_c00000.txt").read() == b"someone doing jump rope"

    with tarfile.open(tmp_path / "in.tar", "w") as tar:
        for name, data in (("000000001.mp4", (videos / "a.mp4").read_bytes()), ("000000001.txt", b"from v2d")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    wds = run("from-wds", "--src", str(tmp_path / "in.tar"), "--out", str(tmp_path / "w"), "--frames", "6",
              "--size", "8", "--val_fraction", "0", "--progress", "False")
    assert wds.returncode == 0, wds.stderr
    assert "1 inputs -> 2 samples" in wds.stdout


@pytest.mark.parametrize("args, message", [
    (["synthetic", "--out", "x", "--mode", "append"], "mode must be one of"),
    (["synthetic", "--out", "x", "--frames", "abc"], "--frames: expected int"),
    (["from-folder", "--src", "does/not/exist", "--out", "x"], "not a directory"),
    (["from-folder", "--src", ".", "--out", "x", "--stride", "2", "--fps", "5"], "either stride or fps"),
    (["ucf101", "--src", ".", "--out", "x", "--template", "no field"], "must contain {action}"),
])
def test_bad_arguments_fail_with_a_clear_message(tmp_path, args, message):
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_help_lists_every_subcommand():
    result = run("--help")
    assert result.returncode == 0
    for name in ("synthetic", "from-folder", "from-manifest", "ucf101", "from-wds", "stats"):
        assert name in result.stdout + result.stderr  # fire writes help to stderr off a terminal
