"""The seeded motion-pair sampler."""
from __future__ import annotations

import pytest
import torch

from ops import sample_motion_pairs


def draw(offsets, K, seed):
    return sample_motion_pairs(torch.tensor(offsets), K, torch.Generator().manual_seed(seed))


def test_k_pairs_per_sample_with_two_or_more_frames_inside_the_sample():
    offsets = [0, 1, 3, 3, 10, 12]          # sizes 1, 2, 0, 7, 2
    pairs = draw(offsets, 5, seed=0)
    assert pairs.dtype == torch.int64 and pairs.shape == (3 * 5, 2)
    sample = torch.searchsorted(torch.tensor(offsets), pairs, right=True) - 1
    assert torch.equal(sample[:, 0], sample[:, 1])                          # never across samples
    assert sample[:, 0].tolist() == [1] * 5 + [3] * 5 + [4] * 5             # sample by sample, in order
    assert bool((pairs[:, 0] != pairs[:, 1]).all())
    # a 2-frame sample can only give (1, 2) or (2, 1)
    assert set(map(tuple, pairs[:5].tolist())) <= {(1, 2), (2, 1)}


def test_deterministic_for_a_seed_and_different_across_seeds():
    offsets = [0, 16, 48, 64]
    assert torch.equal(draw(offsets, 8, seed=3), draw(offsets, 8, seed=3))
    assert not torch.equal(draw(offsets, 8, seed=3), draw(offsets, 8, seed=4))


def test_ordered_pairs_are_uniform():
    """m = 4 frames: 12 ordered pairs (i != j), each with probability 1/12."""
    n = 24_000
    pairs = draw([0, 4], n, seed=11)
    counts = torch.zeros(4, 4).index_put_((pairs[:, 0], pairs[:, 1]), torch.ones(n), accumulate=True)
    assert counts.diagonal().sum() == 0
    off_diagonal = counts[~torch.eye(4, dtype=torch.bool)]
    expected = n / 12
    # binomial sd = sqrt(n p (1-p)) ~ 42; 5 sd is a bound a correct sampler essentially never breaks
    assert float((off_diagonal - expected).abs().max()) < 5 * (n * (1 / 12) * (11 / 12)) ** 0.5
    chi2 = float(((off_diagonal - expected) ** 2 / expected).sum())
    assert chi2 < 40.0                     # 11 degrees of freedom: p(chi2 > 40) ~ 3e-5


@pytest.mark.parametrize("offsets", [[0, 1], [0, 0, 1, 1], [0, 0]])
def test_no_pairs_when_no_sample_has_two_frames(offsets):
    pairs = draw(offsets, 4, seed=0)
    assert pairs.shape == (0, 2) and pairs.dtype == torch.int64


def test_zero_pairs_per_sample():
    assert draw([0, 8], 0, seed=0).shape == (0, 2)


def test_result_follows_the_offsets_device_and_the_model_call_pattern():
    """The model draws per sample with local offsets [0, m] and shifts by the sample's start."""
    g = torch.Generator().manual_seed(5)
    local = sample_motion_pairs(torch.tensor([0, 6]), 3, g) + 10
    assert local.device == torch.device("cpu")
    assert bool(((local >= 10) & (local < 16)).all())


@pytest.mark.parametrize("offsets,K,gen,message", [
    ([0, 4], -1, True, "pairs_per_sample must be an int >= 0"),
    ([0, 4], True, True, "pairs_per_sample must be an int >= 0"),
    ([0, 4], 2.0, True, "pairs_per_sample must be an int >= 0"),
    ([0, 4], 2, False, "generator must be a torch.Generator"),
    ([1, 4], 2, True, "must start at 0"),
    ([0, 4, 2], 2, True, "non-decreasing"),
    ([4], 2, True, "B >= 1"),
])
def test_bad_input_raises(offsets, K, gen, message):
    generator = torch.Generator().manual_seed(0) if gen else 0
    with pytest.raises(ValueError, match=message):
        sample_motion_pairs(torch.tensor(offsets), K, generator)
