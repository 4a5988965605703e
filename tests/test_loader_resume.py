"""Exact resume and re-splitting of the shard loader, on real tar shards and real DataLoader workers."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest

from loader_fixtures import keys_of, one_pass, take, write_dataset
from t2v_dist.data import DataConfig, ShardLoader

NUM_SHARDS, PER_SHARD = 6, 7


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    keys = write_dataset(folder, NUM_SHARDS, PER_SHARD)
    return str(folder / "train-{000000..000005}.tar"), keys


def config(shards: str, num_workers: int, **kw) -> DataConfig:
    # ~3 samples per row, 2 rows: batches of ~5 samples are cut inside shards and across them
    return DataConfig(train_shards=shards, frames=4, image_size=8, token_budget=32, max_rows=2,
                      max_caption_tokens=12, num_workers=num_workers, seed=3, **kw)


def roundtrip(state):
    return json.loads(json.dumps(state))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_exact_resume_same_world(dataset, num_workers):
    shards, keys = dataset
    cfg = config(shards, num_workers)
    full = take(ShardLoader(cfg), 22)
    assert {0, 1, 2} <= {e for e, _ in full}, "the reference run must cross two epoch boundaries"
    assert sorted(keys_of(full, 0)) == sorted(keys)
    epoch_ends = [i + 1 for i in range(len(full) - 1) if full[i][0] != full[i + 1][0]]
    cuts = sorted({1, 2, 4, 5, epoch_ends[0] - 1, epoch_ends[0], epoch_ends[0] + 1, epoch_ends[1]})
    for k in cuts:
        first = ShardLoader(cfg)
        head = take(first, k)
        state = roundtrip(first.state_dict())
        resumed = ShardLoader(cfg)
        resumed.load_state_dict(state)
        tail = take(resumed, len(full) - k)
        assert head + tail == full, f"resume after {k} batches (num_workers={num_workers}) diverged"


def test_resume_twice_and_from_fresh_iterators(dataset):
    """Several stops in one run, and a new iter() on the same loader, continue the same stream."""
    shards, _ = dataset
    cfg = config(shards, 2)
    full = take(ShardLoader(cfg), 14)
    loader = ShardLoader(cfg)
    got = take(loader, 3) + take(loader, 2)  # a second iter() continues where the first stopped
    again = ShardLoader(cfg)
    again.load_state_dict(roundtrip(loader.state_dict()))
    got += take(again, 4)
    last = ShardLoader(cfg)
    last.load_state_dict(roundtrip(again.state_dict()))
    got += take(last, 5)
    assert got == full


def test_list_of_all_states_with_the_same_world_resumes_each_rank_exactly(dataset):
    shards, _ = dataset
    cfg = config(shards, 2)
    full = [take(ShardLoader(cfg, rank=r, world_size=2), 9) for r in range(2)]
    old = [ShardLoader(cfg, rank=r, world_size=2) for r in range(2)]
    heads = [take(loader, k) for loader, k in zip(old, (2, 5))]
    states = [roundtrip(loader.state_dict()) for loader in old]
    for r, (head, k) in enumerate(zip(heads, (2, 5))):
        resumed = ShardLoader(cfg, rank=r, world_size=2)
        resumed.load_state_dict(states)
        assert head + take(resumed, 9 - k) == full[r]


def test_every_sample_once_per_epoch_two_ranks_two_workers(dataset):
    shards, keys = dataset
    cfg = config(shards, 2)
    loaders = [ShardLoader(cfg, rank=r, world_size=2, single_pass=True) for r in range(2)]
    for epoch in range(2):
        seen = [k for loader in loaders for k in keys_of(one_pass(loader), epoch)]
        assert sorted(seen) == sorted(keys), f"epoch {epoch}: some sample missing or repeated"
    # the two epochs visit the samples in different orders
    first = ShardLoader(cfg, rank=0, world_size=2, single_pass=True)
    order0 = keys_of(one_pass(first))
    assert order0 != keys_of(one_pass(first))


def _exactly_once(consumed: list[str], keys: list[str], what: str) -> None:
    counts = Counter(consumed)
    repeated = sorted(k for k, n in counts.items() if n > 1)
    missing = sorted(set(keys) - set(counts))
    assert not repeated and not missing, f"{what}: repeated {repeated}, missing {missing}"
    assert len(consumed) == len(keys)


@pytest.mark.parametrize("old_world,new_world,taken", [(2, 1, [3, 2]), (1, 2, [4]), (2, 3, [1, 3]), (3, 2, [2, 0, 1])])
def test_world_size_change_loses_and_repeats_nothing(dataset, old_world, new_world, taken):
    shards, keys = dataset
    cfg = config(shards, 1)
    old = [ShardLoader(cfg, rank=r, world_size=old_world, single_pass=True) for r in range(old_world)]
    consumed = [k for loader, n in zip(old, taken) for k in keys_of(take(loader, n))]
    states = [roundtrip(loader.state_dict()) for loader in old]
    new = [ShardLoader(cfg, rank=r, world_size=new_world, single_pass=True) for r in range(new_world)]
    for loader in new:
        loader.load_state_dict(states)
        batches = one_pass(loader)
        assert {e for e, _ in batches} <= {0}
        consumed += keys_of(batches)
    _exactly_once(consumed, keys, f"epoch 0 after {old_world} -> {new_world} ranks")
    # the next epoch is an ordinary one of the new world size
    nxt = [k for loader in new for k in keys_of(one_pass(loader), 1)]
    _exactly_once(nxt, keys, "epoch 1")


def test_world_size_change_with_ranks_in_different_epochs(dataset):
    """Rank 0 is already in epoch 1 while rank 1 is still in epoch 0: both epochs are completed."""
    shards, keys = dataset
    cfg = config(shards, 2)
    old = [ShardLoader(cfg, rank=r, world_size=2) for r in range(2)]
    rank0 = take(old[0], 30)
    rank0 = rank0[:next(i for i, (e, _) in enumerate(rank0) if e == 1) + 2]  # 2 batches into epoch 1
    old[0] = ShardLoader(cfg, rank=0, world_size=2)
    take(old[0], len(rank0))
    rank1 = take(old[1], 2)
    states = [roundtrip(o.state_dict()) for o in old]
    assert [s["epoch"] for s in states] == [1, 0]
    consumed = rank0 + rank1
    new = [ShardLoader(cfg, rank=r, world_size=3, single_pass=True) for r in range(3)]
    for loader in new:
        loader.load_state_dict(states)
    for epoch in (0, 1):
        got = [k for loader in new for k in keys_of(one_pass(loader), epoch)]
        _exactly_once(keys_of(consumed, epoch) + got, keys, f"epoch {epoch}")
    # a further change of world size, mid-epoch 2, still covers epoch 2 exactly once
    head = [keys_of(take(loader, 1)) for loader in new]
    states = [roundtrip(loader.state_dict()) for loader in new]
    final = ShardLoader(cfg, rank=0, world_size=1, single_pass=True)
    final.load_state_dict(states)
    rest = one_pass(final)
    assert {e for e, _ in rest} == {2}
    _exactly_once([k for h in head for k in h] + keys_of(rest), keys, "epoch 2 after 3 -> 1 ranks")


def test_worker_count_change_is_a_resplit(dataset):
    shards, keys = dataset
    first = ShardLoader(config(shards, 2), single_pass=True)
    consumed = keys_of(take(first, 3))
    second = ShardLoader(config(shards, 0), single_pass=True)
    second.load_state_dict(roundtrip(first.state_dict()))
    _exactly_once(consumed + keys_of(one_pass(second)), keys, "2 workers -> 0 workers")


def test_resampled_stream_is_endless_and_resumes_exactly(dataset):
    shards, keys = dataset
    cfg = config(shards, 2, resampled=True)
    full = take(ShardLoader(cfg), 24)  # more than an epoch's worth: it never stops
    assert set(keys_of(full)) <= set(keys) and len(keys_of(full)) > len(keys)
    first = ShardLoader(cfg)
    head = take(first, 7)
    resumed = ShardLoader(cfg)
    resumed.load_state_dict(roundtrip(first.state_dict()))
    assert head + take(resumed, 17) == full
    bigger = ShardLoader(cfg, rank=1, world_size=2)
    bigger.load_state_dict([roundtrip(first.state_dict())])  # a new generation of draws
    assert len(take(bigger, 3)) == 3


def test_state_mismatches_are_clear_errors(dataset, tmp_path):
    shards, _ = dataset
    cfg = config(shards, 1)
    loaders = [ShardLoader(cfg, rank=r, world_size=2) for r in range(2)]
    state = loaders[0].state_dict()
    with pytest.raises(ValueError, match="seed=3"):
        ShardLoader(replace(cfg, seed=4)).load_state_dict(state)
    with pytest.raises(ValueError, match="list of all old ranks"):
        ShardLoader(cfg, rank=0, world_size=3).load_state_dict(state)
    with pytest.raises(ValueError, match="all ranks 0..1"):
        ShardLoader(cfg).load_state_dict([state, state])
    write_dataset(tmp_path, 6, 2, prefix="other")
    other = replace(cfg, train_shards=str(tmp_path))
    with pytest.raises(ValueError, match="shards="):
        ShardLoader(other).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        ShardLoader(cfg).load_state_dict({**state, "version": 99})
    with pytest.raises(ValueError, match="malformed"):
        ShardLoader(cfg).load_state_dict({k: v for k, v in state.items() if k != "roles"})
