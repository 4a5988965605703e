"""Fused frame-level losses (frame, diff, first, motion). `motion_frame_loss` is the one entry point the model calls."""
from ops.motion_loss import motion_frame_loss
from ops.pairs import sample_motion_pairs
from ops.reference import FrameLosses

__all__ = ["FrameLosses", "motion_frame_loss", "sample_motion_pairs"]
