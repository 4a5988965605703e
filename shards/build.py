"""The shard builder: plan inputs into shards, build the missing ones in parallel, summarise.

Assignment is deterministic: the source's sorted inputs are split into train/val by a stable
hash, and each split is cut into consecutive runs of `samples_per_shard` INPUTS (one input
may yield several clips, or none). Shard k of a split therefore always holds the same inputs,
which is what makes an incremental rerun correct: a shard is complete when its stats file
exists and records the same fingerprint (inputs, their file versions and the build settings);
otherwise it is (re)built.

Every input ends up either as samples or as an error (path + reason) in its shard's stats:
nothing is dropped silently.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from shards.keys import SPLITS, check_key, split_of
from shards.source import InputError, InputItem, Source
from shards.writer import ShardWriter, shard_stem, stats_path, write_json_atomic

FORMAT_VERSION = 1  # bump when the bytes written for the same inputs change: old shards become stale
MODES = ("incremental", "overwrite")


@dataclass(frozen=True)
class BuildConfig:
    out: str
    samples_per_shard: int = 1000  # inputs per shard (clip indices, videos, manifest rows, input samples)
    workers: int = 1               # processes; 0 = one per CPU core
    mode: str = "incremental"      # incremental: keep complete shards; overwrite: rebuild all
    val_fraction: float = 0.05
    prefix: str = ""               # shard names: [PREFIX-]train-000000.tar
    progress: bool = True
    task_index: int = 0            # this task builds shards task_index, task_index + num_tasks, ... (array jobs)
    num_tasks: int = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {self.samples_per_shard}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = all cores), got {self.workers}")
        if not 0.0 <= self.val_fraction <= 1.0:
            raise ValueError(f"val_fraction must be in [0, 1], got {self.val_fraction}")
        if self.prefix:
            check_key(self.prefix)
        if self.num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {self.num_tasks}")
        if not 0 <= self.task_index < self.num_tasks:
            raise ValueError(f"task_index must be in [0, num_tasks={self.num_tasks}), got {self.task_index}")


@dataclass(frozen=True)
class ShardJob:
    source: Source
    tar_path: str
    split: str
    index: int
    items: tuple[InputItem, ...]
    fingerprint: str


def plan_jobs(source: Source, items: list[InputItem], config: BuildConfig) -> list[ShardJob]:
    """Shards of every split, in order: train-000000.., then val-000000.."""
    by_split: dict[str, list[InputItem]] = {split: [] for split in SPLITS}
    for item in items:
        by_split[split_of(item.split_key, config.val_fraction)].append(item)
    settings = json.dumps({"format": FORMAT_VERSION, "kind": source.kind, "settings": source.settings()},
                          sort_keys=True)
    jobs = []
    for split, split_items in by_split.items():
        for index, start in enumerate(range(0, len(split_items), config.samples_per_shard)):
            chunk = tuple(split_items[start:start + config.samples_per_shard])
            digest = hashlib.sha256(settings.encode("utf-8"))
            for item in chunk:
                digest.update(json.dumps([item.key, item.path, item.version, item.problem]).encode("utf-8"))
            tar_path = Path(config.out) / f"{shard_stem(config.prefix, split, index)}.tar"
            jobs.append(ShardJob(source, str(tar_path), split, index, chunk, digest.hexdigest()))
    return jobs


def is_complete(job: ShardJob) -> bool:
    """Stats file present, tar present, and both made from exactly this job's inputs and settings."""
    tar_path = Path(job.tar_path)
    try:
        stats = json.loads(stats_path(tar_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return tar_path.is_file() and stats.get("fingerprint") == job.fingerprint


def build_shard(job: ShardJob) -> dict:
    """Write one shard and then its stats; returns the stats."""
    started, clock = _now(), time.perf_counter()
    errors: list[dict] = []
    clip_lengths: Counter[int] = Counter()
    inputs_with_samples = 0
    with ShardWriter(Path(job.tar_path)) as writer:
        for item in job.items:
            if item.problem is not None:
                errors.append({"path": item.path, "key": item.key, "reason": item.problem})
                continue
            before = writer.samples
            try:
                for sample in job.source.samples(item):
                    sample.meta.update(key=sample.key, source_key=item.key, split=job.split)
                    writer.add(sample)
                    clip_lengths[int(sample.frames.shape[0])] += 1
            except InputError as exc:
                errors.append({"path": item.path, "key": item.key, "reason": exc.reason,
                               "samples_kept": writer.samples - before})
            else:
                if writer.samples == before:  # a source must explain an empty input; never drop it unseen
                    errors.append({"path": item.path, "key": item.key, "reason": "input gave no samples"})
            inputs_with_samples += int(writer.samples > before)
    seconds = time.perf_counter() - clock
    stats = {
        "shard": Path(job.tar_path).name, "split": job.split, "index": job.index, "kind": job.source.kind,
        "samples": writer.samples, "frames": writer.frames, "inputs": len(job.items),
        "inputs_with_samples": inputs_with_samples,
        "clip_lengths": {str(k): v for k, v in sorted(clip_lengths.items())},
        "errors": errors, "bytes": Path(job.tar_path).stat().st_size,
        "first_input": job.items[0].key, "last_input": job.items[-1].key,
        "started_at": started, "finished_at": _now(), "seconds": round(seconds, 4),
        "samples_per_second": round(writer.samples / seconds, 2) if seconds > 0 else None,
        "fingerprint": job.fingerprint, "settings": job.source.settings(), "format": FORMAT_VERSION,
    }
    write_json_atomic(stats_path(Path(job.tar_path)), stats)
    return stats


def build(source: Source, config: BuildConfig) -> dict:
    """Build (or complete) the shard set of `source` under `config.out`; returns the summary,
    which is also written to OUT/[PREFIX-]summary.json.

    With `num_tasks` > 1 this builds only every num_tasks-th shard from `task_index` on (the same
    bytes a single build writes) and returns the summary of those; no summary.json is written, since
    the other tasks' shards may not exist yet: a final run without `num_tasks` reuses every complete
    shard and writes it."""
    clock = time.perf_counter()
    items = source.plan()
    _check_unique_keys(items)
    jobs = plan_jobs(source, items, config)
    mine = jobs[config.task_index::config.num_tasks]
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = mine if config.mode == "overwrite" else [job for job in mine if not is_complete(job)]
    built = {job.tar_path: stats for job, stats in zip(todo, _run(todo, config, source.kind))}
    all_stats = [built.get(job.tar_path) or json.loads(stats_path(Path(job.tar_path)).read_text("utf-8"))
                 for job in mine]
    summary = _summary(source, config, jobs, mine, all_stats, set(built), time.perf_counter() - clock)
    if config.num_tasks > 1:
        return summary
    if summary["stale_shards"]:
        print(f"warning: {len(summary['stale_shards'])} shard(s) in {out} are not part of this build "
              f"(left alone): {summary['stale_shards'][:5]}", file=sys.stderr)
    write_json_atomic(out / summary_name(config.prefix), summary)
    return summary


def summary_name(prefix: str) -> str:
    return f"{prefix}-summary.json" if prefix else "summary.json"


def _run(todo: list[ShardJob], config: BuildConfig, kind: str) -> list[dict]:
    """Build the shards of `todo`; stats in the order of `todo`."""
    workers = min(config.workers or os.cpu_count() or 1, len(todo))
    results: dict[str, dict] = {}
    with tqdm(total=len(todo), unit="shard", desc=kind, disable=not config.progress or not todo) as bar:
        if workers <= 1:
            for stats in map(build_shard, todo):
                results[stats["shard"]] = stats
                bar.update(1)
        else:
            # spawn, not fork: the caller may hold threads (torch, tqdm) that fork would copy half-alive.
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for stats in pool.imap_unordered(build_shard, todo, chunksize=1):
                    results[stats["shard"]] = stats
                    bar.update(1)
    return [results[Path(job.tar_path).name] for job in todo]


def _check_unique_keys(items: list[InputItem]) -> None:
    """Sources make keys unique; this guards the shard format against a source that did not."""
    seen: dict[str, str] = {}
    for item in items:
        if item.problem is not None:
            continue  # yields no sample, so its key is never written
        check_key(item.key)
        if item.key in seen:
            raise ValueError(f"duplicate source key {item.key!r}: {seen[item.key]} and {item.path}")
        seen[item.key] = item.path


def _summary(source: Source, config: BuildConfig, planned: list[ShardJob], jobs: list[ShardJob],
             all_stats: list[dict], built: set[str], seconds: float) -> dict:
    """The summary of `jobs` (all `planned` ones, or one array task's share) with their stats."""
    splits = {}
    for split in SPLITS:
        stats = [s for s in all_stats if s["split"] == split]
        splits[split] = {
            "shards": len(stats),
            # an array task holds every num_tasks-th shard: only the full set has a pattern
            "pattern": _brace_pattern(config.prefix, split, len(stats)) if config.num_tasks == 1 else None,
            "inputs": sum(s["inputs"] for s in stats),
            "samples": sum(s["samples"] for s in stats),
            "frames": sum(s["frames"] for s in stats),
            "errors": sum(len(s["errors"]) for s in stats),
        }
    reasons = Counter(_reason_kind(e["reason"]) for s in all_stats for e in s["errors"])
    planned_names = {Path(job.tar_path).name for job in planned}
    prefix = re.escape(f"{config.prefix}-" if config.prefix else "")
    shard_name = re.compile(rf"^{prefix}(?:{'|'.join(SPLITS)})-\d{{6}}\.tar$")
    stale = sorted(p.name for p in Path(config.out).iterdir()
                   if shard_name.match(p.name) and p.name not in planned_names)
    task = {"task": {"index": config.task_index, "count": config.num_tasks}} if config.num_tasks > 1 else {}
    return {
        "kind": source.kind, "settings": source.settings(), "format": FORMAT_VERSION,
        # how the work was split does not change the shards: a split build's summary equals a single one's
        "config": {k: v for k, v in asdict(config).items() if k not in ("progress", "task_index", "num_tasks")},
        **task,
        "splits": splits,
        "inputs": sum(s["inputs"] for s in all_stats),
        "samples": sum(s["samples"] for s in all_stats),
        "errors": sum(reasons.values()), "errors_by_reason": dict(reasons.most_common()),
        "built": sorted(Path(p).name for p in built),
        "reused": sorted(Path(j.tar_path).name for j in jobs if j.tar_path not in built),
        "stale_shards": stale, "seconds": round(seconds, 3), "finished_at": _now(),
    }


def _brace_pattern(prefix: str, split: str, shards: int) -> str | None:
    """The webdataset URL pattern of a split: 'train-{000000..000009}.tar'."""
    if shards == 0:
        return None
    return f"{shard_stem(prefix, split, 0).removesuffix('000000')}{{000000..{shards - 1:06d}}}.tar"


def _reason_kind(reason: str) -> str:
    """'cannot open video: InvalidDataError: ...' -> 'cannot open video'."""
    return reason.split(":", 1)[0]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
