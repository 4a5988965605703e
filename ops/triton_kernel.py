"""Fused frame + motion loss in Triton: one pass over pred/target forward, one write of grad_pred backward.

Forward, one launch of F + N_pairs programs:
  program f < F        : per_frame[f] = mean_p w[f,p] * (pred[f,p] - target[f,p])^2, w from target[f-1]
  program F + k        : pair_dist[k] = mean_p (pred[i_k,p] - pred[j_k,p])^2, uncapped
then a tiny per-sample reduction (B values) in PyTorch. No (N_pairs, P) tensor is ever built.

Backward, one launch over (frame, pixel block): frame-major, so no atomics and a deterministic result.
Each program writes its block of grad_pred once:
  grad[f] = c_f * w * (pred[f] - target[f]) + sum over the pairs touching f of c_k * (pred[f] - pred[partner])
where the pairs touching f come from a CSR built from `pairs` (duplicates and shared frames just appear
several times). Backward saves pred, target (the frame term needs both) and the N_pairs uncapped distances
(to know where the cap tau is active); nothing of size N_pairs * P.

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

from ops.reference import frame_sample_ids, loss_dtype, previous_frame_ids

DEFAULT_BLOCK = 1024
DEFAULT_NUM_WARPS = 4


def interpreter_enabled() -> bool:
    """Whether this process's Triton runs kernels in the interpreter (decided when triton was imported)."""
    return isinstance(tl.zeros, InterpretedFunction)


@triton.jit
def _forward_kernel(pred_ptr, target_ptr, prev_frame_ptr, pairs_ptr, per_frame_ptr, pair_dist_ptr,
                    num_frames, P, pred_stride, target_stride,
                    MOTION_WEIGHTED: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    acc_dtype = per_frame_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=acc_dtype)
    if pid < num_frames:
        f = pid.to(tl.int64)
        prev = tl.load(prev_frame_ptr + f)          # == f on a sample's first frame, so w == 1 there
        for start in range(0, P, BLOCK):
            idx = start + cols
            mask = idx < P
            p = tl.load(pred_ptr + f * pred_stride + idx, mask=mask, other=0.0).to(acc_dtype)
            t = tl.load(target_ptr + f * target_stride + idx, mask=mask, other=0.0).to(acc_dtype)
            err = (p - t) * (p - t)
            if MOTION_WEIGHTED:
                t_prev = tl.load(target_ptr + prev * target_stride + idx, mask=mask, other=0.0).to(acc_dtype)
                err = err * (1.0 + tl.abs(t - t_prev))
            acc += err
        tl.store(per_frame_ptr + f, tl.sum(acc, axis=0) / P)
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
def _backward_kernel(pred_ptr, target_ptr, prev_frame_ptr, frame_coef_ptr, incident_start_ptr,
                     partner_ptr, partner_coef_ptr, grad_ptr, P, pred_stride, target_stride, grad_stride,
                     MOTION_WEIGHTED: tl.constexpr, BLOCK: tl.constexpr):
    f = tl.program_id(0).to(tl.int64)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < P
    acc_dtype = frame_coef_ptr.dtype.element_ty
    p = tl.load(pred_ptr + f * pred_stride + idx, mask=mask, other=0.0).to(acc_dtype)
    t = tl.load(target_ptr + f * target_stride + idx, mask=mask, other=0.0).to(acc_dtype)
    grad = p - t
    if MOTION_WEIGHTED:
        prev = tl.load(prev_frame_ptr + f)
        t_prev = tl.load(target_ptr + prev * target_stride + idx, mask=mask, other=0.0).to(acc_dtype)
        grad = grad * (1.0 + tl.abs(t - t_prev))
    grad = grad * tl.load(frame_coef_ptr + f)
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
        return LossIndex(sample_of_frame=sample_of_frame,
                         prev_frame=previous_frame_ids(offsets, sample_of_frame),
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
    """Fill per_frame (F,) and pair_dist (N_pairs,), both of dtype loss_dtype(pred.dtype); every element is written."""
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
    """Write every element of grad_pred (F, P) =
    frame_coef[f] * w * (pred - target) + sum over pairs k touching f of pair_coef[k] * (pred[f] - pred[partner])."""
    _check_launch(pred, block)
    pred, target = _row_major(pred), _row_major(target)
    F, P = pred.shape
    if F == 0:
        return
    if grad_pred.stride(1) != 1:
        raise ValueError("grad_pred must be row-major (stride 1 along pixels)")
    start, partner, coef = pair_incidence(index.pairs, pair_coef, F)
    _backward_kernel[(F, triton.cdiv(P, block))](
        pred, target, index.prev_frame, frame_coef, start, partner, coef, grad_pred,
        P, pred.stride(0), target.stride(0), grad_pred.stride(0),
        MOTION_WEIGHTED=motion_weighted, BLOCK=block, num_warps=num_warps)


class TritonMotionFrameLoss(torch.autograd.Function):
    """(frame_loss, motion_loss) per sample; gradient with respect to pred only (target is data)."""

    @staticmethod
    def forward(ctx, pred, target, frame_offsets, pairs, motion_weighted, tau, block):
        F, P = pred.shape
        acc = loss_dtype(pred.dtype)
        index = LossIndex.build(frame_offsets, pairs, F, pred.device)
        per_frame = torch.empty(F, dtype=acc, device=pred.device)
        pair_dist = torch.empty(index.pairs.shape[0], dtype=acc, device=pred.device)
        launch_forward(pred, target, index, motion_weighted, per_frame, pair_dist, block=block)

        B = index.frame_counts.numel()
        frame_sum = torch.zeros(B, dtype=acc, device=pred.device).index_add_(0, index.sample_of_frame, per_frame)
        frame_loss = frame_sum / index.frame_counts.clamp_min(1)
        pair_sum = torch.zeros(B, dtype=acc, device=pred.device).index_add_(
            0, index.pair_sample, pair_dist.clamp(max=tau))
        motion_loss = -pair_sum / index.pair_counts.clamp_min(1)

        ctx.save_for_backward(pred, target, pair_dist)
        ctx.index, ctx.motion_weighted, ctx.tau, ctx.block = index, motion_weighted, tau, block
        return frame_loss, motion_loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_frame_loss, grad_motion_loss):
        pred, target, pair_dist = ctx.saved_tensors
        index: LossIndex = ctx.index
        P = pred.shape[1]
        acc = pair_dist.dtype
        # d frame_loss[b] / d per_frame[f] = 1 / count_b;  d per_frame[f] / d pred = 2 w (pred - target) / P
        per_sample = grad_frame_loss.to(acc) * 2 / (index.frame_counts.clamp_min(1) * P)
        frame_coef = per_sample[index.sample_of_frame].contiguous()
        # d motion_loss[b] / d pair_dist[k] = -1 / n_b where dist <= tau (clamp passes the gradient at tau too)
        per_pair = -grad_motion_loss.to(acc) * 2 / (index.pair_counts.clamp_min(1) * P)
        pair_coef = torch.where(pair_dist <= ctx.tau, per_pair[index.pair_sample], torch.zeros_like(pair_dist))
        grad_pred = torch.empty(pred.shape, dtype=pred.dtype, device=pred.device)
        launch_backward(pred, target, index, ctx.motion_weighted, frame_coef, pair_coef, grad_pred, block=ctx.block)
        return grad_pred, None, None, None, None, None, None


def motion_frame_loss_triton(pred: torch.Tensor, target: torch.Tensor, frame_offsets: torch.Tensor,
                             pairs: torch.Tensor, *, motion_weighted: bool = False, tau: float = 0.1,
                             block: int = DEFAULT_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton path of ops.motion_frame_loss (inputs already checked there)."""
    return TritonMotionFrameLoss.apply(pred, target, frame_offsets, pairs, motion_weighted, float(tau), block)
