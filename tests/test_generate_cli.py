"""`t2v-generate` and model loading for inference, on a real 2-rank ZeRO-2 run and its exported weights.

One short training job (2 CPU ranks, DeepSpeed ZeRO-2, 2 steps, a checkpoint after each) is shared by
the whole module; everything else loads it: the merged checkpoint, a `--tag`, the exported file.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from prom_server import free_port
from t2v_dist.export import export_run
from t2v_dist.generation import encode_prompts, generate_videos, main as generate_main
from t2v_dist.inference import InferenceError, load_for_inference
from t2v_dist.video_io import contact_sheet

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROMPTS = ["a red circle moves left", "a blue square moves up", "a green triangle moves down right"]
pytestmark = pytest.mark.timeout(600)


def env() -> dict:
    e = dict(os.environ, PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(key, None)
    return e


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    shards = tmp_path_factory.mktemp("shards")
    subprocess.run([sys.executable, "-m", "shards.cli", "synthetic", "--out", str(shards), "--num_clips", "24",
                    "--frames", "8", "--size", "32", "--seed", "3", "--samples_per_shard", "6",
                    "--val_fraction", "0.25", "--progress", "False"], check=True, cwd=REPO, env=env())
    run = tmp_path_factory.mktemp("run")
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
           str(REPO / "launch" / "train.py"), "--config", str(REPO / "launch" / "configs" / "demo.yaml"),
           "--run_dir", str(run), f"--data.train_shards={shards}/train-*.tar", f"--data.val_shards={shards}/val-*.tar",
           "--model.preset=tiny", "--data.frames=8", "--data.token_budget=64", "--data.max_rows=2", "--data.num_workers=1",
           "--train.max_steps=2", "--train.warmup_steps=1", "--train.lr=3e-3", "--checkpoint.every=1",
           "--checkpoint.keep_last=2", "--eval.every=0", "--metrics.enabled=false"]
    proc = subprocess.run(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=500)
    assert proc.returncode == 0, proc.stdout.decode(errors="replace")[-4000:]
    return run


@pytest.fixture(scope="module")
def weights(run_dir, tmp_path_factory) -> Path:
    return export_run(run_dir, tmp_path_factory.mktemp("export") / "model.safetensors")


def cli(*args: str, tool: str = "t2v-generate") -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *args], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


# ------------------------------------------------------------------------------------ loading

def test_two_rank_checkpoint_is_merged_into_the_trained_weights(run_dir, weights):
    model, meta = load_for_inference(run_dir=run_dir)
    assert (meta["tag"], meta["step"], meta["world_size"], meta["dtype"]) == ("step00000002", 2, 2, "float32")
    assert not model.training and meta["config"].model.preset == "tiny"
    # fp32 CPU training: the merged fp32 master partitions equal the module weights DeepSpeed saved.
    saved = torch.load(run_dir / "checkpoints" / "step00000002" / "mp_rank_00_model_states.pt",
                       map_location="cpu", weights_only=False)["module"]
    ours = model.state_dict()
    assert set(ours) == set(saved)
    for name, tensor in saved.items():
        torch.testing.assert_close(ours[name], tensor.float(), rtol=0, atol=0, msg=name)
    # The exported file holds the same weights; --tag picks the older checkpoint.
    exported, emeta = load_for_inference(weights=weights)
    assert (emeta["tag"], emeta["step"], emeta["world_size"]) == ("step00000002", 2, None)
    for name, tensor in exported.state_dict().items():
        assert torch.equal(tensor, ours[name]), name
    older, ometa = load_for_inference(run_dir=run_dir, tag="step00000001")
    assert ometa["step"] == 1
    assert not torch.equal(older.state_dict()["wte.weight"], ours["wte.weight"])


def test_checkpoint_dir_from_the_runs_config(run_dir, tmp_path):
    """A run trained with checkpoint.dir elsewhere: its config.json says where the checkpoints are."""
    moved = tmp_path / "run"
    moved.mkdir()
    (moved / "config.json").write_text(json.dumps({"checkpoint": {"dir": str(run_dir / "checkpoints")}}))
    _, meta = load_for_inference(run_dir=moved)
    assert meta["source"] == str(run_dir / "checkpoints" / "step00000002")


def test_loading_errors_name_the_problem(run_dir, tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    cases = [
        (dict(run_dir=empty), "no checkpoint in"),
        (dict(run_dir=tmp_path / "missing"), "not a directory"),
        (dict(run_dir=run_dir, tag="step00000099"), r"--tag step00000099: no such checkpoint .*step00000001, step00000002"),
        (dict(weights=tmp_path / "none.safetensors"), "no such file"),
        (dict(), "exactly one of --run_dir"),
        (dict(run_dir=run_dir, weights=tmp_path / "x"), "exactly one of --run_dir"),
        (dict(weights=tmp_path / "x", tag="step00000001"), "does not apply to --weights"),
        (dict(run_dir=run_dir, device="tpu"), "--device 'tpu'"),
    ]
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    cases.append((dict(weights=garbage), "not a readable exported model"))
    # A run dir whose checkpoint folder has tags but no `latest` (a crash before the first complete save).
    partial = tmp_path / "partial_run"
    (partial / "checkpoints" / "step00000005").mkdir(parents=True)
    cases.append((dict(run_dir=partial), "no 'latest' file.*step00000005 can be loaded with --tag"))
    cases.append((dict(run_dir=partial, tag="step00000005"), "cannot read the checkpoint: FileNotFoundError"))
    # A checkpoint that lost one rank's ZeRO partition.
    shutil.copytree(run_dir / "checkpoints" / "step00000001", partial / "checkpoints" / "step00000001")
    (partial / "checkpoints" / "step00000001" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    cases.append((dict(run_dir=partial, tag="step00000001"), "Expected 2 of '\\*_optim_states.pt'.* found 1"))
    if not torch.cuda.is_available():
        cases.append((dict(run_dir=run_dir, device="cuda"), "no CUDA device"))
    for kwargs, match in cases:
        with pytest.raises(InferenceError, match=match):
            load_for_inference(**kwargs)


# ---------------------------------------------------------------------------------- generation

def test_generate_cli_writes_every_format_sheet_and_prompts_json(run_dir, tmp_path):
    out = tmp_path / "out"
    proc = cli("--run_dir", str(run_dir), "--prompts", *PROMPTS, "--num_frames", "5", "--batch_size", "2",
               "--scale", "2", "--fps", "5", "--formats", "mp4,gif,png", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"3 videos in {out}" in proc.stdout
    assert "3/3" in proc.stderr  # the progress bar counts prompts
    summary = json.loads((out / "prompts.json").read_text())
    assert [p["prompt"] for p in summary["prompts"]] == PROMPTS
    assert summary["model"]["tag"] == "step00000002" and summary["num_frames"] == 5 and summary["seed"] == 0
    for record in summary["prompts"]:
        files = record["files"]
        assert set(files) == {"mp4", "gif", "png"}
        assert files["mp4"].startswith(f"{record['index']:03d}_a-")
        assert decode(out / files["mp4"]).shape == (5, 64, 64, 3)
        with Image.open(out / files["gif"]) as gif:
            assert sum(1 for _ in ImageSequence.Iterator(gif)) == 5 and gif.info["duration"] == 200
        with Image.open(out / files["png"]) as strip:
            assert strip.size == (5 * 66 + 2, 66 + 2 + 12 * 1)  # 5 frames, one caption line
    gifs = [np.asarray(Image.open(out / r["files"]["gif"]).convert("RGB")) for r in summary["prompts"]]
    assert not np.array_equal(gifs[0], gifs[1])  # each prompt gets its own video
    sheet = np.asarray(Image.open(out / "sheet.png"))
    blank = [np.zeros((5, 32, 32, 3), np.uint8)] * 3
    assert sheet.shape == contact_sheet(blank, scale=2, captions=PROMPTS).shape


def test_a_prompts_video_does_not_depend_on_batch_size(weights):
    model, meta = load_for_inference(weights=weights)
    ids = encode_prompts(PROMPTS + ["a yellow circle moves right"], model.cfg.max_caption_tokens)
    alone = generate_videos(model, ids, num_frames=6, seed=5, batch_size=1, progress=False)
    together = generate_videos(model, ids, num_frames=6, seed=5, batch_size=4, progress=False)
    pairs = generate_videos(model, ids, num_frames=6, seed=5, batch_size=3, progress=False)
    assert alone.shape == (4, 6, 32, 32, 3)
    # Same noise per prompt: equal up to float rounding of differently shaped matmuls (one grey level).
    for other in (together, pairs):
        diff = np.abs(alone.astype(int) - other.astype(int))
        assert diff.max() <= 1 and diff.mean() < 1e-3, (diff.max(), diff.mean())
    reseeded = generate_videos(model, ids, num_frames=6, seed=6, batch_size=4, progress=False)
    assert np.abs(alone[:, 1:].astype(int) - reseeded[:, 1:].astype(int)).mean() > 0  # the seed matters


def test_weights_and_prompts_file_in_process(run_dir, weights, tmp_path):
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("a red circle moves left\n\n  a blue square moves up  \n", encoding="utf-8")
    a, b = tmp_path / "a", tmp_path / "b"
    generate_main(["--weights", str(weights), "--prompts_file", str(prompts_file), "--formats", "gif",
                   "--num_frames", "4", "--scale", "1", "--out", str(a), "--progress", "False"])
    assert sorted(p.name for p in a.iterdir()) == ["000_a-red-circle-moves-left.gif", "001_a-blue-square-moves-up.gif",
                                                   "prompts.json", "sheet.png"]
    # The checkpoint and its exported file generate the same videos.
    generate_main(["--run_dir", str(run_dir), "--prompts", PROMPTS[0], PROMPTS[1], "--formats", "gif",
                   "--num_frames", "4", "--scale", "1", "--out", str(b), "--progress", "False"])
    for name in ("000_a-red-circle-moves-left.gif", "001_a-blue-square-moves-up.gif"):
        frames_a = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(Image.open(a / name))]
        frames_b = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(Image.open(b / name))]
        np.testing.assert_array_equal(np.stack(frames_a), np.stack(frames_b))


def test_bad_input_is_one_line_and_nonzero(run_dir, weights, tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (tmp_path / "blank.txt").write_text("\n  \n", encoding="utf-8")
    w = ["--weights", str(weights)]
    cases = [
        (["--run_dir", str(empty), "--prompts", "a red circle"], "no checkpoint in"),
        (w + ["--prompts", "a red circle", "word " * 40], r"prompt 1: caption has \d+ tokens .*over max_caption_tokens=32"),
        (w + ["--prompts", "a red circle", "--num_frames", "999"], r"--num_frames 999: this model takes at most (\d+) frames \(max_frames=\1,"),
        (w + ["--prompts", "a red circle", "--formats", "mp4,webm"], "--formats: unknown format 'webm'; choose from mp4,gif,png"),
        (w, "give exactly one of --prompts"),
        (w + ["--prompts", "x", "--prompts_file", str(tmp_path / "blank.txt")], "give exactly one of --prompts"),
        (w + ["--prompts_file", str(tmp_path / "blank.txt")], "no prompts"),
        (w + ["--prompts_file", str(tmp_path / "missing.txt")], "cannot read it"),
        (w + ["--prompts", "x", "--batch_size", "0"], "--batch_size must be an integer >= 1"),
        (["--run_dir", str(run_dir), "--tag", "step9", "--prompts", "x"], "--tag step9: no such checkpoint"),
    ]
    for argv, match in cases:
        with pytest.raises(SystemExit) as exc:
            generate_main(argv + ["--out", str(tmp_path / "never")])
        message = str(exc.value.code)
        assert message.startswith("t2v-generate: error: ") and "\n" not in message, message
        assert re.search(match, message), (match, message)
    assert not (tmp_path / "never").exists()
    # Through the real entry points: exit code 1, the one line on stderr, nothing on stdout.
    for proc in (cli("--run_dir", str(empty), "--prompts", "a red circle"),
                 subprocess.run([sys.executable, str(REPO / "launch" / "generate.py"), "--weights", str(weights),
                                 "--prompts", "x", "--formats", "webm"], cwd=REPO, env=env(), capture_output=True,
                                text=True, timeout=300)):
        assert proc.returncode == 1 and proc.stdout == "", proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and "t2v-generate: error:" in proc.stderr, proc.stderr


@pytest.mark.parametrize("cmd", [[str(BIN / "t2v-generate")], [sys.executable, str(REPO / "launch" / "generate.py")]])
def test_help(cmd):
    proc = subprocess.run([*cmd, "--help"], cwd=REPO, env=dict(env(), PAGER="cat"), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr  # fire pages help to stdout on a terminal, writes it to stderr otherwise
    assert "--run_dir" in text and "--weights" in text and "--device" in text and "Args" not in text
