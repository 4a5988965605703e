"""The PyTorch reference of the frame + motion loss, the backend dispatch and the input checks (CPU, in-process)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ops import motion_frame_loss
from ops.motion_loss import BACKEND_ENV
from ops.reference import motion_frame_loss_reference

ROOT = Path(__file__).resolve().parents[1]


def naive_losses(pred, target, offsets, pairs, motion_weighted, tau):
    """The spec written as loops, in float64: an independent check of the vectorised reference.
    Returns (frame, diff, first, motion), each (B,)."""
    pred, target = pred.double(), target.double()
    offsets, pairs = offsets.tolist(), pairs.tolist()
    zero = torch.tensor(0.0, dtype=torch.float64)
    frame_loss, diff_loss, first_loss, motion_loss = [], [], [], []
    for b in range(len(offsets) - 1):
        start, end = offsets[b], offsets[b + 1]
        per_frame, per_diff = [], []
        for f in range(start, end):
            w = 1 + (target[f] - target[f - 1]).abs() if motion_weighted and f > start else torch.ones_like(target[f])
            per_frame.append((w * (pred[f] - target[f]) ** 2).mean())
            if f > start:
                per_diff.append(((pred[f] - pred[f - 1]) - (target[f] - target[f - 1])).abs().mean())
        frame_loss.append(sum(per_frame) / len(per_frame) if per_frame else zero)
        diff_loss.append(sum(per_diff) / len(per_diff) if per_diff else zero)
        first_loss.append((pred[start] - target[start]).abs().mean() if end > start else zero)
        capped = [torch.clamp(((pred[i] - pred[j]) ** 2).mean(), max=tau) for i, j in pairs if start <= i < end]
        motion_loss.append(-sum(capped) / len(capped) if capped else zero)
    return tuple(torch.stack(t) for t in (frame_loss, diff_loss, first_loss, motion_loss))


def random_case(seed, offsets, pairs, P=12, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    F = offsets[-1]
    pred = torch.randn(F, P, generator=g).to(dtype)
    target = torch.rand(F, P, generator=g).mul(2).sub(1).to(dtype)
    return pred, target, torch.tensor(offsets), torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


# 1-frame, 2-frame and 4-frame clips, an empty sample at the end; duplicate pairs; sample 0 has none.
CASES = [
    ([0, 1, 3, 7, 7], [[1, 2], [2, 1], [1, 2], [3, 6], [4, 5], [6, 3]]),
    ([0, 5], [[0, 4], [4, 0], [2, 3]]),                   # B = 1
    ([0, 2, 4], []),                                      # no pairs at all
    ([0, 0, 3], [[0, 2]]),                                # empty sample first
]


@pytest.mark.parametrize("offsets,pairs", CASES)
@pytest.mark.parametrize("motion_weighted", [False, True])
@pytest.mark.parametrize("tau", [0.05, 10.0])
def test_reference_matches_the_spec_written_as_loops(offsets, pairs, motion_weighted, tau):
    pred, target, off, pr = random_case(len(offsets) + len(pairs), offsets, pairs)
    got = motion_frame_loss(pred, target, off, pr, motion_weighted=motion_weighted, tau=tau)
    want = naive_losses(pred, target, off, pr, motion_weighted, tau)
    assert got._fields == ("frame", "diff", "first", "motion") and len(want) == 4
    for g, w in zip(got, want):
        assert g.dtype == torch.float32 and g.shape == (len(offsets) - 1,)
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype,out", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                       (torch.float16, torch.float32), (torch.float64, torch.float64)])
def test_output_dtype_is_at_least_float32(dtype, out):
    pred, target, off, pr = random_case(0, [0, 3], [[0, 1]], dtype=dtype)
    losses = motion_frame_loss_reference(pred, target, off, pr, motion_weighted=True)
    assert all(t.dtype == out for t in losses)


@pytest.mark.parametrize("motion_weighted", [False, True])
def test_gradcheck_of_the_reference_in_float64(motion_weighted):
    pred, target, off, pr = random_case(3, [0, 1, 3, 7], [[1, 2], [2, 1], [3, 6], [4, 5], [3, 6]], P=6,
                                        dtype=torch.float64)
    dists = (pred[pr[:, 0]] - pred[pr[:, 1]]).pow(2).mean(1).unique()   # sorted, duplicates (3, 6) merged
    tau = float(dists[1:3].mean())   # between two distances, away from the kink: the cap is active for some pairs only
    pred.requires_grad_()

    def every_term(p):
        return tuple(motion_frame_loss(p, target, off, pr, motion_weighted=motion_weighted, tau=tau))

    assert torch.autograd.gradcheck(every_term, (pred,), eps=1e-6, atol=1e-8)


def test_target_gets_a_gradient_from_the_reference():
    pred, target, off, pr = random_case(1, [0, 3], [[0, 2]])
    target.requires_grad_()
    losses = motion_frame_loss(pred, target, off, pr, motion_weighted=True)
    (losses.frame.sum() + losses.diff.sum()).backward()
    assert target.grad is not None and target.grad.abs().sum() > 0


def test_auto_picks_the_reference_on_cpu_and_logs_it_once(caplog, monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    import ops.motion_loss as dispatch
    monkeypatch.setattr(dispatch, "_logged", set())
    pred, target, off, pr = random_case(2, [0, 4], [[0, 3]])
    with caplog.at_level(logging.INFO, logger="ops.motion_loss"):
        for _ in range(3):
            motion_frame_loss(pred, target, off, pr)
    messages = [r.getMessage() for r in caplog.records if r.name == "ops.motion_loss"]
    assert messages == ["motion_frame_loss: reference backend (auto: cpu tensors)"]


def test_environment_variable_forces_a_backend(caplog, monkeypatch):
    pred, target, off, pr = random_case(2, [0, 4], [[0, 3]])
    monkeypatch.setenv(BACKEND_ENV, "reference")
    with caplog.at_level(logging.INFO, logger="ops.motion_loss"):
        motion_frame_loss(pred, target, off, pr)
    assert any(f"forced by ${BACKEND_ENV}" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv(BACKEND_ENV, "cuda-please")
    with pytest.raises(ValueError, match=BACKEND_ENV):
        motion_frame_loss(pred, target, off, pr)


def _python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", BACKEND_ENV)}
    full_env.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=120)


def test_forcing_triton_on_cpu_without_the_interpreter_raises_clearly():
    code = """
import torch
from ops import motion_frame_loss
p = torch.randn(3, 5)
try:
    motion_frame_loss(p, p.clone(), torch.tensor([0, 3]), torch.tensor([[0, 1]]), backend="triton")
except RuntimeError as e:
    print("ERR", e)
"""
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert "needs CUDA tensors (got cpu) or TRITON_INTERPRET=1" in out.stdout


def test_without_triton_the_module_imports_and_falls_back():
    code = """
import sys
sys.modules["triton"] = None   # makes `import triton` raise ImportError, as on a machine without it
import torch
from ops import motion_frame_loss
p = torch.randn(3, 5)
frame, diff, first, motion = motion_frame_loss(p, p + 1, torch.tensor([0, 3]), torch.tensor([[0, 1]]))
print("OK", float(frame[0]), round(float(diff[0]), 6), float(first[0]))
try:
    motion_frame_loss(p, p, torch.tensor([0, 3]), torch.tensor([[0, 1]]), backend="triton")
except RuntimeError as e:
    print("ERR", e)
"""
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert "OK 1.0 0.0 1.0" in out.stdout
    assert "Triton does not import" in out.stdout


GOOD = dict(pred=torch.zeros(4, 6), target=torch.zeros(4, 6), frame_offsets=torch.tensor([0, 2, 4]),
            pairs=torch.tensor([[0, 1], [2, 3]]))


@pytest.mark.parametrize("change,message", [
    (dict(pred=torch.zeros(4, 6, 1)), "pred must have shape"),
    (dict(target=torch.zeros(4, 5)), "one shape"),
    (dict(pred=torch.zeros(4, 6, dtype=torch.long)), "pred must be a floating tensor"),
    (dict(pred=torch.zeros(4, 0), target=torch.zeros(4, 0)), "P = 0"),
    (dict(frame_offsets=torch.tensor([0, 2, 4.0])), "frame_offsets must be an integer tensor"),
    (dict(frame_offsets=torch.tensor([4])), "B >= 1"),
    (dict(frame_offsets=torch.tensor([1, 2, 4])), "must start at 0"),
    (dict(frame_offsets=torch.tensor([0, 3, 2, 4])), "non-decreasing"),
    (dict(frame_offsets=torch.tensor([0, 2, 5])), "end at the number of frames 4"),
    (dict(pairs=torch.tensor([0, 1])), r"pairs must have shape \(N_pairs, 2\)"),
    (dict(pairs=torch.tensor([[0.0, 1.0]])), "pairs must be an integer tensor"),
    (dict(pairs=torch.tensor([[0, 4]])), r"pairs must index frames in \[0, 4\)"),
    (dict(pairs=torch.tensor([[0, -1]])), r"pairs must index frames in \[0, 4\)"),
    (dict(pairs=torch.tensor([[0, 1], [1, 2]])), r"pair 1 = \[1, 2\] spans samples \[0, 1\]"),
    (dict(tau=0.0), "tau must be a finite number > 0"),
    (dict(tau=float("nan")), "tau must be a finite number > 0"),
    (dict(motion_weighted=1), "motion_weighted must be a bool"),
    (dict(backend="cuda"), "backend must be one of"),
])
def test_bad_input_raises_a_clear_error(change, message):
    kwargs = {**GOOD, **change}
    with pytest.raises(ValueError, match=message):
        motion_frame_loss(**kwargs)


def test_fuzzed_random_inputs_never_crash_the_checks():
    """Random offsets/pairs, valid or broken by one random change: a clear ValueError or the loop version's answer."""
    g = torch.Generator().manual_seed(7)
    randint = lambda lo, hi, shape=(): torch.randint(lo, hi, shape, generator=g)
    accepted = rejected = 0
    for _ in range(80):
        F = int(randint(0, 7))
        cuts = randint(0, F + 1, (int(randint(0, 4)),)).sort().values
        offsets = torch.cat([torch.tensor([0]), cuts, torch.tensor([F])])
        sample = torch.searchsorted(offsets, torch.arange(F), right=True) - 1
        frames = randint(0, max(F, 1), (int(randint(0, 5)),)) if F else torch.zeros(0, dtype=torch.long)
        partner = torch.tensor([int(randint(offsets[s], offsets[s + 1])) for s in sample[frames].tolist()],
                               dtype=torch.long)
        pairs = torch.stack([frames, partner], 1) if len(frames) else torch.zeros(0, 2, dtype=torch.long)
        if bool(randint(0, 2)):   # break one value
            target_tensor = offsets if bool(randint(0, 2)) or not pairs.numel() else pairs
            flat = target_tensor.view(-1)
            flat[int(randint(0, flat.numel()))] += int(randint(-3, 4))
        pred, target = torch.randn(F, 3, generator=g), torch.randn(F, 3, generator=g)
        try:
            got = motion_frame_loss(pred, target, offsets, pairs, motion_weighted=True)
        except ValueError:
            rejected += 1
            continue
        accepted += 1
        for a, b in zip(got, naive_losses(pred, target, offsets, pairs, True, 0.1)):
            torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-7)
    assert accepted > 20 and rejected > 10
