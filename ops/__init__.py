"""Fused frame + motion loss. `motion_frame_loss` is the one entry point the model calls."""
from ops.motion_loss import motion_frame_loss

__all__ = ["motion_frame_loss"]
