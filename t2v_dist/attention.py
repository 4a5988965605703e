"""Causal self-attention over packed rows, behind one small interface.

A packed row holds several samples; each attends causally to itself only (block-diagonal
causal). Backends:
  - "xformers": `memory_efficient_attention` with `BlockDiagonalCausalMask` over the flattened
    rows (CUDA, bf16/fp16, xformers installed and its kernels working);
  - "varlen": PyTorch's own `torch.nn.attention.varlen.varlen_attn` (Flash Attention) over the
    flattened rows (CUDA, bf16/fp16, no dropout);
  - "sdpa": PyTorch scaled_dot_product_attention with an equivalent dense boolean mask (any
    device and dtype; the reference).
The fused backends need a head dim that is a multiple of 8 and at most 256. Forcing one where it
cannot run is an error that says why; "auto" takes the first of AUTO_ORDER that can run on the
tensors it gets (CUDA, half precision, a working kernel, no dropout for varlen), else sdpa.
Every choice is logged once, with the kernel xformers dispatched to.
"""
from __future__ import annotations

import functools
import inspect
import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)
BACKENDS = ("auto", "sdpa", "xformers", "varlen")
# auto's preference on CUDA, fastest first: decided by bench/attention.py (see BENCHMARKS.md)
AUTO_ORDER = ("xformers", "varlen")
FUSED_DTYPES = (torch.bfloat16, torch.float16)
MAX_HEAD_DIM = 256


@functools.lru_cache(maxsize=8)
def _probe(backend: str, device: str) -> str | None:
    """None if `backend` runs a tiny causal kernel on `device`, else why not (a broken build still imports)."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return f"{backend} needs a CUDA device, got {device}"
    try:
        with torch.no_grad():
            q, k, v = torch.randn(3, 1, 2, 16, 8, device=device, dtype=torch.bfloat16)
            out = _ATTEND[backend](q, k, v, [5, 11], _bias(backend, [5, 11], q.device), 0.0)
            segments = torch.tensor([0] * 5 + [1] * 11, device=device)
            mask = (segments[:, None] == segments[None, :]) & torch.ones(16, 16, dtype=torch.bool, device=device).tril()
            want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
            err = float((out.float() - want).abs().max())
        if not err < 0.05:  # also catches NaN
            why = f"{backend}'s probe kernel is wrong on {device} (max error {err:.3g} against sdpa)"
            log.warning("attention: %s", why)
            return why
    except Exception as exn:  # ImportError, a build without kernels for this GPU, a driver error
        why = f"{backend} does not run on {device}: {type(exn).__name__}: {str(exn)[:300]}"
        log.warning("attention: %s", why)
        return why
    return None


def xformers_available(device: str = "cuda") -> bool:
    return _probe("xformers", str(torch.device(device))) is None


def varlen_available(device: str = "cuda") -> bool:
    return _probe("varlen", str(torch.device(device))) is None


def _unfit(backend: str, q: torch.Tensor, dropout_p: float) -> str | None:
    """Why the fused `backend` cannot take these tensors (None: it can)."""
    reasons = []
    if q.device.type != "cuda":
        reasons.append(f"it runs on CUDA only, the tensors are on {q.device}")
    if q.dtype not in FUSED_DTYPES:
        reasons.append(f"it needs bf16 or fp16, got {str(q.dtype).replace('torch.', '')} "
                       f"(fp32 would take a slow kernel): set precision to bf16")
    D = q.shape[-1]
    if D % 8 or D > MAX_HEAD_DIM:
        reasons.append(f"head dim {D} must be a multiple of 8 and at most {MAX_HEAD_DIM}")
    if backend == "varlen" and dropout_p > 0:
        reasons.append(f"varlen_attn has no dropout, got dropout_p={dropout_p}")
    return "; ".join(reasons) if reasons else _probe(backend, str(q.device))


_LOGGED: set[tuple] = set()


def _log_choice(backend: str, requested: str, q: torch.Tensor, bias) -> None:
    """Log each (backend, request, device, dtype, head dim) once, with xformers' dispatched kernel."""
    key = (backend, requested, str(q.device), q.dtype, q.shape[-1])
    if key in _LOGGED:
        return
    _LOGGED.add(key)
    detail = f", kernel {_xformers_kernel(q, bias)}" if backend == "xformers" else ""
    log.info("attention backend: %s (requested %s, %s %s, head dim %d)%s", backend, requested, q.device,
             str(q.dtype).replace("torch.", ""), q.shape[-1], detail)


def select_backend(requested: str, q: torch.Tensor, dropout_p: float = 0.0) -> str:
    """The backend that runs on `q` (R, n_head, S, head_dim): `requested`, or auto's pick."""
    if requested not in BACKENDS:
        raise ValueError(f"attn_backend must be one of {BACKENDS}, got {requested!r}")
    if requested == "sdpa":
        return "sdpa"
    if requested != "auto":
        why = _unfit(requested, q, dropout_p)
        if why is not None:
            hint = " (pip install 't2v-dist[gpu]')" if requested == "xformers" else ""
            raise ValueError(f"attn_backend={requested!r} cannot run: {why}{hint}; use attn_backend='sdpa' or 'auto'")
        return requested
    for backend in AUTO_ORDER:
        if _unfit(backend, q, dropout_p) is None:
            return backend
    return "sdpa"


def _xformers_kernel(q: torch.Tensor, bias) -> str:
    """The forward kernel xformers dispatches these inputs to (for the log)."""
    try:
        from xformers.ops.fmha.common import Inputs
        from xformers.ops.fmha.dispatch import _dispatch_fw

        flat = _flatten(q)[None]
        op = _dispatch_fw(Inputs(query=flat, key=flat, value=flat, attn_bias=bias), q.requires_grad)
        return f"{op.NAME} ({op.__module__}.{op.__qualname__})"
    except Exception as exn:  # a private API: never fail a step for a log line
        return f"unknown ({type(exn).__name__})"


def _bias(backend: str, seqlens: list[int], device: torch.device):
    """The block-diagonal causal structure in the form `backend` takes."""
    if backend == "xformers":
        from xformers.ops.fmha.attn_bias import BlockDiagonalCausalMask

        # device: its default is the current CUDA device, wrong for a rank that has not set it
        return BlockDiagonalCausalMask.from_seqlens(list(seqlens), device=device)
    cu_seqlens = torch.tensor([0, *seqlens], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return cu_seqlens.to(device, non_blocking=True), max(seqlens)


def _flatten(t: torch.Tensor) -> torch.Tensor:
    R, H, S, D = t.shape
    return t.transpose(1, 2).reshape(R * S, H, D)


def _attend_xformers(q, k, v, seqlens, bias, dropout_p):
    import xformers.ops as xops

    R, H, S, D = q.shape
    out = xops.memory_efficient_attention(*(_flatten(t)[None] for t in (q, k, v)), attn_bias=bias, p=dropout_p)
    return out.reshape(R, S, H, D).transpose(1, 2)


@functools.lru_cache(maxsize=1)
def _varlen_causal_kwargs() -> dict:
    """torch 2.9-2.11 take is_causal=True; later ones window_size=(-1, 0)."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    return {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}


def _attend_varlen(q, k, v, seqlens, bias, dropout_p):
    from torch.nn.attention.varlen import varlen_attn

    R, H, S, D = q.shape
    cu_seqlens, max_len = bias
    out = varlen_attn(_flatten(q), _flatten(k), _flatten(v), cu_seqlens, cu_seqlens, max_len, max_len,
                      **_varlen_causal_kwargs())
    return out.reshape(R, S, H, D).transpose(1, 2)


_ATTEND = {"xformers": _attend_xformers, "varlen": _attend_varlen}


class PackedLayout:
    """What every attention layer of one forward pass needs to know about the packing.

    The backend is resolved at the first `attend` (it depends on the tensors' dtype and head
    dim), and its mask is built once and reused by every layer.
    """

    def __init__(self, segment_ids: torch.Tensor, seqlens: list[int], backend: str):
        if backend not in BACKENDS:
            raise ValueError(f"attn_backend must be one of {BACKENDS}, got {backend!r}")
        self.requested, self.segment_ids, self.seqlens = backend, segment_ids, list(seqlens)
        self.shape = tuple(segment_ids.shape)
        self.backend: str | None = None
        self.bias = None

    def _dense_mask(self) -> torch.Tensor:
        S = self.segment_ids.shape[1]
        same = self.segment_ids[:, :, None] == self.segment_ids[:, None, :]
        causal = torch.ones(S, S, dtype=torch.bool, device=self.segment_ids.device).tril()
        return (same & causal)[:, None]  # (R, 1, S, S); padding is its own causal segment

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
        """q, k, v: (R, n_head, S, head_dim) -> (R, n_head, S, head_dim)."""
        if self.backend is None:
            self.backend = select_backend(self.requested, q, dropout_p)
            if self.backend == "sdpa":
                self.bias = self._dense_mask()
            else:
                self.bias = _bias(self.backend, self.seqlens, q.device)
            _log_choice(self.backend, self.requested, q, self.bias)
        if self.backend == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias, dropout_p=dropout_p)
        return _ATTEND[self.backend](q, k, v, self.seqlens, self.bias, dropout_p)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention with an explicit boolean mask (B, 1, Lq, Lk): the generation path with a KV cache."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
