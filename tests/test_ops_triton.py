"""The Triton loss kernel against the PyTorch reference, on the CPU through Triton's interpreter.

Triton picks the interpreter when `triton` is first imported (triton.language's own helpers are jitted
then), and anything in the pytest process may have imported it already. So each case runs in a fresh
process started with TRITON_INTERPRET=1: this file is also the worker (`python test_ops_triton.py CASE JSON`).
The interpreter is slow: one small case always runs, the rest are marked slow.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOL = {torch.float32: dict(rtol=1e-5), torch.bfloat16: dict(rtol=1e-2), torch.float64: dict(rtol=1e-10)}


def run_worker(case: str, interpret: bool = True, env_extra: dict | None = None, **params) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "T2V_MOTION_LOSS_BACKEND")}
    env.update(PYTHONPATH=str(ROOT), **(env_extra or {}))
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    out = subprocess.run([sys.executable, __file__, case, json.dumps(params)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"worker {case} {params} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


# ---------------------------------------------------------------- worker side: runs in the fresh process

def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """Relative tolerance of the input dtype, measured against the largest value (sums cancel near 0)."""
    rtol = TOL[dtype]["rtol"]
    assert got.shape == want.shape and got.dtype == want.dtype, f"{what}: {got.shape} {got.dtype} vs {want.shape} {want.dtype}"
    assert bool(torch.isfinite(got).all()), f"{what}: non-finite values (unwritten output?)"
    scale = float(want.abs().max()) if want.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * scale, msg=lambda m: f"{what}: {m}")


def _random_inputs(seed: int, offsets: list[int], P: int, dtype: torch.dtype, pairs_per_sample: int,
                   extra_pairs: list[list[int]], device: str = "cpu"):
    from ops import sample_motion_pairs
    g = torch.Generator().manual_seed(seed)
    F = offsets[-1]
    target = torch.rand(F, P, generator=g).mul(2).sub(1).to(dtype)
    pred = (target.float() + 0.3 * torch.randn(F, P, generator=g)).to(dtype)
    off = torch.tensor(offsets)
    pairs = sample_motion_pairs(off, pairs_per_sample, g)
    pairs = torch.cat([pairs, torch.tensor(extra_pairs, dtype=torch.long).reshape(-1, 2)])
    return pred.to(device), target.to(device), off.to(device), pairs.to(device)


def case_matches_reference(seed: int, offsets: list[int], P: int, dtype: str, block: int, pairs_per_sample: int = 3,
                           extra_pairs: list[list[int]] = (), tau_quantile: float = 0.5, strided: bool = False,
                           device: str = "cpu") -> None:
    """Forward and backward of ops.motion_frame_loss(backend='triton') equal the reference; the kernels'
    raw outputs (poisoned with NaN first) equal independent PyTorch formulas, element by element."""
    from ops import motion_frame_loss, triton_kernel
    from ops.reference import motion_weights
    assert triton_kernel.interpreter_enabled() == (device == "cpu"), "CPU runs need Triton's interpreter, CUDA none"
    dt = getattr(torch, dtype)
    pred, target, off, pairs = _random_inputs(seed, offsets, P, dt, pairs_per_sample, extra_pairs, device)
    if strided:   # rows with padding: stride(0) > P, as a slice of a wider buffer
        wide = torch.randn(pred.shape[0], P + 5).to(device=device, dtype=dt)
        wide[:, :P] = pred
        pred = wide[:, :P]
    F = pred.shape[0]
    acc = torch.float64 if dt == torch.float64 else torch.float32
    dists = (pred[pairs[:, 0]].to(acc) - pred[pairs[:, 1]].to(acc)).pow(2).mean(1)
    tau = float(dists.quantile(tau_quantile)) + 1e-3 if dists.numel() else 0.1   # cap active for some pairs

    from ops.reference import frame_sample_ids, previous_frame_ids
    prev = previous_frame_ids(off, frame_sample_ids(off, F))
    is_first = prev == torch.arange(F, device=device)
    for motion_weighted in (False, True):
        # 1. raw kernel outputs, NaN-poisoned first: every element must be written
        index = triton_kernel.LossIndex.build(off, pairs, F, pred.device)
        per_frame = torch.full((F, 3), float("nan"), dtype=acc, device=device)
        pair_dist = torch.full((pairs.shape[0],), float("nan"), dtype=acc, device=device)
        triton_kernel.launch_forward(pred, target, index, motion_weighted, per_frame, pair_dist, block=block)
        w = motion_weights(target, off, acc) if motion_weighted else 1.0
        p_, t_ = pred.to(acc), target.to(acc)
        _close(per_frame[:, 0], ((p_ - t_).pow(2) * w).mean(1), dt, "per_frame (frame)")
        _close(per_frame[:, 1], ((p_ - p_[prev]) - (t_ - t_[prev])).abs().mean(1), dt, "per_frame (diff)")
        _close(per_frame[:, 2], (p_ - t_).abs().mean(1), dt, "per_frame (first)")
        _close(pair_dist, dists, dt, "pair_dist")

        # raw backward with random coefficients, against autograd of the same per-frame sums:
        # a_f * frame/2 + c_f * first + d_f * diff (d_f = 0 on first frames) and pair terms
        g = torch.Generator().manual_seed(seed + 1)
        a, c, d = (torch.randn(F, generator=g, dtype=acc).to(device) for _ in range(3))
        c, d = torch.where(is_first, c, 0.0), torch.where(is_first, 0.0, d)
        nxt = index.next_frame
        d_next = torch.where(nxt != torch.arange(F, device=device), d[nxt], 0.0)
        frame_coef = torch.stack([a, c, d, d_next], 1).contiguous()
        pair_coef = torch.randn(pairs.shape[0], generator=g, dtype=acc).to(device)
        grad = torch.full((F, P), float("nan"), device=device).to(dt)
        triton_kernel.launch_backward(pred, target, index, motion_weighted, frame_coef, pair_coef, grad, block=block)
        leaf = pred.detach().to(acc).requires_grad_()
        per_frame_t = ((leaf - t_).pow(2) * w).sum(1)
        diff_t = ((leaf - leaf[prev]) - (t_ - t_[prev])).abs().sum(1)
        first_t = (leaf - t_).abs().sum(1)
        pair_t = (leaf[pairs[:, 0]] - leaf[pairs[:, 1]]).pow(2).sum(1)
        ((a * per_frame_t).sum() / 2 + (c * first_t).sum() + (d * diff_t).sum()
         + (pair_coef * pair_t).sum() / 2).backward()
        _close(grad, leaf.grad.to(dt), dt, "grad_pred (raw)")

        # 2. end to end through autograd, against the reference, with random upstream gradients
        B = off.numel() - 1
        upstream = [torch.randn(B, generator=g, dtype=acc).to(device) for _ in range(4)]
        results = []
        for backend in ("triton", "reference"):
            p = pred.detach().clone().requires_grad_()
            losses = motion_frame_loss(p, target, off, pairs, motion_weighted=motion_weighted, tau=tau,
                                       backend=backend)
            sum((term * up).sum() for term, up in zip(losses, upstream)).backward()
            results.append((*losses, p.grad))
        for name, got, want in zip(("frame", "diff", "first", "motion", "grad_pred"), *results):
            _close(got.detach(), want.detach(), dt, f"{name} (motion_weighted={motion_weighted})")
    print("OK", dtype, offsets, P, block, pairs.shape[0])


def case_env_var_and_logging() -> None:
    """T2V_MOTION_LOSS_BACKEND=triton under the interpreter takes the kernel and logs it; target needing a
    gradient is refused clearly."""
    import logging
    os.environ["T2V_MOTION_LOSS_BACKEND"] = "triton"
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
    from ops import motion_frame_loss
    pred, target, off, pairs = _random_inputs(0, [0, 2, 5], 10, torch.float32, 2, [])
    frame = motion_frame_loss(pred.requires_grad_(), target, off, pairs).frame
    assert frame.grad_fn is not None and "TritonMotionFrameLoss" in type(frame.grad_fn).__name__
    try:
        motion_frame_loss(pred, target.requires_grad_(), off, pairs)
    except RuntimeError as e:
        assert "gives no gradient for target" in str(e)
    else:
        raise AssertionError("forced triton with target.requires_grad must raise")


def case_compiles_for_sm90() -> None:
    """Without the interpreter: both kernels lower to an sm_90 cubin for every dtype and flag (no GPU needed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from ops import triton_kernel
    assert not triton_kernel.interpreter_enabled()
    for elt, acc in (("fp32", "fp32"), ("bf16", "fp32"), ("fp64", "fp64")):
        for motion_weighted in (False, True):
            forward = {"pred_ptr": f"*{elt}", "target_ptr": f"*{elt}", "prev_frame_ptr": "*i64", "pairs_ptr": "*i64",
                       "per_frame_ptr": f"*{acc}", "pair_dist_ptr": f"*{acc}", "num_frames": "i32", "P": "i32",
                       "pred_stride": "i32", "target_stride": "i32", "MOTION_WEIGHTED": "constexpr",
                       "BLOCK": "constexpr"}
            backward = {"pred_ptr": f"*{elt}", "target_ptr": f"*{elt}", "prev_frame_ptr": "*i64",
                        "next_frame_ptr": "*i64", "coef_ptr": f"*{acc}", "incident_start_ptr": "*i64",
                        "partner_ptr": "*i64",
                        "partner_coef_ptr": f"*{acc}", "grad_ptr": f"*{elt}", "P": "i32", "pred_stride": "i32",
                        "target_stride": "i32", "grad_stride": "i32", "MOTION_WEIGHTED": "constexpr",
                        "BLOCK": "constexpr"}
            for fn, sig in ((triton_kernel._forward_kernel, forward), (triton_kernel._backward_kernel, backward)):
                src = ASTSource(fn, sig, constexprs={"MOTION_WEIGHTED": motion_weighted,
                                                     "BLOCK": triton_kernel.DEFAULT_BLOCK})
                compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                          options={"num_warps": triton_kernel.DEFAULT_NUM_WARPS})
                assert len(compiled.asm["cubin"]) > 1000
    print("OK compiled")


CASES = {"matches_reference": case_matches_reference, "env_var_and_logging": case_env_var_and_logging,
         "compiles_for_sm90": case_compiles_for_sm90}

if __name__ == "__main__":
    CASES[sys.argv[1]](**json.loads(sys.argv[2]))
    sys.exit(0)


# ---------------------------------------------------------------- pytest side

def test_kernel_matches_reference_small_odd_sizes():
    """1-, 2- and 4-frame clips; P = 3*3*5 = 45 over blocks of 16 (ragged tail); duplicate and shared
    pairs; sample 0 has no pairs; fp32."""
    out = run_worker("matches_reference", seed=0, offsets=[0, 1, 3, 7], P=45, dtype="float32", block=16,
                     extra_pairs=[[1, 2], [1, 2], [4, 6]])
    assert out.startswith("OK")


@pytest.mark.slow
@pytest.mark.parametrize("params", [
    dict(seed=1, offsets=[0, 5], P=3 * 4 * 4, dtype="float32", block=16, pairs_per_sample=6),          # B = 1
    dict(seed=2, offsets=[0, 2, 4, 6], P=3 * 5 * 5, dtype="float32", block=32, pairs_per_sample=0),     # no pairs
    dict(seed=3, offsets=[0, 2, 4, 6], P=75, dtype="float32", block=32, pairs_per_sample=2,
         extra_pairs=[[0, 1], [1, 0], [0, 1]]),                                                          # 2-frame clips
    dict(seed=4, offsets=[0, 1, 1, 9, 10], P=3 * 7 * 7, dtype="bfloat16", block=64, pairs_per_sample=4),
    dict(seed=5, offsets=[0, 3, 8], P=3 * 6 * 6, dtype="float64", block=32, pairs_per_sample=3,
         tau_quantile=0.0),
    dict(seed=6, offsets=[0, 4, 9], P=3 * 8 * 8, dtype="float32", block=64, pairs_per_sample=5, strided=True),
    dict(seed=7, offsets=[0, 6, 8, 16], P=3 * 32 * 32, dtype="float32", block=1024, pairs_per_sample=4,
         tau_quantile=1.0),                                                                              # real 32x32 frames
])
def test_kernel_matches_reference(params):
    assert run_worker("matches_reference", **params).startswith("OK")


@pytest.mark.slow
def test_env_var_forces_the_kernel_and_is_logged():
    out = run_worker("env_var_and_logging")
    assert "ops.motion_loss motion_frame_loss: triton backend (forced by $T2V_MOTION_LOSS_BACKEND on cpu)" in out


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu(tmp_path):
    out = run_worker("compiles_for_sm90", interpret=False, env_extra={"TRITON_CACHE_DIR": str(tmp_path)})
    assert "OK compiled" in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled kernels need a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_compiled_kernel_on_cuda_matches_reference(dtype):
    """On a GPU machine: the real compiled kernels, gpt2-sized frames (64x64, 16-frame clips, odd last clip)."""
    out = run_worker("matches_reference", interpret=False, seed=11, offsets=[0, 16, 32, 39, 40], P=3 * 64 * 64,
                     dtype=dtype, block=1024, pairs_per_sample=4, extra_pairs=[[16, 17], [16, 17]], device="cuda")
    assert out.startswith("OK")
