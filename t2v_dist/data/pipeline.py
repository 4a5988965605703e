"""The loader's pipeline for one (rank, worker) role, written as a list of stages.

    1. shard list            shardlist.expand_shards (main process; ids index `urls`)
    2. shuffle by (seed, epoch) \
    3. split by node (rank)      > plan.py: the role's work items, a pure function of its assignment
    4. split by worker          /
    5. tar -> samples         tario indexes each shard's members, then reads its samples one at a
                              time in a seeded permutation from the resume cursor on (non-seekable
                              shards are buffered whole, up to a limit); read errors are counted
    6. decode                 .frames.npy / .mp4 / .txt / .json only, never unpickle
    7. clip sampling          T frames, stride, seeded start
    8. tokenize               encode_caption, max_caption_tokens
    9. pack                   token-budget batches (first_fit decides when a batch is full)

Stages pass a stream of `Sample`s and `Skip`s; a stage that rejects a sample turns it into a
`Skip(reason)` in place, so error counts stay in stream order and travel with the batch that
passes them. A batch carries the cursor of the first sample it does NOT contain (the sample
that did not fit, carried over to the next batch): resuming there rebuilds the same batches.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from torch.utils.data import IterableDataset, get_worker_info

from t2v_dist.data.clips import sample_clip
from t2v_dist.data.config import DataConfig
from t2v_dist.data.decode import decode_sample
from t2v_dist.data.plan import RoleWork, visit_order
from t2v_dist.data.records import Sample, SampleError, Skip, WorkerBatch, zero_counts
from t2v_dist.data.tario import open_shard
from t2v_dist.packing import first_fit, pack_samples, sample_length
from t2v_dist.tokenizer import encode_caption, load_tokenizer

Event = Sample | Skip


@dataclass
class PipelineContext:
    """Everything a worker needs besides its RoleWork; small and picklable."""
    cfg: DataConfig
    urls: list[str]
    shuffle: bool
    seed_epoch: int   # the epoch that seeds visit orders and clips (always 0 for val)
    pack_seed: int    # seeds noise per sample (see packing.sample_seed)


def visit_shards(work: RoleWork, ctx: PipelineContext) -> Iterator[Event]:
    """Stage 5: the role's shards from its cursor on; each shard's samples in a seeded order.

    A shard is indexed first (its member headers); each sample's bytes are read when it is
    visited. A shard's read problems are emitted after its last sample, so that a run resumed
    inside the shard (which has not passed them yet) counts them exactly once.
    """
    i, pos = work.start
    limit = ctx.cfg.max_buffered_shard_mb * 2**20
    while work.num_items() is None or i < work.num_items():
        shard, first, entropy = work.item(i, len(ctx.urls), ctx.cfg.seed, ctx.seed_epoch)
        with open_shard(ctx.urls[shard], limit) as index:
            order = visit_order(len(index.samples), entropy, ctx.shuffle)
            for p in range(pos if i == work.start[0] else first, len(order)):
                members = index.read(order[p])
                if members is None:  # the file changed after it was indexed: the rest is lost
                    yield Skip("truncated_tar")
                    break
                yield Sample(key=index.samples[order[p]].key, item=i, pos=p, index=order[p],
                             entropy=(*entropy, order[p]), members=members)
            for reason in index.problems:
                yield Skip(reason)
        i += 1


def map_samples(events: Iterable[Event], fn: Callable[[Sample], Sample]) -> Iterator[Event]:
    """Apply one per-sample stage; a SampleError turns the sample into a counted Skip."""
    for event in events:
        if isinstance(event, Skip):
            yield event
            continue
        try:
            yield fn(event)
        except SampleError as exn:
            yield Skip(exn.reason)


def tokenize(sample: Sample, max_tokens: int, tokenizer_path: str | None) -> Sample:
    """Stage 8 (decode_caption already rejected empty captions)."""
    try:
        sample.tokens = encode_caption(load_tokenizer(tokenizer_path), sample.caption, max_tokens)
    except ValueError as exn:
        raise SampleError("caption_too_long", str(exn)) from None
    return sample


def pack_batches(events: Iterable[Event], work: RoleWork, ctx: PipelineContext) -> Iterator[WorkerBatch]:
    """Stage 9: cut the stream greedily into batches of at most max_rows rows of token_budget.

    A batch is cut when first_fit can no longer place the next sample; that sample opens the
    next batch and is the cursor of the cut. The role's last message is `final` (it may hold no
    batch, only the errors counted after its last sample).
    """
    cfg = ctx.cfg
    pending: list[Sample] = []
    lengths: list[int] = []
    errors = zero_counts()

    def message(cursor: tuple[int, int], final: bool) -> WorkerBatch:
        batch = None
        if pending:
            batch = pack_samples([{"key": s.key, "tokens": s.tokens, "frames": s.frames} for s in pending],
                                 cfg.token_budget, max_rows=cfg.max_rows, seed=ctx.pack_seed,
                                 image_size=cfg.image_size)
        return WorkerBatch(work.role, work.epoch, cursor, final, errors, batch)

    for event in events:
        if isinstance(event, Skip):
            errors[event.reason] += 1
            continue
        length = sample_length(len(event.tokens), len(event.frames))
        if pending and first_fit(lengths + [length], cfg.token_budget, cfg.max_rows) is None:
            yield message((event.item, event.pos), final=False)
            pending, lengths, errors = [], [], zero_counts()
        pending.append(event)
        lengths.append(length)
    yield message((work.num_items(), 0), final=True)


def role_batches(work: RoleWork, ctx: PipelineContext) -> Iterator[WorkerBatch]:
    """Stages 5-9 for one role (stages 1-4 made `work`)."""
    cfg = ctx.cfg
    pipeline = [
        # 5. tar -> samples, from the resume cursor on; read errors skipped and counted
        functools.partial(visit_shards, ctx=ctx),
        # 6. explicit decoders, nothing unpickled; frames of the wrong size are skipped
        functools.partial(map_samples, fn=functools.partial(decode_sample, image_size=cfg.image_size)),
        # 7. clip: T frames at a stride, start seeded by (seed, epoch, shard, index)
        functools.partial(map_samples, fn=functools.partial(
            sample_clip, frames=cfg.frames, stride=cfg.stride, min_frames=cfg.min_frames)),
        # 8. tokenize; captions over max_caption_tokens are skipped
        functools.partial(map_samples, fn=functools.partial(
            tokenize, max_tokens=cfg.max_caption_tokens, tokenizer_path=cfg.tokenizer_path)),
        # 9. pack into token-budget batches
        functools.partial(pack_batches, work=work, ctx=ctx),
    ]
    stream = work
    for stage in pipeline:
        stream = stage(stream)
    return stream


class EpochDataset(IterableDataset):
    """One epoch of one rank. DataLoader worker j plays role (rotation + j) % roles.

    The DataLoader hands out its workers' batches round-robin starting at worker 0; rotating
    the roles makes a resumed epoch continue with the role the interrupted one would have
    served next. A role whose final message was consumed yields nothing and drops out of the
    rotation, exactly as it did in the interrupted run.
    """

    def __init__(self, works: list[RoleWork], ctx: PipelineContext, rotation: int):
        self.works, self.ctx, self.rotation = works, ctx, rotation

    def __iter__(self) -> Iterator[WorkerBatch]:
        info = get_worker_info()
        if info is not None and info.num_workers != len(self.works):
            raise RuntimeError(f"DataLoader has {info.num_workers} workers, the plan has {len(self.works)} roles")
        work = self.works[(self.rotation + (0 if info is None else info.id)) % len(self.works)]
        if not work.done:
            yield from role_batches(work, self.ctx)
