"""Attention backends over packed rows: the block-diagonal causal structure, clear errors where a fused
backend cannot run, and (on CUDA) every fused backend against SDPA in bf16, forward and backward."""
from __future__ import annotations

import logging

import pytest
import torch

from t2v_dist.attention import PackedLayout, select_backend, varlen_available, xformers_available

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="fused attention backends run on CUDA only; no GPU here")


def packed(row_segments: list[list[int]]) -> tuple[torch.Tensor, list[int]]:
    """segment_ids (R, S) and the flattened seqlens of rows made of the given segment lengths."""
    ids, seqlens, next_id = [], [], 0
    for row in row_segments:
        ids.append([next_id + i for i, n in enumerate(row) for _ in range(n)])
        next_id += len(row)
        seqlens += row
    return torch.tensor(ids), seqlens


def reference(q, k, v, seqlens):
    """Each segment of the flattened rows attends causally to itself, in float64."""
    R, H, S, D = q.shape
    flat = [t.double().transpose(1, 2).reshape(R * S, H, D).transpose(0, 1) for t in (q, k, v)]
    out, start = torch.empty_like(flat[0]), 0
    for n in seqlens:
        qs, ks, vs = (t[:, start:start + n] for t in flat)
        scores = qs @ ks.transpose(1, 2) / D ** 0.5
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool, device=q.device).tril(), float("-inf"))
        out[:, start:start + n] = scores.softmax(-1) @ vs
        start += n
    return out.transpose(0, 1).reshape(R, S, H, D).transpose(1, 2)


ROWS = [[5, 20, 7], [32], [1, 1, 30]]


def qkv(rows, heads=2, head_dim=16, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = sum(rows[0])
    return [torch.randn(len(rows), heads, S, head_dim, generator=g).to(device, dtype).requires_grad_()
            for _ in range(3)]


def test_sdpa_is_block_diagonal_causal():
    segment_ids, seqlens = packed(ROWS)
    q, k, v = qkv(ROWS)
    out = PackedLayout(segment_ids, seqlens, "sdpa").attend(q, k, v)
    torch.testing.assert_close(out.double(), reference(q, k, v, seqlens), atol=1e-5, rtol=1e-5)


def test_auto_takes_sdpa_on_cpu(caplog):
    segment_ids, seqlens = packed(ROWS)
    q, k, v = qkv(ROWS)
    layout = PackedLayout(segment_ids, seqlens, "auto")
    with caplog.at_level(logging.INFO, logger="t2v_dist.attention"):
        layout.attend(q, k, v)
    assert layout.backend == "sdpa"
    assert "attention backend: sdpa (requested auto, cpu float32, head dim 16)" in caplog.text


@pytest.mark.parametrize("backend", ["xformers", "varlen"])
def test_forced_fused_backend_says_why_it_cannot_run(backend):
    segment_ids, seqlens = packed(ROWS)
    q = qkv(ROWS, head_dim=12, dtype=torch.float32)[0]
    with pytest.raises(ValueError, match=rf"attn_backend='{backend}' cannot run: it runs on CUDA only.*"
                                         r"needs bf16 or fp16, got float32.*head dim 12 must be a multiple of 8"):
        PackedLayout(segment_ids, seqlens, backend).attend(q, q, q)
    big = qkv(ROWS, head_dim=264, dtype=torch.bfloat16)[0]
    with pytest.raises(ValueError, match="head dim 264 must be a multiple of 8 and at most 256"):
        select_backend(backend, big)


def test_unknown_backend():
    segment_ids, seqlens = packed(ROWS)
    with pytest.raises(ValueError, match="attn_backend must be one of"):
        PackedLayout(segment_ids, seqlens, "flash")


def test_varlen_refuses_dropout():
    q = qkv(ROWS, dtype=torch.bfloat16)[0]
    with pytest.raises(ValueError, match="varlen_attn has no dropout"):
        select_backend("varlen", q, dropout_p=0.1)


# ---- CUDA: every fused backend against SDPA, bf16, forward and backward --------------------------

def _check_against_sdpa(backend: str, rows, heads=4, head_dim=64):
    segment_ids, seqlens = packed(rows)
    segment_ids = segment_ids.cuda()
    q, k, v = qkv(rows, heads, head_dim, "cuda", torch.bfloat16, seed=1)
    grad = torch.randn_like(q)
    results = {}
    for name in ("sdpa", backend):
        layout = PackedLayout(segment_ids, seqlens, name)
        out = layout.attend(q, k, v)
        assert layout.backend == name
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
        results[name] = [out, dq, dk, dv]
    exact = reference(q, k, v, seqlens)
    for got, ref in zip(results[backend], results["sdpa"]):
        assert torch.isfinite(got).all()
        rel = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
        assert rel < 1e-2, f"{backend} differs from sdpa by {rel:.2e}"
    rel = ((results[backend][0].double() - exact).norm() / exact.norm()).item()
    assert rel < 1e-2, f"{backend} forward differs from the float64 reference by {rel:.2e}"


@needs_cuda
@pytest.mark.parametrize("backend", ["xformers", "varlen"])
def test_fused_backend_matches_sdpa_bf16(backend):
    available = {"xformers": xformers_available, "varlen": varlen_available}[backend]
    if not available("cuda"):
        pytest.skip(f"{backend} does not run on this GPU/build")
    _check_against_sdpa(backend, ROWS, head_dim=64)
    # real row lengths: gpt2 rows of 1024 positions, many short samples and padding
    rows = [[49] * 20 + [44], [300, 500, 224], [1024]]
    _check_against_sdpa(backend, rows, heads=12, head_dim=64)


@needs_cuda
def test_auto_on_cuda_uses_a_fused_backend_only_in_half_precision():
    segment_ids, seqlens = packed(ROWS)
    q32 = qkv(ROWS, device="cuda", dtype=torch.float32)[0]
    assert select_backend("auto", q32) == "sdpa"
    with pytest.raises(ValueError, match="needs bf16 or fp16, got float32"):
        select_backend("varlen", q32)
    q16 = q32.detach().to(torch.bfloat16)
    expected = "xformers" if xformers_available() else "varlen" if varlen_available() else "sdpa"
    assert select_backend("auto", q16) == expected


@needs_cuda
def test_xformers_mask_lives_on_the_tensors_device():
    if not xformers_available():
        pytest.skip("xformers does not run on this GPU/build")
    segment_ids, seqlens = packed(ROWS)
    q = qkv(ROWS, device="cuda", dtype=torch.bfloat16)[0]
    layout = PackedLayout(segment_ids.cuda(), seqlens, "xformers")
    layout.attend(q, q, q)
    assert layout.bias.q_seqinfo.seqstart.device == q.device
