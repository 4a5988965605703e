"""The loader's position in its stream: what one rank's main process has consumed.

A rank's state is small and JSON-serialisable: per worker role a cursor (item, position in the
shard's visit order) into its work list, the role that the DataLoader hands out next, the
cumulative error counts, and, only after a world-size change, the explicit work lists of the
epochs that the old ranks had left unfinished. Plans themselves are recomputed (`plan.py`).

Resuming with the same world size and workers restores one rank's state: the stream continues
exactly. With another world size (or number of workers) every new rank receives the states of
all old ranks; the work they left in each unfinished epoch (unstarted shards plus the unvisited
rest of partly read ones) is split again over the new ranks and workers, so no sample of those
epochs is lost or repeated. Later epochs use the new world size's ordinary plans.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from t2v_dist.data.plan import Item, RoleWork, epoch_plan, shuffle_shards, split_items
from t2v_dist.data.records import ERROR_REASONS, WorkerBatch, zero_counts

STATE_VERSION = 1
# Fields that fix which samples come in which order; a state only loads where they match.
IDENTITY_FIELDS = ("split", "seed", "shuffle", "resampled", "shards")


@dataclass
class RoleProgress:
    item: int = 0        # cursor: index into the role's work list ...
    pos: int = 0         # ... and position in that shard's visit order
    done: bool = False   # the role's final message of the epoch was consumed


@dataclass
class RankState:
    split: str
    seed: int
    shuffle: bool
    resampled: bool
    shards: dict                     # shards_fingerprint(urls)
    world_size: int
    rank: int
    num_roles: int
    epoch: int = 0                   # in resampled mode: a generation, bumped by a world-size change
    roles: list[RoleProgress] = field(default_factory=list)
    next_role: int = 0               # the role whose batch the DataLoader hands out next
    plans: dict[int, list[list[Item]]] = field(default_factory=dict)  # explicit plans after a re-split
    errors: dict[str, int] = field(default_factory=zero_counts)
    version: int = STATE_VERSION

    # ---- plans ------------------------------------------------------------------------------
    def plan(self, epoch: int) -> list[list[Item]] | None:
        """Per-role work lists of `epoch` (None in resampled mode: shards are drawn)."""
        if self.resampled:
            return None
        if epoch in self.plans:
            return self.plans[epoch]
        return epoch_plan(self.shards["count"], self.seed, epoch, self.shuffle,
                          self.world_size, self.rank, self.num_roles)

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.plans = {e: p for e, p in self.plans.items() if e >= epoch}
        plan = self.plan(epoch)
        if plan is None:
            self.roles = [RoleProgress() for _ in range(self.num_roles)]
        else:
            self.roles = [RoleProgress(0, items[0][1] if items else 0) for items in plan]
        self.next_role = 0

    def role_works(self) -> list[RoleWork]:
        plan = self.plan(self.epoch)
        return [RoleWork(role=j, epoch=self.epoch, items=None if plan is None else plan[j],
                         draw_key=(self.seed, self.epoch, self.world_size, self.rank, self.num_roles, j),
                         start=(p.item, p.pos), done=p.done)
                for j, p in enumerate(self.roles)]

    # ---- consumption (main process) ---------------------------------------------------------
    def consume(self, wb: WorkerBatch) -> None:
        if wb.epoch != self.epoch or not 0 <= wb.role < self.num_roles or self.roles[wb.role].done:
            raise RuntimeError(f"loader got a batch of role {wb.role}, epoch {wb.epoch} while in epoch "
                               f"{self.epoch} with {self.num_roles} roles: worker roles are out of step")
        self.roles[wb.role] = RoleProgress(wb.cursor[0], wb.cursor[1], wb.final)
        for reason, n in wb.errors.items():
            self.errors[reason] += n
        self.next_role = (wb.role + 1) % self.num_roles

    def finish_epoch(self) -> None:
        if self.resampled or not all(p.done for p in self.roles):
            raise RuntimeError(f"epoch {self.epoch} ended before every worker role finished "
                               f"({[p.done for p in self.roles]}): a worker stopped early")
        self.start_epoch(self.epoch + 1)

    def remaining(self, epoch: int) -> list[Item]:
        """Items of `epoch` this rank has not consumed: unstarted shards and the rest of partly read ones."""
        if epoch < self.epoch:
            return []
        plan = self.plan(epoch)
        if epoch > self.epoch:
            return [item for items in plan for item in items]
        left = []
        for items, p in zip(plan, self.roles):
            if p.done or p.item >= len(items):
                continue
            left.append((items[p.item][0], p.pos))
            left.extend(items[p.item + 1:])
        return left

    # ---- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = asdict(self)
        out["plans"] = {str(e): [[list(item) for item in items] for items in plan] for e, plan in self.plans.items()}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "RankState":
        if not isinstance(d, dict):
            raise ValueError(f"loader state must be a dict, got {type(d).__name__}")
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {d.get('version')!r}, this loader reads {STATE_VERSION}")
        try:
            state = cls(**{**d, "roles": [RoleProgress(**r) for r in d["roles"]],
                           "plans": {int(e): [[(int(s), int(p)) for s, p in items] for items in plan]
                                     for e, plan in d["plans"].items()},
                           "errors": {**zero_counts(), **{k: int(v) for k, v in d["errors"].items()}}})
        except (KeyError, TypeError, ValueError) as exn:
            raise ValueError(f"malformed loader state: {exn!r}") from None
        unknown = set(state.errors) - set(ERROR_REASONS)
        if unknown:
            raise ValueError(f"loader state has unknown error reasons {sorted(unknown)}")
        if len(state.roles) != state.num_roles or not 0 <= state.rank < state.world_size:
            raise ValueError(f"loader state of rank {state.rank}/{state.world_size} has {len(state.roles)} "
                             f"roles, expected num_roles={state.num_roles}")
        return state


def check_identity(state: RankState, expected: RankState) -> None:
    for name in IDENTITY_FIELDS:
        if getattr(state, name) != getattr(expected, name):
            raise ValueError(f"loader state was saved with {name}={getattr(state, name)!r}, "
                             f"this loader has {name}={getattr(expected, name)!r}")


def resplit(states: list[RankState], fresh: RankState) -> RankState:
    """`fresh`'s rank's share of the work that the old ranks (`states`, all of them) left."""
    old_world = states[0].world_size
    if sorted(s.rank for s in states) != list(range(old_world)) or any(s.world_size != old_world for s in states):
        raise ValueError(f"need the states of all ranks 0..{old_world - 1} of the old run, got ranks "
                         f"{sorted(s.rank for s in states)} of world sizes {sorted({s.world_size for s in states})}")
    if len({s.num_roles for s in states}) != 1:
        raise ValueError("old rank states disagree on the number of workers")
    new = RankState(**{**asdict(fresh), "roles": []})
    # Error counts: each old rank's counts go to exactly one new rank, so totals are kept.
    new.errors = zero_counts()
    for s in states:
        if s.rank % fresh.world_size == fresh.rank:
            for reason, n in s.errors.items():
                new.errors[reason] += n
    first, last = min(s.epoch for s in states), max(s.epoch for s in states)
    if fresh.resampled:  # no epochs to complete: a new generation of draws
        new.start_epoch(last + 1)
        return new
    for epoch in range(first, last + 1):
        left = [item for s in states for item in s.remaining(epoch)]
        shards = [shard for shard, _ in left]
        if len(set(shards)) != len(shards):
            raise ValueError(f"old rank states overlap in epoch {epoch}: a shard is claimed twice")
        position = {shard: i for i, shard in enumerate(shuffle_shards(fresh.shards["count"], fresh.seed, epoch, fresh.shuffle))}
        left.sort(key=lambda item: position[item[0]])
        new.plans[epoch] = split_items(left, fresh.world_size, fresh.rank, fresh.num_roles)
    new.start_epoch(first)
    return new
