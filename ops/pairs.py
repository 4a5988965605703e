"""Seeded sampling of the motion term's frame pairs."""
from __future__ import annotations

import torch

from ops.validation import check_frame_offsets


def sample_motion_pairs(frame_offsets: torch.Tensor, pairs_per_sample: int, generator: torch.Generator) -> torch.Tensor:
    """(N_pairs, 2) int64 global frame indices: K pairs (i != j) drawn uniformly inside each sample with >= 2 frames.

    Pairs never mix samples; samples with fewer than 2 frames get none. Pairs come sample by sample, in
    sample order. Random numbers are drawn on the generator's device, so the result is deterministic for
    the generator's state; it is returned on frame_offsets' device.
    """
    check_frame_offsets(frame_offsets)
    if isinstance(pairs_per_sample, bool) or not isinstance(pairs_per_sample, int) or pairs_per_sample < 0:
        raise ValueError(f"pairs_per_sample must be an int >= 0, got {pairs_per_sample!r}")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    offsets = frame_offsets.detach().to(generator.device).long()
    counts = offsets[1:] - offsets[:-1]
    keep = counts >= 2
    n_kept = int(keep.sum())
    if pairs_per_sample == 0 or n_kept == 0:
        return torch.zeros((0, 2), dtype=torch.long, device=frame_offsets.device)
    starts, m = offsets[:-1][keep], counts[keep].to(torch.float64)
    u = torch.rand((n_kept, pairs_per_sample, 2), generator=generator, device=generator.device, dtype=torch.float64)
    # u < 1 in float64, so u * m < m exactly for any realistic m: floor lands in [0, m).
    i = (u[..., 0] * m[:, None]).long()
    j = (u[..., 1] * (m[:, None] - 1)).long()          # draw from the m-1 other frames...
    j = j + (j >= i).long()                              # ...skipping i, so i != j and (i, j) is uniform
    pairs = torch.stack([i, j], dim=-1).add(starts[:, None, None]).reshape(-1, 2)
    return pairs.to(frame_offsets.device)
