"""ShardLoader: one rank's stream of PackedBatch from tar shards, with exact resume.

    loader = ShardLoader(cfg, "train", rank, world_size)
    loader.load_state_dict(saved)          # optional: one state, or the list of all old ranks' states
    for batch in loader: ...               # train: epochs forever; val: one pass
    saved = loader.state_dict()            # what the training loop has consumed so far

Each epoch runs one torch DataLoader (batch_size=None) whose workers yield WorkerBatch; the
main process records, per worker role, the cursor after the last batch it handed out. Batches
prefetched by workers but not yet handed out are therefore not part of the state.
"""
from __future__ import annotations

import atexit
import weakref
from typing import Iterator

import numpy as np
from torch.utils.data import DataLoader

from t2v_dist.data.config import DataConfig
from t2v_dist.data.pipeline import EpochDataset, PipelineContext
from t2v_dist.data.records import WorkerBatch
from t2v_dist.data.shardlist import expand_shards, shards_fingerprint
from t2v_dist.data.state import RankState, check_identity, resplit
from t2v_dist.data.workers import ignore_preemption_signals, worker_context
from t2v_dist.packing import PackedBatch
from t2v_dist.tokenizer import load_tokenizer

SPLITS = ("train", "val")


class ShardLoader:
    """Iterable of PackedBatch for ONE rank.

    - `split="train"` runs epochs forever (the epoch advances by itself); `split="val"` makes
      one pass per `iter()`, always the same samples and clips. `single_pass` overrides this.
    - `iter()` always continues from the consumed position; use one iterator at a time.
    - Non-resampled: every shard is read once per epoch by exactly one (rank, worker); there
      must be at least world_size * num_workers shards (val lowers its workers to fit).
    - `resampled=True` (train): each worker draws shards with replacement, an endless stream.
    """

    def __init__(self, cfg: DataConfig, split: str = "train", rank: int = 0, world_size: int = 1,
                 epoch: int = 0, *, single_pass: bool | None = None):
        if split not in SPLITS:
            raise ValueError(f"split={split!r}, expected one of {SPLITS}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is outside world_size={world_size}")
        self.cfg, self.split, self.rank, self.world_size = cfg, split, rank, world_size
        self.urls = expand_shards(getattr(cfg, f"{split}_shards"), field=f"DataConfig.{split}_shards")
        self.single_pass = split == "val" if single_pass is None else single_pass
        resampled = cfg.resampled and split == "train"
        roles = max(1, cfg.num_workers)
        if split == "val":  # workers are an internal detail: a small val set should still load
            roles = max(1, min(roles, len(self.urls) // world_size))
        if not resampled and len(self.urls) < world_size * roles:
            raise ValueError(
                f"{split} has {len(self.urls)} shards, fewer than ranks x workers = {world_size} x {roles}: "
                f"every (rank, worker) needs its own shard. Write more, smaller shards or lower num_workers"
                + (", or set resampled=True" if split == "train" else ""))
        load_tokenizer(cfg.tokenizer_path)  # fail fast on a bad path, here rather than in a worker
        self._state = RankState(split=split, seed=cfg.seed, shuffle=cfg.shuffle and split == "train",
                                resampled=resampled, shards=shards_fingerprint(self.urls),
                                world_size=world_size, rank=rank, num_roles=roles)
        self._state.start_epoch(epoch)

    @property
    def epoch(self) -> int:
        """The epoch of the batches being handed out now (a generation in resampled mode)."""
        return self._state.epoch

    def __iter__(self) -> Iterator[PackedBatch]:
        while True:
            state = self._state
            seed_epoch = state.epoch if self.split == "train" else 0  # val: the same clips every pass
            ctx = PipelineContext(cfg=self.cfg, urls=self.urls, shuffle=state.shuffle, seed_epoch=seed_epoch,
                                  pack_seed=_pack_seed(self.cfg.seed, seed_epoch))
            dataset = EpochDataset(state.role_works(), ctx, rotation=state.next_role)
            for wb in self._worker_batches(dataset):
                state.consume(wb)
                if wb.batch is not None:
                    yield wb.batch
            state.finish_epoch()
            if self.single_pass:
                return

    def _worker_batches(self, dataset: EpochDataset) -> Iterator[WorkerBatch]:
        if self.cfg.num_workers == 0:
            yield from dataset
            return
        # Workers come from a fork server (workers.py): forking the trainer itself can deadlock a worker.
        # They ignore the scheduler's preemption signals (inherited from the server; worker_init_fn also
        # covers a server that another library started first).
        loader = DataLoader(dataset, batch_size=None, num_workers=self._state.num_roles,
                            prefetch_factor=self.cfg.prefetch_factor, pin_memory=self.cfg.pin_memory,
                            persistent_workers=False, multiprocessing_context=worker_context(self.cfg.tokenizer_path),
                            worker_init_fn=ignore_preemption_signals)
        workers = iter(loader)
        _LIVE_WORKER_ITERATORS.add(workers)
        try:
            yield from workers
        finally:
            # also when a worker's error (e.g. ShardTooLarge) propagates: DataLoader leaves its workers
            # running then
            workers._shutdown_workers()

    def state_dict(self) -> dict:
        """JSON-serialisable position of this rank: save it for EVERY rank."""
        return self._state.to_dict()

    def load_state_dict(self, state: dict | list[dict]) -> None:
        """Resume from one rank's state, or from the states of all ranks of the old run.

        Same world size and workers: this rank's state is restored and the stream continues
        exactly. Otherwise (a list of all old ranks' states, or one state from a 1-rank run) the
        unfinished work of the old run's epochs is split again over the new ranks and workers.
        """
        states = [RankState.from_dict(s) for s in (state if isinstance(state, list) else [state])]
        if not states:
            raise ValueError("load_state_dict got an empty list of states")
        fresh = self._state
        for s in states:
            check_identity(s, fresh)
        same_layout = [s for s in states if (s.world_size, s.rank, s.num_roles) ==
                       (fresh.world_size, fresh.rank, fresh.num_roles)]
        if same_layout and (len(states) == 1 or len(states) == fresh.world_size):
            self._state = same_layout[0]
            return
        if len(states) == 1 and states[0].world_size > 1:
            raise ValueError(f"state is from rank {states[0].rank} of {states[0].world_size} ranks with "
                             f"{states[0].num_roles} workers; this loader is rank {fresh.rank} of "
                             f"{fresh.world_size} with {fresh.num_roles}: pass the list of all old ranks' states")
        self._state = resplit(states, fresh)

    def error_counts(self) -> dict[str, int]:
        """Skipped members/samples per reason, in the batches this rank has consumed (all workers)."""
        return dict(self._state.errors)


def _pack_seed(seed: int, epoch: int) -> int:
    """Noise seeds vary per epoch, but not with rank, worker or packing."""
    return int(np.random.default_rng((seed, epoch)).integers(2**31))


# Workers ignore SIGTERM, which is also how multiprocessing's own exit hook stops daemon children
# (terminate, then join): shut live DataLoader workers down the regular way first. atexit runs
# hooks last-registered first, so this runs before multiprocessing's.
_LIVE_WORKER_ITERATORS: "weakref.WeakSet" = weakref.WeakSet()


@atexit.register
def _shutdown_live_workers() -> None:
    for workers in list(_LIVE_WORKER_ITERATORS):
        workers._shutdown_workers()
