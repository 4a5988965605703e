"""Plain-PyTorch reference of the frame-level losses (the fused kernel must match it).

For predicted frames pred (F, P) and true frames target (F, P), P = 3*H*W, grouped into
samples by `frame_offsets` (B+1,), and motion pairs (N_pairs, 2) of global frame indices
(both frames of a pair belong to one sample), four per-sample terms:

  frame[b]  = mean over the frames f of b and pixels p of  w[f,p] * (pred - target)^2
              with w = 1 + |target[f] - target[f-1]| if motion_weighted and f is not the
              first frame of its sample, else w = 1
  diff[b]   = mean over the frames f of b but its first, and pixels p, of
              |(pred[f] - pred[f-1]) - (target[f] - target[f-1])|      (0 for a sample of < 2 frames)
  first[b]  = mean over pixels p of |pred[f0] - target[f0]|, f0 the first frame of b
              (the frame predicted from the text alone; 0 for an empty sample)
  motion[b] = - mean over the pairs (i, j) of b of  min(mean_p (pred_i - pred_j)^2, tau)
              (0 for a sample with no pairs)

All are returned per sample in `loss_dtype(pred.dtype)`: float32, or float64 for float64
predictions (so that gradcheck works). Autograd gives the gradient with respect to `pred`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class FrameLosses(NamedTuple):
    """Per-sample (B,) terms of ops.motion_frame_loss, unweighted; see the module docstring."""
    frame: torch.Tensor
    diff: torch.Tensor
    first: torch.Tensor
    motion: torch.Tensor


def loss_dtype(pred_dtype: torch.dtype) -> torch.dtype:
    """Accumulation and output dtype: at least float32, float64 for float64 inputs."""
    return torch.promote_types(pred_dtype, torch.float32)


def frame_sample_ids(frame_offsets: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Sample index of every frame, from the (B+1,) offsets."""
    counts = frame_offsets[1:] - frame_offsets[:-1]
    return torch.repeat_interleave(torch.arange(len(counts), device=frame_offsets.device), counts,
                                   output_size=num_frames)


def previous_frame_ids(frame_offsets: torch.Tensor, sample_of_frame: torch.Tensor) -> torch.Tensor:
    """Index of each frame's predecessor in its sample; a sample's first frame points at itself."""
    frames = torch.arange(sample_of_frame.numel(), device=sample_of_frame.device)
    is_first = frames == frame_offsets[sample_of_frame]
    return torch.where(is_first, frames, frames - 1)


def motion_weights(target: torch.Tensor, frame_offsets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """1 + |y_t - y_{t-1}| per pixel; 1 on the first frame of each sample (its own 'predecessor')."""
    prev = previous_frame_ids(frame_offsets, frame_sample_ids(frame_offsets, target.shape[0]))
    target = target.to(dtype)
    return 1 + (target - target[prev]).abs()


def per_sample_mean(per_frame: torch.Tensor, sample_of_frame: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Sum of per-frame values over each sample's frames, divided by counts (0 where a count is 0)."""
    total = torch.zeros(counts.numel(), device=per_frame.device, dtype=per_frame.dtype)
    return total.index_add(0, sample_of_frame, per_frame) / counts.clamp_min(1)


def motion_frame_loss_reference(pred: torch.Tensor, target: torch.Tensor, frame_offsets: torch.Tensor,
                                pairs: torch.Tensor, *, motion_weighted: bool = False,
                                tau: float = 0.1) -> FrameLosses:
    num_samples = frame_offsets.numel() - 1
    F = pred.shape[0]
    acc = loss_dtype(pred.dtype)
    frame_offsets = frame_offsets.to(pred.device)
    sample_of_frame = frame_sample_ids(frame_offsets, F)
    prev = previous_frame_ids(frame_offsets, sample_of_frame)
    is_first = prev == torch.arange(F, device=pred.device)
    counts = (frame_offsets[1:] - frame_offsets[:-1]).to(acc)
    p, t = pred.to(acc), target.to(acc)

    err = (p - t).pow(2)
    if motion_weighted:
        err = err * motion_weights(target, frame_offsets, acc)
    frame = per_sample_mean(err.mean(dim=1), sample_of_frame, counts)
    # (p[f] - p[prev]) - (t[f] - t[prev]) is exactly 0 on a first frame (prev == f): no mask needed.
    diff = per_sample_mean(((p - p[prev]) - (t - t[prev])).abs().mean(dim=1), sample_of_frame, counts - 1)
    first_abs = (p - t).abs().mean(dim=1) * is_first
    first = torch.zeros(num_samples, device=pred.device, dtype=acc).index_add(0, sample_of_frame, first_abs)

    motion = torch.zeros(num_samples, device=pred.device, dtype=acc)
    if pairs.numel():
        pairs = pairs.to(pred.device)
        dist = (p[pairs[:, 0]] - p[pairs[:, 1]]).pow(2).mean(dim=1)
        capped = torch.clamp(dist, max=tau)
        sample_of_pair = sample_of_frame[pairs[:, 0]]
        n_pairs = torch.zeros_like(motion).index_add(0, sample_of_pair, torch.ones_like(capped))
        motion = -motion.index_add(0, sample_of_pair, capped) / n_pairs.clamp_min(1)
    return FrameLosses(frame, diff, first, motion)
