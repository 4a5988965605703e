"""Pack variable-length (caption, clip) samples into fixed-size rows of a token budget.

A sample with n caption tokens (ending in <|endoftext|>) and m frames occupies n + m - 1
positions: [x_1..x_n, h_1..h_{m-1}]. Frame 1 is predicted from x_n, frame i+1 from h_i.
Rows are filled first-fit in stream order; positions restart at 0 for every sample, and the
attention mask (see `attention.py`) keeps samples of one row apart.

All index tensors address the flattened (rows * budget) token grid, so the model gathers and
scatters with one `index_select` / `index_copy` per kind of position.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field, fields

import numpy as np
import torch


def sample_length(num_tokens: int, num_frames: int) -> int:
    """Positions a sample takes in a packed row."""
    return num_tokens + num_frames - 1


def sample_seed(key: str, seed: int) -> int:
    """Stable per-sample seed (noise, motion pairs): independent of how samples are packed."""
    return (zlib.crc32(key.encode("utf-8")) * 1_000_003 + seed) % (2**62)


@dataclass
class PackedBatch:
    input_ids: torch.Tensor        # (R, S) long: caption ids at text positions, 0 elsewhere
    position_ids: torch.Tensor     # (R, S) long: restarts at 0 for every sample
    segment_ids: torch.Tensor      # (R, S) long: sample index, -1 on padding
    frames: torch.Tensor           # (F, H, W, 3) uint8: every frame of every sample, sample-major
    frame_offsets: torch.Tensor    # (B+1,) long: frames of sample b are frames[off[b]:off[b+1]]
    frame_index: torch.Tensor      # (F,) long: index of each frame inside its clip (selects beta_i)
    frame_token_pos: torch.Tensor  # (F-B,) long: flat position of h_i for frames 0..m-2 of each sample
    frame_pred_pos: torch.Tensor   # (F,) long: flat position whose hidden state predicts each frame
    text_pred_pos: torch.Tensor    # (Nt,) long: flat positions of x_1..x_{n-1}
    text_targets: torch.Tensor     # (Nt,) long: x_2..x_n
    text_sample: torch.Tensor      # (Nt,) long: sample index of each text target
    sample_seeds: torch.Tensor     # (B,) long: seeds for noise and motion pairs
    seqlens: list[int] = field(default_factory=list)  # segment lengths over the flattened grid (padding included)
    keys: list[str] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        return len(self.keys)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_tokens(self) -> int:
        """Non-padding tokens."""
        return int((self.segment_ids >= 0).sum())

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)

    def to(self, device, non_blocking: bool = False) -> "PackedBatch":
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            moved[f.name] = v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        return PackedBatch(**moved)


def first_fit(lengths: list[int], token_budget: int, max_rows: int | None = None) -> list[int] | None:
    """Row index for each length, first-fit in order; None if more than `max_rows` rows are needed."""
    free: list[int] = []
    rows = []
    for length in lengths:
        if length > token_budget:
            raise ValueError(f"sample of {length} positions exceeds token_budget={token_budget}")
        for r, space in enumerate(free):
            if space >= length:
                free[r] -= length
                rows.append(r)
                break
        else:
            if max_rows is not None and len(free) >= max_rows:
                return None
            free.append(token_budget - length)
            rows.append(len(free) - 1)
    return rows


def _check_sample(key: str, tokens, frames: np.ndarray, image_size: int | None) -> None:
    if len(tokens) < 1:
        raise ValueError(f"sample {key!r}: caption has no tokens")
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        got = getattr(frames, "dtype", type(frames).__name__)
        raise ValueError(f"sample {key!r}: frames must be a uint8 numpy array, got {got}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] != frames.shape[2]:
        raise ValueError(f"sample {key!r}: frames must have shape T x H x W x 3 with H == W, got {frames.shape}")
    if image_size is not None and frames.shape[1] != image_size:
        raise ValueError(f"sample {key!r}: frames are {frames.shape[1]}x{frames.shape[2]}, model image_size={image_size}")
    if frames.shape[0] < 2:
        raise ValueError(f"sample {key!r}: needs at least 2 frames, got {frames.shape[0]}")


def pack_samples(samples: list[dict], token_budget: int, *, max_rows: int | None = None,
                 seed: int = 0, image_size: int | None = None, pad_to_budget: bool = False) -> PackedBatch:
    """Pack samples {"key", "tokens", "frames": uint8 T x H x W x 3} into rows of `token_budget`.

    `seed` is mixed with each sample's key into `sample_seeds`, so a sample gets the same noise
    whether it is packed alone or with others. Rows are trimmed to the fullest row unless
    `pad_to_budget` (static shapes). Raises ValueError naming the sample on bad input.
    """
    if not samples:
        raise ValueError("pack_samples needs at least one sample")
    for s in samples:
        _check_sample(s["key"], s["tokens"], s["frames"], image_size)
    sizes = {s["frames"].shape[1:] for s in samples}
    if len(sizes) != 1:
        raise ValueError(f"samples in one batch must share a frame size, got {sorted(sizes)}")
    lengths = [sample_length(len(s["tokens"]), s["frames"].shape[0]) for s in samples]
    row_of = first_fit(lengths, token_budget, max_rows)
    if row_of is None:
        raise ValueError(f"{len(samples)} samples do not fit in max_rows={max_rows} rows of {token_budget} tokens")
    num_rows = max(row_of) + 1
    fills = [0] * num_rows
    for length, r in zip(lengths, row_of):
        fills[r] += length
    # Rows are as long as the fullest one (<= token_budget): a lone short sample is not padded to the budget.
    S = token_budget if pad_to_budget else max(fills)

    input_ids = np.zeros((num_rows, S), np.int64)
    position_ids = np.zeros((num_rows, S), np.int64)
    segment_ids = np.full((num_rows, S), -1, np.int64)
    fill = [0] * num_rows
    row_segments: list[list[int]] = [[] for _ in range(num_rows)]
    frame_index, frame_token_pos, frame_pred_pos = [], [], []
    text_pred_pos, text_targets, text_sample = [], [], []
    offsets = [0]
    for b, (s, length, r) in enumerate(zip(samples, lengths, row_of)):
        tokens = np.asarray(s["tokens"], np.int64)
        n, m = len(tokens), s["frames"].shape[0]
        start = fill[r]
        fill[r] += length
        row_segments[r].append(length)
        base = r * S + start
        input_ids[r, start:start + n] = tokens
        position_ids[r, start:start + length] = np.arange(length)
        segment_ids[r, start:start + length] = b
        text_pred_pos.extend(range(base, base + n - 1))
        text_targets.extend(tokens[1:].tolist())
        text_sample.extend([b] * (n - 1))
        frame_index.extend(range(m))
        frame_token_pos.extend(range(base + n, base + n + m - 1))
        frame_pred_pos.extend(range(base + n - 1, base + n + m - 1))
        offsets.append(offsets[-1] + m)
    seqlens = []
    for r in range(num_rows):
        seqlens.extend(row_segments[r])
        if fill[r] < S:
            seqlens.append(S - fill[r])  # padding is its own causal segment: no row is fully masked

    long = lambda x: torch.as_tensor(np.asarray(x, np.int64))
    return PackedBatch(
        input_ids=torch.from_numpy(input_ids),
        position_ids=torch.from_numpy(position_ids),
        segment_ids=torch.from_numpy(segment_ids),
        frames=torch.from_numpy(np.concatenate([s["frames"] for s in samples])),
        frame_offsets=long(offsets),
        frame_index=long(frame_index),
        frame_token_pos=long(frame_token_pos),
        frame_pred_pos=long(frame_pred_pos),
        text_pred_pos=long(text_pred_pos),
        text_targets=long(text_targets),
        text_sample=long(text_sample),
        sample_seeds=long([sample_seed(s["key"], seed) for s in samples]),
        seqlens=seqlens,
        keys=[s["key"] for s in samples],
    )
