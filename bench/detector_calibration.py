"""Accuracy of the faithfulness detectors (t2v_dist.evaluation) on the synthetic generator's own clips.

    .venv/bin/python bench/detector_calibration.py [--clips 200] [--sizes 32 64] [--blurs 0 1.0] [--seconds 300]

For each frame size, background (plain, textured) and Gaussian blur (pixels; a stand-in for a model's
blurry output), it detects colour, shape and direction of single-object 16-frame clips and prints
the accuracy of each attribute, the misses and ms per video, as JSON lines. Cells run in order until
the time budget is spent (a cell in progress finishes).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from shards.synthetic import SyntheticConfig, make_clip
from t2v_dist.evaluation import detect
from t2v_dist.evaluation.detectors import _blur_matrix

ATTRIBUTES = ("colour", "shape", "direction")


def blurred(frames: np.ndarray, sigma: float) -> np.ndarray:
    if sigma == 0:
        return frames
    k = _blur_matrix(sigma, frames.shape[1])
    out = np.einsum("ij,tjkc,lk->tilc", k, frames.astype(np.float32), k, optimize=True)
    return np.clip(out, 0, 255).round().astype(np.uint8)


def cell(size: int, background: str, sigma: float, clips: int, seed: int) -> dict:
    config = SyntheticConfig(frames=16, size=size, two_shape_fraction=0.0,
                             textured_fraction=1.0 if background == "textured" else 0.0)
    hits = {a: 0 for a in ATTRIBUTES}
    misses = []
    clock = time.perf_counter()
    for i in range(clips):
        clip = make_clip(seed, i, config)
        found = detect(blurred(clip.frames, sigma))
        for a in ATTRIBUTES:
            truth, seen = getattr(clip.objects[0], a), getattr(found, a)
            hits[a] += truth == seen
            if truth != seen:
                misses.append([i, a, truth, seen])
    return {"size": size, "background": background, "blur_sigma": sigma, "clips": clips,
            "accuracy": {a: hits[a] / clips for a in ATTRIBUTES}, "misses": misses[:10],
            "ms_per_video": round(1000 * (time.perf_counter() - clock) / clips, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--blurs", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--seconds", type=float, default=300.0, help="time budget")
    args = parser.parse_args()
    start = time.perf_counter()
    for size in args.sizes:
        for background in ("plain", "textured"):
            for sigma in args.blurs:
                if time.perf_counter() - start > args.seconds:
                    print(json.dumps({"stopped": "time budget spent"}))
                    return
                print(json.dumps(cell(size, background, sigma, args.clips, args.seed)), flush=True)


if __name__ == "__main__":
    main()
