"""Dispatch for the frame-level losses (frame, diff, first, motion): the Triton kernel on CUDA, the PyTorch reference elsewhere.

backend="auto" picks Triton for CUDA tensors when Triton imports, the reference otherwise (CPU tensors,
no Triton, or a target that needs its own gradient, which only the reference gives). The environment
variable T2V_MOTION_LOSS_BACKEND (auto|triton|reference) applies when the call says "auto". Forcing
"triton" on CPU tensors needs TRITON_INTERPRET=1; it raises otherwise. Each choice is logged once.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from types import ModuleType

import torch

from ops.reference import FrameLosses, motion_frame_loss_reference
from ops.validation import check_frames, check_loss_indices

BACKENDS = ("auto", "triton", "reference")
BACKEND_ENV = "T2V_MOTION_LOSS_BACKEND"

log = logging.getLogger(__name__)
_logged: set[tuple[str, str]] = set()


@functools.cache
def load_triton_kernel() -> tuple[ModuleType | None, str]:
    """(ops.triton_kernel, "") or (None, why it does not import). Imported on first need: Triton is optional,
    and a process that never runs the kernel does not pay for importing it."""
    try:
        from ops import triton_kernel
    except Exception as exc:  # not only ImportError: a broken Triton/CUDA install fails in many ways
        return None, f"{type(exc).__name__}: {exc}"
    return triton_kernel, ""


def _log_choice(backend: str, reason: str) -> None:
    if (backend, reason) not in _logged:
        _logged.add((backend, reason))
        log.info("motion_frame_loss: %s backend (%s)", backend, reason)


def choose_backend(requested: str, pred: torch.Tensor, target: torch.Tensor) -> str:
    """'triton' or 'reference' for this call; raises if 'triton' is forced where it cannot run."""
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {requested!r}")
    source = "argument"
    if requested == "auto" and os.environ.get(BACKEND_ENV, "auto") != "auto":
        requested, source = os.environ[BACKEND_ENV], f"${BACKEND_ENV}"
        if requested not in BACKENDS:
            raise ValueError(f"{BACKEND_ENV} must be one of {BACKENDS}, got {requested!r}")

    if requested == "reference":
        _log_choice("reference", f"forced by {source}")
        return "reference"
    if requested == "triton":
        triton_kernel, import_error = load_triton_kernel()
        if triton_kernel is None:
            raise RuntimeError(f"backend 'triton' forced by {source} but Triton does not import: {import_error}")
        if pred.device.type != "cuda" and not triton_kernel.interpreter_enabled():
            raise RuntimeError(f"backend 'triton' forced by {source} needs CUDA tensors (got {pred.device}) "
                               "or TRITON_INTERPRET=1 for the CPU interpreter")
        if target.requires_grad:
            raise RuntimeError(f"backend 'triton' forced by {source} gives no gradient for target, "
                               "which requires grad; detach target or use the reference")
        _log_choice("triton", f"forced by {source} on {pred.device.type}")
        return "triton"

    if pred.device.type != "cuda":
        _log_choice("reference", f"auto: {pred.device.type} tensors")
        return "reference"
    triton_kernel, import_error = load_triton_kernel()
    if triton_kernel is None:
        _log_choice("reference", f"auto: Triton does not import ({import_error})")
        return "reference"
    if target.requires_grad:
        _log_choice("reference", "auto: target requires grad")
        return "reference"
    _log_choice("triton", "auto: cuda tensors")
    return "triton"


def motion_frame_loss(pred: torch.Tensor, target: torch.Tensor, frame_offsets: torch.Tensor,
                      pairs: torch.Tensor, *, motion_weighted: bool = False, tau: float = 0.1,
                      backend: str = "auto") -> FrameLosses:
    """Per-sample FrameLosses(frame, diff, first, motion), each (B,) float32 (float64 for float64 pred) and
    unweighted; see ops/reference.py for the math.

    pred, target: (F, 3*H*W); frame_offsets: (B+1,) int; pairs: (N_pairs, 2) int global frame indices,
    both frames of a pair in one sample (see ops.sample_motion_pairs). Index tensors may live on the CPU, which
    spares the one host sync their checks cost on CUDA.
    """
    check_frames(pred, target)
    check_loss_indices(frame_offsets, pairs, pred.shape[0])
    if not isinstance(motion_weighted, bool):
        raise ValueError(f"motion_weighted must be a bool, got {motion_weighted!r}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")

    if choose_backend(backend, pred, target) == "triton":
        triton_kernel, _ = load_triton_kernel()
        return triton_kernel.motion_frame_loss_triton(pred, target, frame_offsets, pairs,
                                                      motion_weighted=motion_weighted, tau=tau)
    return motion_frame_loss_reference(pred, target, frame_offsets, pairs, motion_weighted=motion_weighted, tau=tau)
