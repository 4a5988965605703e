"""Plain-PyTorch reference of the frame-level losses (the fused kernel must match it).

For predicted frames pred (F, P) and true frames target (F, P), P = 3*H*W, grouped into
samples by `frame_offsets` (B+1,), and motion pairs (N_pairs, 2) of global frame indices
(both frames of a pair belong to one sample):

  frame_loss[b]  = mean over the frames f of b and pixels p of  w[f,p] * (pred - target)^2
                   with w = 1 + |target[f] - target[f-1]| if motion_weighted and f is not the
                   first frame of its sample, else w = 1
  motion_loss[b] = - mean over the pairs (i, j) of b of  min(mean_p (pred_i - pred_j)^2, tau)
                   (0 for a sample with no pairs)

Both are returned per sample in `loss_dtype(pred.dtype)`: float32, or float64 for float64
predictions (so that gradcheck works). Autograd gives the gradient with respect to `pred`.
"""
from __future__ import annotations

import torch


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


def motion_frame_loss_reference(pred: torch.Tensor, target: torch.Tensor, frame_offsets: torch.Tensor,
                                pairs: torch.Tensor, *, motion_weighted: bool = False,
                                tau: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    num_samples = frame_offsets.numel() - 1
    F = pred.shape[0]
    acc = loss_dtype(pred.dtype)
    frame_offsets = frame_offsets.to(pred.device)
    sample_of_frame = frame_sample_ids(frame_offsets, F)
    counts = (frame_offsets[1:] - frame_offsets[:-1]).to(acc)

    err = (pred.to(acc) - target.to(acc)).pow(2)
    if motion_weighted:
        err = err * motion_weights(target, frame_offsets, acc)
    per_frame = err.mean(dim=1)
    frame_loss = torch.zeros(num_samples, device=pred.device, dtype=acc).index_add(0, sample_of_frame, per_frame)
    frame_loss = frame_loss / counts.clamp_min(1)

    motion_loss = torch.zeros(num_samples, device=pred.device, dtype=acc)
    if pairs.numel():
        pairs = pairs.to(pred.device)
        diff = (pred[pairs[:, 0]].to(acc) - pred[pairs[:, 1]].to(acc)).pow(2).mean(dim=1)
        capped = torch.clamp(diff, max=tau)
        sample_of_pair = sample_of_frame[pairs[:, 0]]
        n_pairs = torch.zeros_like(motion_loss).index_add(0, sample_of_pair, torch.ones_like(capped))
        motion_loss = -motion_loss.index_add(0, sample_of_pair, capped) / n_pairs.clamp_min(1)
    return frame_loss, motion_loss
