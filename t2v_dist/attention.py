"""Causal self-attention over packed rows, behind one small interface.

A packed row holds several samples; each attends causally to itself only (block-diagonal
causal). Backends:
  - "xformers": `memory_efficient_attention` with `BlockDiagonalCausalMask` over the flattened
    rows (CUDA, when xformers is installed);
  - "sdpa": PyTorch scaled_dot_product_attention with an equivalent dense boolean mask (CPU, and
    the reference).
"auto" picks xformers on CUDA when importable, else sdpa; the choice is logged once.
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)
BACKENDS = ("auto", "sdpa", "xformers")


@functools.lru_cache(maxsize=1)
def xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # ImportError, or a broken build without CUDA kernels
        return False
    return True


@functools.lru_cache(maxsize=8)
def select_backend(requested: str, device_type: str) -> str:
    if requested not in BACKENDS:
        raise ValueError(f"attn_backend must be one of {BACKENDS}, got {requested!r}")
    if requested == "xformers" and not xformers_available():
        raise ValueError("attn_backend='xformers' was forced but xformers is not installed (pip install 't2v-dist[gpu]')")
    backend = requested
    if requested == "auto":
        backend = "xformers" if device_type == "cuda" and xformers_available() else "sdpa"
    log.info("attention backend: %s (requested %s, device %s)", backend, requested, device_type)
    return backend


class PackedLayout:
    """What every attention layer of one forward pass needs to know about the packing."""

    def __init__(self, segment_ids: torch.Tensor, seqlens: list[int], backend: str):
        self.backend = select_backend(backend, segment_ids.device.type)
        self.shape = tuple(segment_ids.shape)
        if self.backend == "xformers":
            from xformers.ops.fmha.attn_bias import BlockDiagonalCausalMask

            self.bias = BlockDiagonalCausalMask.from_seqlens(list(seqlens))
        else:
            S = segment_ids.shape[1]
            same = segment_ids[:, :, None] == segment_ids[:, None, :]
            causal = torch.ones(S, S, dtype=torch.bool, device=segment_ids.device).tril()
            self.bias = (same & causal)[:, None]  # (R, 1, S, S); padding is its own causal segment

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
        """q, k, v: (R, n_head, S, head_dim) -> (R, n_head, S, head_dim)."""
        if self.backend == "xformers":
            import xformers.ops as xops

            R, H, S, D = q.shape
            flat = lambda t: t.transpose(1, 2).reshape(1, R * S, H, D)
            out = xops.memory_efficient_attention(flat(q), flat(k), flat(v), attn_bias=self.bias, p=dropout_p)
            return out.reshape(R, S, H, D).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias, dropout_p=dropout_p)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention with an explicit boolean mask (B, 1, Lq, Lk): the generation path with a KV cache."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
