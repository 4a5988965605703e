"""video2dataset-style shards (`KEY.mp4` + `KEY.txt` + `KEY.json` in plain tars) as a source.

Planning lists the members of every input tar (headers only) and remembers where each
sample's bytes are; a worker then reads just those bytes. Each input sample is one input:
its video is cut into clips like any other video.
"""
from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import braceexpand

from shards.caption import decode_caption
from shards.keys import clip_key, key_from_relpath
from shards.source import InputError, InputItem, Sample
from shards.video import ClipSpec, decode_clips

VIDEO_MEMBER_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov")


@dataclass(frozen=True)
class MemberSpan:
    offset: int
    size: int


@dataclass(frozen=True)
class WdsSource:
    """`src`: a folder of .tar files, one .tar, or a brace pattern 'in/{00000..00009}.tar'."""

    src: str
    clip: ClipSpec = field(default_factory=ClipSpec)
    kind: str = "from-wds"

    def settings(self) -> dict:
        return self.clip.settings()

    def plan(self) -> list[InputItem]:
        items: list[InputItem] = []
        seen: dict[str, str] = {}
        for tar_path in self.tar_paths():
            for item in _plan_tar(tar_path):
                if item.problem is None and item.key in seen:
                    item = InputItem(item.key, item.path, item.split_key, item.payload, item.version,
                                     problem=f"duplicate key: first in {seen[item.key]}")
                seen.setdefault(item.key, item.path)
                items.append(item)
        return items

    def tar_paths(self) -> list[Path]:
        src = Path(self.src)
        if src.is_dir():
            tars = sorted(src.glob("*.tar"))
        else:
            tars = [Path(p) for p in braceexpand.braceexpand(self.src)]
            missing = [str(p) for p in tars if not p.is_file()]
            if missing:
                raise ValueError(f"--src {self.src}: no such tar file(s): {missing[:5]}")
        if not tars:
            raise ValueError(f"--src {self.src}: no .tar files")
        return tars

    def samples(self, item: InputItem) -> Iterator[Sample]:
        tar_path, spans = item.payload
        with open(tar_path, "rb") as handle:
            def member(ext: str) -> bytes:
                handle.seek(spans[ext].offset)
                data = handle.read(spans[ext].size)
                if len(data) != spans[ext].size:
                    raise InputError(f"member {ext} truncated")
                return data

            caption = decode_caption(member("txt"))
            # The input's own metadata is an optional extra (ours is complete without it): kept if readable.
            source_meta: dict = {}
            if "json" in spans:
                try:
                    source_meta = {"source_meta": json.loads(member("json"))}
                except ValueError as exc:
                    source_meta = {"source_meta_error": f"input .json is not JSON: {exc}"}
            video_ext = next(ext for ext in VIDEO_MEMBER_EXTENSIONS if ext in spans)
            video = member(video_ext)
        for frames, meta in decode_clips(video, self.clip):
            count, height, width, _ = frames.shape
            meta = {"source": item.path, **meta, "frame_count": count, "size": [height, width], **source_meta}
            yield Sample(key=clip_key(item.key, meta["clip_index"]), frames=frames, caption=caption, meta=meta)


def _plan_tar(tar_path: Path) -> list[InputItem]:
    """One item per sample of the tar, grouped like webdataset: consecutive members sharing the
    part of the name before the first '.'. An unreadable or truncated tar becomes a problem item."""
    stat = os.stat(tar_path)
    version = f"{stat.st_size}:{stat.st_mtime_ns}"
    groups: list[tuple[str, dict[str, MemberSpan]]] = []
    problem = None
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                base = info.name.rsplit("/", 1)[-1]
                if "." not in base:
                    continue
                stem = info.name[: len(info.name) - len(base)] + base.split(".", 1)[0]
                ext = base.split(".", 1)[1].lower()
                if not groups or groups[-1][0] != stem:
                    groups.append((stem, {}))
                groups[-1][1][ext] = MemberSpan(info.offset_data, info.size)
    except (tarfile.TarError, OSError, EOFError) as exc:
        problem = f"unreadable tar after {len(groups)} samples: {type(exc).__name__}: {exc}"
    items = []
    for stem, spans in groups:
        key = key_from_relpath(stem)  # the input key, made safe ('/' and '.' folded)
        items.append(InputItem(key=key, path=f"{tar_path}:{stem}", split_key=key, payload=(str(tar_path), spans),
                               version=version, problem=_missing_members(spans)))
    if problem is not None:
        items.append(InputItem(key=key_from_relpath(tar_path.name), path=str(tar_path),
                               split_key=tar_path.name, payload=None, version=version, problem=problem))
    return items


def _missing_members(spans: dict[str, MemberSpan]) -> str | None:
    have = sorted(spans)
    if not any(ext in spans for ext in VIDEO_MEMBER_EXTENSIONS):
        return f"no video member ({'/'.join(VIDEO_MEMBER_EXTENSIONS)}); has {have}"
    if "txt" not in spans:
        return f"no caption member (.txt); has {have}"
    return None
