"""Input checks shared by the loss entry point and the pair sampler: bad input raises a ValueError naming
the argument, before any kernel could read out of bounds."""
from __future__ import annotations

import torch


def _check_index_tensor(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {t.dtype}")


def _check_offsets_shape(frame_offsets: torch.Tensor) -> None:
    _check_index_tensor("frame_offsets", frame_offsets)
    if frame_offsets.dim() != 1 or frame_offsets.numel() < 2:
        raise ValueError(f"frame_offsets must have shape (B+1,) with B >= 1, got {tuple(frame_offsets.shape)}")


def _check_pairs_shape(pairs: torch.Tensor) -> None:
    _check_index_tensor("pairs", pairs)
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must have shape (N_pairs, 2), got {tuple(pairs.shape)}")


def _offsets_conditions(offsets: torch.Tensor, num_frames: int | None) -> list[torch.Tensor]:
    """Scalar bool tensors, True when valid: starts at 0, non-decreasing, ends at num_frames."""
    ends = offsets[-1] == num_frames if num_frames is not None else torch.ones((), dtype=torch.bool,
                                                                              device=offsets.device)
    return [offsets[0] == 0, (offsets[1:] >= offsets[:-1]).all(), ends]


def _raise_offsets_error(ok: list[bool], offsets: torch.Tensor, num_frames: int | None) -> None:
    if not ok[0]:
        raise ValueError(f"frame_offsets must start at 0, got {int(offsets[0])}")
    if not ok[1]:
        raise ValueError(f"frame_offsets must be non-decreasing, got {offsets.tolist()}")
    if not ok[2]:
        raise ValueError(f"frame_offsets must end at the number of frames {num_frames}, got {int(offsets[-1])}")


def check_frame_offsets(frame_offsets: torch.Tensor, num_frames: int | None = None) -> None:
    """(B+1,) integer offsets, B >= 1, starting at 0, non-decreasing, ending at num_frames when given."""
    _check_offsets_shape(frame_offsets)
    offsets = frame_offsets.detach().long()
    ok = torch.stack(_offsets_conditions(offsets, num_frames)).tolist()   # one host sync on CUDA
    _raise_offsets_error(ok, offsets, num_frames)


def check_loss_indices(frame_offsets: torch.Tensor, pairs: torch.Tensor, num_frames: int) -> None:
    """frame_offsets as in check_frame_offsets; pairs (N, 2) integer frame indices in [0, num_frames) with
    both frames of a pair in one sample. All value checks cost one host sync when the indices are on CUDA
    (none when they are on the CPU)."""
    _check_offsets_shape(frame_offsets)
    _check_pairs_shape(pairs)
    offsets = frame_offsets.detach().long()
    conditions = _offsets_conditions(offsets, num_frames)
    p = pairs.detach().to(offsets.device).long()
    if p.numel():
        in_range = (p >= 0).all() & (p < num_frames).all()
        # valid offsets: searchsorted(right) - 1 is the sample holding a frame (empty samples are skipped)
        sample = torch.searchsorted(offsets, p.clamp(0, max(num_frames - 1, 0)), right=True) - 1
        conditions += [in_range, (sample[:, 0] == sample[:, 1]).all()]
    ok = torch.stack(conditions).tolist()
    _raise_offsets_error(ok, offsets, num_frames)
    if p.numel() and not ok[3]:
        raise ValueError(f"pairs must index frames in [0, {num_frames}), got values in [{int(p.min())}, {int(p.max())}]")
    if p.numel() and not ok[4]:
        bad = int((sample[:, 0] != sample[:, 1]).nonzero()[0, 0])
        raise ValueError(f"pairs must join two frames of one sample; pair {bad} = {p[bad].tolist()} "
                         f"spans samples {sample[bad].tolist()}")


def check_frames(pred: torch.Tensor, target: torch.Tensor) -> None:
    """pred and target: (F, P) floating tensors of one shape on one device, P >= 1."""
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must have shape (frames, 3*H*W), got {tuple(t.shape)}")
        if not t.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating tensor, got {t.dtype}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have one shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.shape[1] == 0:
        raise ValueError("pred and target must have at least one pixel value per frame, got P = 0")
    if pred.device != target.device:
        raise ValueError(f"pred and target must be on one device, got {pred.device} and {target.device}")
