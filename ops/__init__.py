"""Fused frame + motion loss. `motion_frame_loss` is the one entry point the model calls."""
from ops.motion_loss import motion_frame_loss
from ops.pairs import sample_motion_pairs

__all__ = ["motion_frame_loss", "sample_motion_pairs"]
