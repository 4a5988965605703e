"""`t2v-eval` end to end: a real (freshly initialised) model, exported the way launch/export.py writes it,
scored by the text-faithfulness evaluation; the table, eval.json, sheet.png and the bad-input errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import save_file

from t2v_dist.checkpoint import TIED_METADATA_KEY
from t2v_dist.config import Config
from t2v_dist.eval_cli import format_report, main as eval_main
from t2v_dist.model import T2VModel

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.timeout(600)


def env() -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    subprocess.run([sys.executable, "-m", "shards.cli", "synthetic", "--out", str(out), "--num_clips", "24",
                    "--frames", "8", "--size", "32", "--seed", "3", "--samples_per_shard", "12",
                    "--val_fraction", "0.5", "--progress", "False"], check=True, cwd=REPO, env=env())
    return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory, shards) -> Path:
    """An untrained demo-config model in the exported-file format (weights + config metadata)."""
    cfg = Config.load(REPO / "launch" / "configs" / "demo.yaml",
                      [f"--data.val_shards={shards}/val-*.tar", "--eval.num_frames=6"])
    model = T2VModel(cfg.model)
    path = tmp_path_factory.mktemp("export") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"config": json.dumps(cfg.to_dict()), "step": "0", "tag": "init", TIED_METADATA_KEY: "{}"})
    return path


def test_eval_cli_prints_the_table_and_writes_eval_json(weights, tmp_path):
    out = tmp_path / "ev"
    proc = subprocess.run([str(BIN / "t2v-eval"), "--weights", str(weights), "--seeds_per_prompt", "1",
                           "--val_clips", "2", "--out", str(out)], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "eval.json").read_text())
    faith = report["faithfulness"]
    assert faith["n"] == 16 and faith["seen"]["n"] == 8 and faith["unseen"]["n"] == 8
    assert len(faith["detections"]) == 16 and len(report["specs"]) == 16
    assert report["settings"]["num_frames"] == 6  # from the run's config (eval.num_frames)
    # The detectors are calibrated on the generator's clips; the floors are reported beside the score.
    assert min(report["floors"]["ground_truth"][a] for a in ("colour", "shape", "direction")) >= 0.9
    assert report["floors"]["chance"]["colour"] == pytest.approx(1 / 8)
    # An untrained model: all three attributes right is about as rare as chance, far from the ground truth.
    assert faith["accuracy"]["all"] <= 0.25
    assert report["motion"]["real"] > 0 and report["motion"]["ratio"] >= 0
    tf = report["teacher_forced"]
    assert tf["clips"] == 2 and tf["copy_previous_psnr_db"] > tf["psnr_db"]  # untrained: worse than copying
    assert report["model"]["source"] == str(weights) and report["model"]["step"] == 0
    # The printed table is the report's.
    assert format_report(report) in proc.stdout
    for row in ("generated", "seen combinations", "unseen combinations", "floor: chance",
                "floor: static first frame", "floor: shuffled captions", "motion |dframe|", "copy-previous baseline"):
        assert row in proc.stdout, row
    with Image.open(out / "sheet.png") as sheet:
        assert sheet.size[0] == 6 * 66 + 2 and sheet.size[1] > 16 * 66  # 16 rows of 6 frames, captions under


def test_same_seed_same_scores_and_holdout_off(weights, tmp_path):
    base = ["--weights", str(weights), "--seeds_per_prompt", "1", "--val_shards", "", "--num_frames", "4"]
    eval_main(base + ["--out", str(tmp_path / "a")])
    eval_main(base + ["--out", str(tmp_path / "b"), "--holdout", "False", "--batch_size", "5"])
    a = json.loads((tmp_path / "a" / "eval.json").read_text())
    b = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert "teacher_forced" not in a  # --val_shards '' skips it
    assert b["faithfulness"]["unseen"]["n"] == 0 and b["faithfulness"]["seen"]["n"] == 16
    # The videos do not depend on --batch_size: the same detections.
    assert a["faithfulness"]["detections"] == b["faithfulness"]["detections"]


def test_bad_input_is_one_line_and_nonzero(weights, tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    cases = [
        (["--run_dir", str(empty)], "no checkpoint in"),
        (["--weights", str(tmp_path / "missing.safetensors")], "no such file"),
        (["--weights", str(weights), "--num_frames", "1"], "--num_frames must be an integer >= 2"),
        (["--weights", str(weights), "--num_frames", "999"], "--num_frames 999: this model takes at most"),
        (["--weights", str(weights), "--seeds_per_prompt", "0"], "--seeds_per_prompt must be an integer >= 1"),
    ]
    for argv, match in cases:
        with pytest.raises(SystemExit) as exc:
            eval_main(argv + ["--out", str(tmp_path / "never")])
        message = str(exc.value.code)
        assert message.startswith("t2v-eval: error: ") and "\n" not in message and match in message, message
    assert not (tmp_path / "never").exists()
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "eval.py"), "--run_dir", str(empty)], cwd=REPO,
                          env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stdout == "" and proc.stderr.strip().count("\n") == 0, proc.stderr


@pytest.mark.parametrize("cmd", [[str(BIN / "t2v-eval")], [sys.executable, str(REPO / "launch" / "eval.py")]])
def test_help(cmd):
    proc = subprocess.run([*cmd, "--help"], cwd=REPO, env=dict(env(), PAGER="cat"), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr  # fire pages help to stdout on a terminal, writes it to stderr otherwise
    for flag in ("--run_dir", "--weights", "--tag", "--seeds_per_prompt", "--val_shards", "--device"):
        assert flag in text, flag
