"""Fused frame-level losses in Triton: one pass over pred/target forward, one write of grad_pred backward.

Forward, one launch of F + N_pairs programs:
  program f < F        : per_frame[f] = (mean_p w * (pred[f] - target[f])^2,                   frame term
                                         mean_p |(pred[f] - pred[f-1]) - (target[f] - target[f-1])|,  diff term
                                         mean_p |pred[f] - target[f]|)                          first-frame term
                         with f-1 := f on a sample's first frame (so w = 1 and the diff is 0 there)
  program F + k        : pair_dist[k] = mean_p (pred[i_k,p] - pred[j_k,p])^2, uncapped
then a tiny per-sample reduction (B values) in PyTorch. No (N_pairs, P) tensor is ever built.

Backward, one launch over (frame, pixel block): frame-major, so no atomics and a deterministic result.
Each program writes its block of grad_pred once:
  grad[f] = a_f * w * (pred[f] - target[f]) + c_f * sign(pred[f] - target[f])
          + d_f * sign(e_f) - d_{f+1} * sign(e_{f+1})        e_f = (pred[f] - pred[f-1]) - (target[f] - target[f-1])
          + sum over the pairs touching f of c_k * (pred[f] - pred[partner])
with per-frame coefficients a (frame), c (first frames only), d (0 on first frames, and d_{f+1} = 0 when f
ends its sample), and the pairs touching f from a CSR built from `pairs` (duplicates and shared frames just
appear several times). Backward saves pred, target (the frame and diff terms need both) and the N_pairs
uncapped distances (to know where the cap tau is active); nothing of size N_pairs * P.

The math is the one of ops/reference.py; outputs are float32 (float64 for float64 pred).
TRITON_INTERPRET=1 runs the kernels on the CPU through Triton's interpreter (how the tests run them). Triton
reads it when `triton` is first imported, because triton.language's own helpers (tl.zeros, tl.sum) are
jitted then: set it before anything in the process imports triton.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable
from triton.runtime.interpreter import InterpretedFunction

from ops.reference import FrameLosses, frame_sample_ids, loss_dtype, per_sample_mean, previous_frame_ids

DEFAULT_BLOCK = 1024
DEFAULT_NUM_WARPS = 4


def interpreter_enabled() -> bool:
    """Whether this process's Triton runs kernels in the interpreter (decided when triton was imported)."""
    return isinstance(tl.zeros, InterpretedFunction)


@triton.jit
def _forward_kernel(pred_ptr, target_ptr, prev_frame_ptr, pairs_ptr, per_frame_ptr, pair_dist_ptr,
                    num_frames, P, pred_stride, target_stride,
                    MOTION_WEIGHTED: tl.constexpr, BLOCK: tl.constexpr):
    """per_frame is (F, 3): frame, diff and first-frame sums over pixels / P; pair_dist is (N_pairs,)."""
    pid = tl.program_id(0)
    acc_dtype = per_frame_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=acc_dtype)
    if pid < num_frames:
        f = pid.to(tl.int64)
        prev = tl.load(prev_frame_ptr + f)          # == f on a sample's first frame: w == 1, diff == 0 there
        acc_diff = tl.zeros([BLOCK], dtype=acc_dtype)
        acc_abs = tl.zeros([BLOCK], dtype=acc_dtype)
        for start in range(0, P, BLOCK):
            idx = start + cols
            mask = idx < P
            p = tl.load(pred_ptr + f * pred_stride + idx, mask=mask, other=0.0).to(acc_dtype)
            t = tl.load(target_ptr + f * target_stride + idx, mask=mask, other=0.0).to(acc_dtype)
            p_prev = tl.load(pred_ptr + prev * pred_stride + idx, mask=mask, other=0.0).to(acc_dtype)
            t_prev = tl.load(target_ptr + prev * target_stride + idx, mask=mask, other=0.0).to(acc_dtype)
            err = (p - t) * (p - t)
            if MOTION_WEIGHTED:
                err = err * (1.0 + tl.abs(t - t_prev))
            acc += err
            acc_diff += tl.abs((p - p_prev) - (t - t_prev))
            acc_abs += tl.abs(p - t)
        tl.store(per_frame_ptr + 3 * f, tl.sum(acc, axis=0) / P)
        tl.store(per_frame_ptr + 3 * f + 1, tl.sum(acc_diff, axis=0) / P)
        tl.store(per_frame_ptr + 3 * f + 2, tl.sum(acc_abs, axis=0) / P)
    else:
        k = (pid - num_frames).to(tl.int64)
        i = tl.load(pairs_ptr + 2 * k)
        j = tl.load(pairs_ptr + 2 * k + 1)
        for start in range(0, P, BLOCK):
            idx = start + cols
            mask = idx < P
            pi = tl.load(pred_ptr + i * pred_stride + idx, mask=mask, other=0.0).to(acc_dtype)
            pj = tl.load(pred_ptr + j * pred_stride + idx, mask=mask, other=0.0).to(acc_dtype)
            acc += (pi - pj) * (pi - pj)
        tl.store(pair_dist_ptr + k, tl.sum(acc, axis=0) / P)


@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))   # sign(0) = 0, as torch's abs backward


@triton.jit
def _backward_kernel(pred_ptr, target_ptr, prev_frame_ptr, next_frame_ptr, coef_ptr, incident_start_ptr,
                     partner_ptr, partner_coef_ptr, grad_ptr, P, pred_stride, target_stride, grad_stride,
                     MOTION_WEIGHTED: tl.constexpr, BLOCK: tl.constexpr):
    """coef is (F, 4): frame a_f, first-frame c_f, diff d_f, and the next frame's diff d_{f+1} (0 at a sample's end)."""
    f = tl.program_id(0).to(tl.int64)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < P
    acc_dtype = coef_ptr.dtype.element_ty
    prev = tl.load(prev_frame_ptr + f)
    nxt = tl.load(next_frame_ptr + f)               # == f at a sample's end (its coefficient is 0 then)
    p = tl.load(pred_ptr + f * pred_stride + idx, mask=mask, other=0.0).to(acc_dtype)
    t = tl.load(target_ptr + f * target_stride + idx, mask=mask, other=0.0).to(acc_dtype)
    p_prev = tl.load(pred_ptr + prev * pred_stride + idx, mask=mask, other=0.0).to(acc_dtype)
    t_prev = tl.load(target_ptr + prev * target_stride + idx, mask=mask, other=0.0).to(acc_dtype)
    p_next = tl.load(pred_ptr + nxt * pred_stride + idx, mask=mask, other=0.0).to(acc_dtype)
    t_next = tl.load(target_ptr + nxt * target_stride + idx, mask=mask, other=0.0).to(acc_dtype)
    err = p - t
    frame = err
    if MOTION_WEIGHTED:
        frame = frame * (1.0 + tl.abs(t - t_prev))
    grad = tl.load(coef_ptr + 4 * f) * frame + tl.load(coef_ptr + 4 * f + 1) * _sign(err)
    grad += tl.load(coef_ptr + 4 * f + 2) * _sign((p - p_prev) - (t - t_prev))
    grad -= tl.load(coef_ptr + 4 * f + 3) * _sign((p_next - p) - (t_next - t))
    first = tl.load(incident_start_ptr + f)
    last = tl.load(incident_start_ptr + f + 1)
    for e in range(first, last):
        q = tl.load(partner_ptr + e)
        c = tl.load(partner_coef_ptr + e)
        pq = tl.load(pred_ptr + q * pred_stride + idx, mask=mask, other=0.0).to(acc_dtype)
        grad += c * (p - pq)
    tl.store(grad_ptr + f * grad_stride + idx, grad.to(grad_ptr.dtype.element_ty), mask=mask)


if isinstance(_forward_kernel, InterpretedFunction) != interpreter_enabled():
    raise ImportError("TRITON_INTERPRET changed between importing triton and ops.triton_kernel; "
                      "set it before the first import of triton")


@dataclass(frozen=True)
class LossIndex:
    """Small index tensors (sizes F, B and N_pairs) both passes need, on pred's device, built without host syncs."""
    sample_of_frame: torch.Tensor   # (F,) int64
    prev_frame: torch.Tensor        # (F,) int64: f - 1, or f on a sample's first frame
    next_frame: torch.Tensor        # (F,) int64: f + 1, or f on a sample's last frame
    frame_counts: torch.Tensor      # (B,) frames per sample
    pairs: torch.Tensor             # (N, 2) int64, contiguous
    pair_sample: torch.Tensor       # (N,) int64
    pair_counts: torch.Tensor       # (B,) pairs per sample

    @staticmethod
    def build(frame_offsets: torch.Tensor, pairs: torch.Tensor, num_frames: int, device: torch.device) -> "LossIndex":
        offsets = frame_offsets.to(device=device, dtype=torch.long)
        pairs = pairs.to(device=device, dtype=torch.long).contiguous()
        sample_of_frame = frame_sample_ids(offsets, num_frames)
        pair_sample = sample_of_frame[pairs[:, 0]]
        num_samples = offsets.numel() - 1
        pair_counts = torch.zeros(num_samples, dtype=torch.long, device=device).index_add_(
            0, pair_sample, torch.ones_like(pair_sample))
        prev_frame = previous_frame_ids(offsets, sample_of_frame)
        frames = torch.arange(num_frames, device=device)
        next_frame = frames.clone()
        next_frame[:-1] = torch.where(prev_frame[1:] == frames[:-1], frames[1:], frames[:-1])
        return LossIndex(sample_of_frame=sample_of_frame, prev_frame=prev_frame, next_frame=next_frame,
                         frame_counts=offsets[1:] - offsets[:-1], pairs=pairs,
                         pair_sample=pair_sample, pair_counts=pair_counts)


def _row_major(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(1) == 1 else t.contiguous()


def _check_launch(pred: torch.Tensor, block: int) -> None:
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    if pred.device.type != "cuda" and not interpreter_enabled():
        raise RuntimeError(f"the Triton loss kernel needs CUDA tensors (got {pred.device}); "
                           "set TRITON_INTERPRET=1 before triton is first imported to run it on the CPU interpreter")


def launch_forward(pred: torch.Tensor, target: torch.Tensor, index: LossIndex, motion_weighted: bool,
                   per_frame: torch.Tensor, pair_dist: torch.Tensor, *, block: int = DEFAULT_BLOCK,
                   num_warps: int = DEFAULT_NUM_WARPS) -> None:
    """Fill per_frame (F, 3) (frame, diff, first-frame terms of each frame) and pair_dist (N_pairs,), both of
    dtype loss_dtype(pred.dtype) and contiguous; every element is written."""
    _check_launch(pred, block)
    pred, target = _row_major(pred), _row_major(target)
    F, P = pred.shape
    N = index.pairs.shape[0]
    if F + N == 0:
        return
    _forward_kernel[(F + N,)](
        pred, target, index.prev_frame, index.pairs, per_frame, pair_dist, F, P, pred.stride(0), target.stride(0),
        MOTION_WEIGHTED=motion_weighted, BLOCK=block, num_warps=num_warps)


def pair_incidence(pairs: torch.Tensor, pair_coef: torch.Tensor, num_frames: int):
    """CSR of the pairs touching each frame: (start (F+1,), partner (2N,), coefficient (2N,)), frame-major."""
    ends = torch.cat([pairs[:, 0], pairs[:, 1]])
    order = torch.argsort(ends, stable=True)
    partner = torch.cat([pairs[:, 1], pairs[:, 0]])[order].contiguous()
    coef = torch.cat([pair_coef, pair_coef])[order].contiguous()
    frames = torch.arange(num_frames + 1, device=pairs.device)
    start = torch.searchsorted(ends[order].contiguous(), frames)
    return start, partner, coef


def launch_backward(pred: torch.Tensor, target: torch.Tensor, index: LossIndex, motion_weighted: bool,
                    frame_coef: torch.Tensor, pair_coef: torch.Tensor, grad_pred: torch.Tensor, *,
                    block: int = DEFAULT_BLOCK, num_warps: int = DEFAULT_NUM_WARPS) -> None:
    """Write every element of grad_pred (F, P) = the formula of the module docstring, with frame_coef (F, 4) the
    per-frame coefficients (a_f, c_f, d_f, d_{f+1}) and pair_coef (N_pairs,) the pairs' c_k."""
    _check_launch(pred, block)
    pred, target = _row_major(pred), _row_major(target)
    F, P = pred.shape
    if F == 0:
        return
    if grad_pred.stride(1) != 1:
        raise ValueError("grad_pred must be row-major (stride 1 along pixels)")
    if frame_coef.shape != (F, 4) or not frame_coef.is_contiguous():
        raise ValueError(f"frame_coef must be a contiguous ({F}, 4) tensor, got {tuple(frame_coef.shape)}")
    start, partner, coef = pair_incidence(index.pairs, pair_coef, F)
    _backward_kernel[(F, triton.cdiv(P, block))](
        pred, target, index.prev_frame, index.next_frame, frame_coef, start, partner, coef, grad_pred,
        P, pred.stride(0), target.stride(0), grad_pred.stride(0),
        MOTION_WEIGHTED=motion_weighted, BLOCK=block, num_warps=num_warps)


class TritonMotionFrameLoss(torch.autograd.Function):
    """FrameLosses (frame, diff, first, motion) per sample; gradient with respect to pred only (target is data)."""

    @staticmethod
    def forward(ctx, pred, target, frame_offsets, pairs, motion_weighted, tau, block):
        F, P = pred.shape
        acc = loss_dtype(pred.dtype)
        index = LossIndex.build(frame_offsets, pairs, F, pred.device)
        per_frame = torch.empty((F, 3), dtype=acc, device=pred.device)
        pair_dist = torch.empty(index.pairs.shape[0], dtype=acc, device=pred.device)
        launch_forward(pred, target, index, motion_weighted, per_frame, pair_dist, block=block)

        counts = index.frame_counts.to(acc)
        frame = per_sample_mean(per_frame[:, 0], index.sample_of_frame, counts)
        diff = per_sample_mean(per_frame[:, 1], index.sample_of_frame, counts - 1)
        is_first = index.prev_frame == torch.arange(F, device=pred.device)
        first = per_sample_mean(per_frame[:, 2] * is_first, index.sample_of_frame, torch.ones_like(counts))
        motion = -per_sample_mean(pair_dist.clamp(max=tau), index.pair_sample, index.pair_counts.to(acc))

        ctx.save_for_backward(pred, target, pair_dist)
        ctx.index, ctx.motion_weighted, ctx.tau, ctx.block = index, motion_weighted, tau, block
        return frame, diff, first, motion

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_frame, grad_diff, grad_first, grad_motion):
        pred, target, pair_dist = ctx.saved_tensors
        index: LossIndex = ctx.index
        F, P = pred.shape
        acc = pair_dist.dtype
        counts = index.frame_counts.to(acc)
        s = index.sample_of_frame
        frames = torch.arange(F, device=pred.device)
        is_first = index.prev_frame == frames
        has_next = index.next_frame != frames
        # d frame[b] / d per_frame[f] = 1 / count_b;  d per_frame[f] / d pred = 2 w (pred - target) / P
        a = (grad_frame.to(acc) * 2 / (counts.clamp_min(1) * P))[s]
        c = torch.where(is_first, (grad_first.to(acc) / P)[s], 0.0)
        d = torch.where(is_first, 0.0, (grad_diff.to(acc) / ((counts - 1).clamp_min(1) * P))[s])
        d_next = torch.where(has_next, d[index.next_frame], 0.0)
        frame_coef = torch.stack([a, c, d, d_next], dim=1).contiguous()
        # d motion[b] / d pair_dist[k] = -1 / n_b where dist <= tau (clamp passes the gradient at tau too)
        per_pair = -grad_motion.to(acc) * 2 / (index.pair_counts.clamp_min(1) * P)
        pair_coef = torch.where(pair_dist <= ctx.tau, per_pair[index.pair_sample], torch.zeros_like(pair_dist))
        grad_pred = torch.empty(pred.shape, dtype=pred.dtype, device=pred.device)
        launch_backward(pred, target, index, ctx.motion_weighted, frame_coef, pair_coef, grad_pred, block=ctx.block)
        return grad_pred, None, None, None, None, None, None


def motion_frame_loss_triton(pred: torch.Tensor, target: torch.Tensor, frame_offsets: torch.Tensor,
                             pairs: torch.Tensor, *, motion_weighted: bool = False, tau: float = 0.1,
                             block: int = DEFAULT_BLOCK) -> FrameLosses:
    """The Triton path of ops.motion_frame_loss (inputs already checked there)."""
    return FrameLosses(*TritonMotionFrameLoss.apply(pred, target, frame_offsets, pairs, motion_weighted,
                                                    float(tau), block))
