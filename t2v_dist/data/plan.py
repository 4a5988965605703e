"""Stages 2-4 of the loader: shard shuffle seeded by (seed, epoch), split by rank, split by worker.

The result is, for each (rank, worker) role, a list of work items (shard id, first position in
the shard's visit order). It is a pure function of (seed, epoch, world size, workers, number of
shards): every process computes the same plan without talking to the others, and a resumed run
recomputes it instead of storing it. In resampled mode a role draws its shards with replacement,
each draw seeded by the role and the draw's number.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Item = tuple[int, int]  # (shard id, first position in the shard's visit order)
_SHARD_ORDER, _VISIT, _DRAW = 1, 2, 3  # keep the random streams apart


def shuffle_shards(num_shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    if not shuffle:
        return list(range(num_shards))
    return np.random.default_rng((_SHARD_ORDER, seed, epoch)).permutation(num_shards).tolist()


def split_by_rank(items: list, rank: int, world_size: int) -> list:
    return items[rank::world_size]


def split_by_worker(items: list, worker: int, num_workers: int) -> list:
    return items[worker::num_workers]


def split_items(items: list[Item], world_size: int, rank: int, num_roles: int) -> list[list[Item]]:
    """This rank's items, one list per worker role."""
    mine = split_by_rank(items, rank, world_size)
    return [split_by_worker(mine, role, num_roles) for role in range(num_roles)]


def epoch_plan(num_shards: int, seed: int, epoch: int, shuffle: bool,
               world_size: int, rank: int, num_roles: int) -> list[list[Item]]:
    order = shuffle_shards(num_shards, seed, epoch, shuffle)
    return split_items([(shard, 0) for shard in order], world_size, rank, num_roles)


def visit_order(num_samples: int, entropy: tuple[int, ...], shuffle: bool) -> list[int]:
    """The order in which a shard's samples are visited: a seeded permutation of its tar order."""
    if not shuffle:
        return list(range(num_samples))
    return np.random.default_rng((_VISIT, *entropy)).permutation(num_samples).tolist()


@dataclass
class RoleWork:
    """One role's work for one epoch, from its resume cursor on."""
    role: int
    epoch: int
    items: list[Item] | None    # None: resampled, the items are drawn
    draw_key: tuple[int, ...]   # resampled: (seed, generation, world size, rank, roles, role)
    start: tuple[int, int]      # cursor: (item, position in that item's visit order)
    done: bool                  # the role's final message of the epoch was consumed

    def num_items(self) -> int | None:
        return None if self.items is None else len(self.items)

    def item(self, i: int, num_shards: int, seed: int, seed_epoch: int) -> tuple[int, int, tuple[int, ...]]:
        """(shard id, first position, entropy) of item i; the entropy seeds its visit order and clips."""
        if self.items is None:
            entropy = (_DRAW, *self.draw_key, i)
            shard = int(np.random.default_rng(entropy).integers(num_shards))
            return shard, 0, entropy
        shard, first = self.items[i]
        return shard, first, (seed, seed_epoch, shard)
