"""Video quality beyond the text: motion magnitude and teacher-forced next-frame error.

- `motion_magnitude`: mean |frame_t - frame_{t-1}| (on [0, 1]); generated over real is the motion
  ratio, near 0 when a model collapses to static videos, over 1 when it flickers.
- `teacher_forced`: the model predicts every frame of a real clip from its caption and the true
  (noised, as in training) earlier frames; per-frame MSE and PSNR (on [0, 1]) beside the
  copy-the-previous-frame baseline on the same frames. It runs the model's public pieces
  (`wte`, `wpe`, `noise_betas`, `encode_frames`, `blocks`, `ln_f`, `decode_frames`) the way its
  training forward does, one clip at a time, without the loss.
"""
from __future__ import annotations

import math
import tarfile

import numpy as np
import torch

from t2v_dist.data.decode import decode_caption, decode_frames_mp4, decode_frames_npy
from t2v_dist.data.records import SampleError
from t2v_dist.data.shardlist import expand_shards, local_path
from t2v_dist.model import frames_to_float
from t2v_dist.tokenizer import encode_caption


def motion_magnitude(videos: np.ndarray) -> float:
    """Mean absolute frame-to-frame change of uint8 videos (B, T, H, W, 3), on a [0, 1] scale."""
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.shape[1] < 2:
        raise ValueError(f"motion_magnitude needs uint8 (B, T >= 2, H, W, 3) videos, got shape {videos.shape}")
    return float(np.abs(np.diff(videos.astype(np.float32), axis=1)).mean() / 255.0)


def psnr_db(mse: float) -> float:
    """PSNR of an MSE on a [0, 1] scale, capped at 100 dB (a perfect match; JSON has no infinity)."""
    return -10.0 * math.log10(max(mse, 1e-10))


def read_val_clips(shards: str, image_size: int, num_frames: int, max_clips: int) -> list[tuple[str, np.ndarray]]:
    """Up to `max_clips` (caption, uint8 frames[:num_frames]) from local tar shards (a folder, glob or brace
    pattern), in shard order; samples that cannot be decoded or have under 2 frames are skipped."""
    clips: list[tuple[str, np.ndarray]] = []
    for url in expand_shards(shards, "val_shards"):
        path = local_path(url)
        if path is None:
            raise ValueError(f"val_shards: the evaluation reads local shards only, got {url!r}")
        samples: dict[str, dict[str, bytes]] = {}
        with tarfile.open(path) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if member.isfile() and ext in ("txt", "frames.npy", "mp4"):
                    samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
                if len(samples) > max_clips - len(clips):
                    break
        for members in samples.values():
            try:
                caption = decode_caption(members["txt"])
                frames = (decode_frames_npy(members["frames.npy"], image_size) if "frames.npy" in members
                          else decode_frames_mp4(members["mp4"], image_size))
            except (KeyError, SampleError):
                continue
            if len(frames) >= 2 and len(clips) < max_clips:
                clips.append((caption, frames[:num_frames]))
        if len(clips) >= max_clips:
            break
    return clips


@torch.no_grad()
def predicted_frames(model, token_ids: list[int], frames: np.ndarray, seed: int = 0) -> torch.Tensor:
    """The model's prediction of each frame of one clip (T, 3, H, W) in [-1, 1], teacher-forced: frame
    t+1 from the caption and the true frames 1..t, noised with the model's betas (noise from `seed`)."""
    device, dtype = model.wte.weight.device, model.wte.weight.dtype
    y = frames_to_float(torch.from_numpy(np.ascontiguousarray(frames))).to(device)
    T, n = len(y), len(token_ids)
    beta = model.noise_betas(torch.arange(T - 1, device=device))
    noise = torch.randn((T - 1, *y.shape[1:]), generator=torch.Generator(device=device).manual_seed(seed),
                        device=device)
    b = beta[:, None, None, None]
    tokens, _ = model.encode_frames(((1 - b) * y[:-1] + b * noise).to(dtype), beta)
    ids = torch.tensor(token_ids, device=device)
    x = torch.cat([model.wte(ids), tokens.to(dtype)]) + model.wpe(torch.arange(n + T - 1, device=device))
    x = x[None]
    mask = torch.ones(n + T - 1, n + T - 1, dtype=torch.bool, device=device).tril()[None, None]
    for block in model.blocks:
        x = block.forward_cached(x, mask, None)
    return model.decode_frames(model.ln_f(x)[0, n - 1:]).float()   # from x_n, h_1 .. h_{T-1}


def teacher_forced(model, tokenizer, clips: list[tuple[str, np.ndarray]], seed: int = 0) -> dict:
    """Per-frame MSE / PSNR (on [0, 1]) of teacher-forced predictions of `clips` [(caption, uint8 T x H x W x 3)].

    `mse`/`psnr_db` cover frames 2..T (each predicted from the true frames before it), beside
    `copy_previous_*` (frame t predicted as frame t-1); `first_frame_mse` is frame 1, from the text alone."""
    if not clips:
        raise ValueError("teacher_forced needs at least one clip")
    model_err, copy_err, first_err = [], [], []
    for i, (caption, frames) in enumerate(clips):
        ids = encode_caption(tokenizer, caption, model.cfg.max_caption_tokens)
        truth = (frames_to_float(torch.from_numpy(np.ascontiguousarray(frames))) + 1) / 2
        pred = (predicted_frames(model, ids, frames, seed + i).cpu() + 1) / 2
        per_frame = (pred - truth).pow(2).flatten(1).mean(1)
        first_err.append(float(per_frame[0]))
        model_err.append(per_frame[1:])
        copy_err.append((truth[1:] - truth[:-1]).pow(2).flatten(1).mean(1))
    mse, copy = float(torch.cat(model_err).mean()), float(torch.cat(copy_err).mean())
    return {"clips": len(clips), "frames": int(sum(len(e) for e in model_err)), "mse": mse, "psnr_db": psnr_db(mse),
            "copy_previous_mse": copy, "copy_previous_psnr_db": psnr_db(copy),
            "first_frame_mse": float(np.mean(first_err)), "first_frame_psnr_db": psnr_db(float(np.mean(first_err)))}
