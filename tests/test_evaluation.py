"""The faithfulness evaluation: detector calibration on the generator's clips and on noise, the prompts,
the floors, motion and teacher-forced error with a real tiny model, the trainer's hook and its gauges."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from prom_server import free_port
from shards.synthetic import COLOURS, DIRECTIONS, HELD_OUT_COMBOS, SHAPES, SyntheticConfig, make_clip
from t2v_dist.config import Config
from t2v_dist.evaluation import (CHANCE, SEEN_COMBOS, detect, evaluate_at_step, evaluate_model, faithfulness_prompts,
                                 floors, generate_for_specs, motion_magnitude, read_val_clips, reference_clips,
                                 score_videos, teacher_forced)
from t2v_dist.evaluation.detectors import NONE, STATIC, _blur_matrix
from t2v_dist.evaluation.video_metrics import predicted_frames
from t2v_dist.metrics import Metrics
from t2v_dist.model import ModelConfig, T2VModel
from t2v_dist.tokenizer import encode_caption, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
ATTRIBUTES = ("colour", "shape", "direction")


def _accuracy(clips, videos=None) -> dict:
    videos = [c.frames for c in clips] if videos is None else videos
    found = [detect(v) for v in videos]
    return {a: np.mean([getattr(d, a) == getattr(c.objects[0], a) for d, c in zip(found, clips)]) for a in ATTRIBUTES}


def _blurred(frames: np.ndarray, sigma: float) -> np.ndarray:
    k = _blur_matrix(sigma, frames.shape[1])
    out = np.einsum("ij,tjkc,lk->tilc", k, frames.astype(np.float32), k, optimize=True)
    return np.clip(out, 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("size, clips", [(32, 100), pytest.param(64, 40, marks=pytest.mark.slow)])
@pytest.mark.parametrize("background", ["plain", "textured"])
def test_detectors_read_the_generators_clips(size, clips, background):
    """Calibration: >= 98% on every attribute, single-object clips of 16 frames."""
    config = SyntheticConfig(frames=16, size=size, two_shape_fraction=0.0,
                             textured_fraction=1.0 if background == "textured" else 0.0)
    accuracy = _accuracy([make_clip(21, i, config) for i in range(clips)])
    assert min(accuracy.values()) >= 0.98, accuracy


def test_detectors_survive_blur():
    """A model's videos are blurry: a Gaussian blur of 1 pixel on 32x32 clips still reads >= 95%."""
    config = SyntheticConfig(frames=16, size=32, two_shape_fraction=0.0)
    clips = [make_clip(22, i, config) for i in range(60)]
    accuracy = _accuracy(clips, [_blurred(c.frames, 1.0) for c in clips])
    assert min(accuracy.values()) >= 0.95, accuracy


@pytest.mark.parametrize("size, seeds", [(32, 4), pytest.param(64, 2, marks=pytest.mark.slow)])
def test_noise_videos_score_at_chance(size, seeds):
    """Random noise carries no attribute: against prompts that cover the vocabulary evenly, no accuracy
    may exceed chance by more than ~3 standard errors."""
    specs = faithfulness_prompts(seeds_per_prompt=seeds)
    noise = np.random.default_rng(size).integers(0, 256, size=(len(specs), 16, size, size, 3), dtype=np.uint8)
    accuracy = score_videos(noise, specs)["accuracy"]
    for attribute in ATTRIBUTES:
        tolerance = 3 * np.sqrt(CHANCE[attribute] * (1 - CHANCE[attribute]) / len(specs))
        assert accuracy[attribute] <= CHANCE[attribute] + tolerance, (attribute, accuracy)
    assert accuracy["all"] <= 0.05, accuracy


def test_a_static_or_empty_video():
    clip = make_clip(3, 0, SyntheticConfig(two_shape_fraction=0.0))
    (obj,) = clip.objects
    held = detect(np.repeat(clip.frames[:1], 16, axis=0))
    assert (held.colour, held.shape, held.direction) == (obj.colour, obj.shape, STATIC)
    blank = detect(np.full((8, 32, 32, 3), 40, np.uint8))
    assert (blank.colour, blank.shape, blank.direction, blank.frames_found) == (NONE, NONE, STATIC, 0)
    with pytest.raises(ValueError, match="video"):
        detect(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="video"):
        detect(np.zeros((4, 32, 16, 3), np.uint8))


def test_prompts_cover_the_vocabulary_seen_and_unseen():
    specs = faithfulness_prompts(seeds_per_prompt=2)
    assert len(specs) == 32 and [s.seed for s in specs] == [0] * 16 + [1] * 16
    for seen, combos in ((True, SEEN_COMBOS), (False, HELD_OUT_COMBOS)):
        half = [s for s in specs if s.seen is seen and s.seed == 0]
        assert [(s.colour, s.shape, s.direction) for s in half] == list(combos)
        assert {s.colour for s in half} == set(COLOURS) and {s.direction for s in half} == set(DIRECTIONS)
        assert {s.shape for s in half} == set(SHAPES)
    assert not set(SEEN_COMBOS) & set(HELD_OUT_COMBOS)
    assert specs[0].caption == "a red square moves up and to the right"
    assert all(s.seen for s in faithfulness_prompts(1, holdout=False))
    with pytest.raises(ValueError, match="seeds_per_prompt"):
        faithfulness_prompts(0)


def test_scores_and_floors_on_reference_clips():
    specs = faithfulness_prompts(seeds_per_prompt=2)
    reference = reference_clips(specs, num_frames=16, size=32)
    scores = score_videos(reference, specs, details=True)
    assert scores["accuracy"] == {"colour": 1.0, "shape": 1.0, "direction": 1.0, "all": 1.0}
    assert scores["seen"]["n"] == scores["unseen"]["n"] == 16 and len(scores["detections"]) == 32
    floor = floors(reference, specs, reference)
    assert floor["chance"]["all"] == pytest.approx(1 / 192)
    assert floor["ground_truth"]["all"] == 1.0
    # the right object held still: colour and shape right, direction never
    assert floor["static_first_frame"]["colour"] == floor["static_first_frame"]["shape"] == 1.0
    assert floor["static_first_frame"]["direction"] == 0.0
    # perfect videos against other prompts' captions: every combination differs, each half names each value once
    assert floor["shuffled_captions"]["all"] == 0.0 and floor["shuffled_captions"]["colour"] == 0.0
    with pytest.raises(ValueError, match="one .* video per spec"):
        score_videos(reference[:3], specs)


def test_motion_magnitude():
    specs = faithfulness_prompts(1)
    moving = reference_clips(specs, 16, 32)
    still = np.repeat(moving[:, :1], 16, axis=1)
    assert motion_magnitude(still) == 0.0 < motion_magnitude(moving) < 0.1
    with pytest.raises(ValueError, match="motion_magnitude"):
        motion_magnitude(moving[0])


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn")
    subprocess.run([sys.executable, "-m", "shards.cli", "synthetic", "--out", str(out), "--num_clips", "120",
                    "--frames", "16", "--size", "32", "--seed", "9", "--samples_per_shard", "60", "--val_fraction",
                    "0.2", "--holdout", "True", "--textured_fraction", "0", "--two_shape_fraction", "0",
                    "--progress", "False"], check=True, cwd=REPO, capture_output=True)
    return out


@pytest.fixture(scope="module")
def model() -> T2VModel:
    torch.manual_seed(0)
    return T2VModel(ModelConfig.from_preset("tiny", max_frames=16)).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_teacher_forced_first_frame_is_the_generated_one(model, tokenizer, shards):
    clips = read_val_clips(str(shards / "val-*.tar"), 32, 16, 4)
    assert len(clips) == 4 and all(frames.shape == (16, 32, 32, 3) for _, frames in clips)
    caption, frames = clips[0]
    ids = encode_caption(tokenizer, caption, model.cfg.max_caption_tokens)
    predicted = predicted_frames(model, ids, frames)
    generated = model.generate([ids], num_frames=2, as_float=True)[0]
    assert predicted.shape == (16, 3, 32, 32)
    torch.testing.assert_close(predicted[0], generated[0])   # frame 1 comes from the text alone
    assert not torch.allclose(predicted[1], generated[1])     # frame 2 from the TRUE frame 1, not the generated one
    report = teacher_forced(model, tokenizer, clips)
    assert report["clips"] == 4 and report["frames"] == 4 * 15
    # an untrained model is far worse than copying the previous frame (these clips change little per frame)
    assert report["copy_previous_psnr_db"] > report["psnr_db"] + 5
    assert report["psnr_db"] == pytest.approx(-10 * np.log10(report["mse"]))


def test_teacher_forcing_replays_a_noise_free_generation(tokenizer):
    """Without noise (slope 0), feeding a model its own generated video predicts that video again."""
    torch.manual_seed(1)
    model = T2VModel(ModelConfig.from_preset("tiny", max_frames=16, noise_slope=0.0)).eval()
    ids = encode_caption(tokenizer, "a red circle moves left", model.cfg.max_caption_tokens)
    video = model.generate([ids], num_frames=8)[0].numpy()
    predicted = predicted_frames(model, ids, video)
    replay = (predicted + 1) * 127.5
    assert (replay - torch.from_numpy(video).permute(0, 3, 1, 2).float()).abs().max() < 3.0


def test_evaluate_model_report(model, tokenizer, shards):
    report = evaluate_model(model, tokenizer, num_frames=16, seeds_per_prompt=1, batch_size=8,
                            val_shards=str(shards / "val-*.tar"), val_clips=3, details=True)
    json.dumps(report, allow_nan=False)
    assert report["faithfulness"]["n"] == 16 and len(report["specs"]) == 16
    assert set(report["floors"]) == {"chance", "static_first_frame", "shuffled_captions", "ground_truth"}
    assert report["floors"]["ground_truth"]["all"] == 1.0
    motion = report["motion"]
    assert motion["ratio"] == pytest.approx(motion["generated"] / motion["real"])
    assert report["teacher_forced"]["clips"] == 3
    # a video depends on its prompt and seed only, not on the batch it was generated in
    specs = faithfulness_prompts(1)
    a = generate_for_specs(model, tokenizer, specs[:6], 4, batch_size=6)
    b = generate_for_specs(model, tokenizer, specs[:6], 4, batch_size=4)
    assert np.abs(a.astype(int) - b).max() <= 1   # batched matmuls may round a pixel the other way
    with pytest.raises(ValueError, match="videos"):
        evaluate_model(model, tokenizer, seeds_per_prompt=1, videos=a)


def test_trainer_hook_writes_eval_json_and_sets_the_gauges(model, shards, tmp_path):
    cfg = Config()
    cfg.data.val_shards = str(shards / "val-*.tar")
    cfg.eval.faithfulness_seeds, cfg.eval.faithfulness_val_clips = 1, 2
    report = evaluate_at_step(model, cfg, tmp_path / "step_000010")
    assert json.loads((tmp_path / "step_000010" / "eval.json").read_text()) == json.loads(json.dumps(report))
    assert report["teacher_forced"]["clips"] == 2
    cfg.data.val_shards = "pipe:cat nothing.tar"
    assert "local shards" in evaluate_at_step(model, cfg, tmp_path / "b")["teacher_forced"]["error"]

    metrics = Metrics(enabled=True, port=free_port(), node="n1")
    try:
        metrics.observe_eval(report)
        text = urllib.request.urlopen(metrics.url, timeout=10).read().decode()
    finally:
        metrics.close()
    unseen = report["faithfulness"]["unseen"]["colour"]
    assert f't2v_eval_accuracy_ratio{{attribute="colour",node="n1",rank="0",split="unseen"}} {unseen}' in text
    floor = 't2v_eval_floor_accuracy_ratio{attribute="direction",floor="static_first_frame",node="n1",rank="0"}'
    assert f"{floor} 0.0" in text
    assert f't2v_eval_motion_ratio{{node="n1",rank="0"}} {report["motion"]["ratio"]}' in text
    assert 't2v_eval_psnr_db{node="n1",predictor="copy_previous",rank="0"}' in text
