"""Video files with captions as shard sources: a folder with sidecar captions, a CSV/JSONL
manifest, and the UCF101 layout (caption from the class name).

Each input is one video (or one manifest row: a time range of a video); it yields one sample
per clip, keyed `SOURCEKEY_c00000`, `SOURCEKEY_c00001`, ...
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from shards.caption import camel_to_words, check_caption, decode_caption
from shards.keys import clip_key, unique_keys
from shards.source import InputError, InputItem, Sample
from shards.video import ClipSpec, decode_clips

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg"})


@dataclass(frozen=True)
class VideoInput:
    video: str                       # file path
    caption: str | None = None       # caption text (manifest, class name), or
    caption_file: str | None = None  # a sidecar file to read it from
    start_s: float | None = None     # time range in seconds, end exclusive
    end_s: float | None = None


class _VideoFilesSource:
    """Shared reading of a `VideoInput`; subclasses only plan."""

    kind: str
    clip: ClipSpec

    def settings(self) -> dict:
        return self.clip.settings()

    def samples(self, item: InputItem) -> Iterator[Sample]:
        video: VideoInput = item.payload
        if video.caption_file is not None:
            try:
                caption = decode_caption(Path(video.caption_file).read_bytes())
            except OSError as exc:
                raise InputError(f"cannot read caption file {video.caption_file}: {exc.strerror}") from None
        else:
            caption = check_caption(video.caption or "")
        for frames, meta in decode_clips(video.video, self.clip, video.start_s, video.end_s):
            count, height, width, _ = frames.shape
            meta = {"source": video.video, **meta, "frame_count": count, "size": [height, width]}
            if video.start_s is not None or video.end_s is not None:
                meta["range_s"] = [video.start_s, video.end_s]
            yield Sample(key=clip_key(item.key, meta["clip_index"]), frames=frames, caption=caption, meta=meta)


@dataclass(frozen=True)
class FolderSource(_VideoFilesSource):
    """Every video under `src` (recursively) with a sidecar caption `same_name.txt`."""

    src: str
    clip: ClipSpec = field(default_factory=ClipSpec)
    kind: str = "from-folder"

    def plan(self) -> list[InputItem]:
        root = Path(self.src)
        if not root.is_dir():
            raise ValueError(f"--src {self.src}: not a directory")
        videos = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                        if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        if not videos:
            raise ValueError(f"--src {self.src}: no video files ({', '.join(sorted(VIDEO_EXTENSIONS))})")
        items = []
        for rel, key in zip(videos, unique_keys(videos)):
            video, sidecar = root / rel, (root / rel).with_suffix(".txt")
            problem = None if sidecar.is_file() else f"missing caption file {sidecar.name}"
            items.append(InputItem(key=key, path=str(video), split_key=key,
                                   payload=VideoInput(str(video), caption_file=str(sidecar)),
                                   version=_file_version(video, sidecar), problem=problem))
        return items


@dataclass(frozen=True)
class ManifestSource(_VideoFilesSource):
    """Rows of a CSV (header with path,caption[,start,end]) or JSONL manifest ({"path", "caption",
    "start", "end"}). Relative paths are relative to `root` (default: the manifest's folder);
    start/end are seconds (end exclusive), empty or missing = whole video. A row's key is its
    video's key plus its time range, so the same video may appear with several ranges."""

    src: str
    clip: ClipSpec = field(default_factory=ClipSpec)
    root: str | None = None
    kind: str = "from-manifest"

    def plan(self) -> list[InputItem]:
        manifest = Path(self.src)
        if not manifest.is_file():
            raise ValueError(f"--src {self.src}: manifest file not found")
        root = Path(self.root) if self.root is not None else manifest.parent
        rows = _read_manifest(manifest)
        if not rows:
            raise ValueError(f"--src {self.src}: manifest has no rows")
        relpaths = sorted({row.path for row in rows if row.path})
        path_keys = dict(zip(relpaths, unique_keys([p.lstrip("/") for p in relpaths])))
        first_row: dict[str, int] = {}
        items = []
        for row in rows:
            where = f"{manifest}:{row.line}"
            problem = row.problem
            key = f"row{row.line:08d}"
            video = root / row.path if row.path else None
            if problem is None:
                key = path_keys[row.path] + _range_suffix(row.start, row.end)
                if key in first_row:
                    problem = f"duplicate: same video and time range as line {first_row[key]}"
                else:
                    first_row[key] = row.line
            if problem is None and not video.is_file():
                problem = f"video file not found: {video}"
            # A good row is named by its video and range (stable when lines move); a bad one by its line.
            if problem is None:
                ranged = row.start is not None or row.end is not None
                path = str(video) + (f" [{row.start}, {row.end}) s" if ranged else "")
            else:
                path = f"{where} ({video})" if video else where
            items.append(InputItem(
                key=key, path=path, split_key=key,
                payload=VideoInput(str(video), caption=row.caption, start_s=row.start, end_s=row.end),
                version=_file_version(video) if problem is None else "", problem=problem))
        # Sorted by key (stable: duplicates stay in line order): reordering the manifest's
        # lines changes no shard, so an incremental rerun still finds its shards complete.
        return sorted(items, key=lambda item: item.key)


@dataclass(frozen=True)
class Ucf101Source(_VideoFilesSource):
    """`src/<ClassName>/v_<ClassName>_gGG_cCC.avi`; caption = template with the class name in
    words ("ApplyEyeMakeup" -> "apply eye makeup"). Clips of one group (gGG: same actors and
    scene) share a split, so the validation set does not see training scenes."""

    src: str
    clip: ClipSpec = field(default_factory=ClipSpec)
    template: str = "a person doing {action}"
    kind: str = "ucf101"

    def __post_init__(self) -> None:
        if "{action}" not in self.template:
            raise ValueError(f"--template {self.template!r} must contain {{action}}")
        try:
            self.template.format(action="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"--template {self.template!r}: only {{action}} may be used ({exc!r})") from None

    def settings(self) -> dict:
        return {**self.clip.settings(), "template": self.template}

    def plan(self) -> list[InputItem]:
        root = _ucf_root(Path(self.src))
        videos = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*")
                        if p.suffix.lower() == ".avi" and p.name.startswith("v_") and p.is_file())
        if not videos:
            raise ValueError(f"--src {self.src}: no UCF101 videos (<ClassName>/v_*.avi)")
        items = []
        for rel, key in zip(videos, unique_keys(videos)):
            class_name, stem = rel.split("/")[0], Path(rel).stem
            group = re.match(r"^v_.+_g(\d+)_c\d+$", stem)
            caption = self.template.format(action=camel_to_words(class_name))
            video = root / rel
            items.append(InputItem(key=key, path=str(video),
                                   split_key=f"{class_name}_g{group.group(1)}" if group else key,
                                   payload=VideoInput(str(video), caption=caption), version=_file_version(video)))
        return items


def _ucf_root(src: Path) -> Path:
    """Accept the UCF-101 folder itself or the folder holding it."""
    if not src.is_dir():
        raise ValueError(f"--src {src}: not a directory")
    nested = src / "UCF-101"
    return nested if nested.is_dir() and not any(src.glob("*/v_*.avi")) else src


@dataclass(frozen=True)
class _ManifestRow:
    line: int
    path: str | None
    caption: str | None
    start: float | None
    end: float | None
    problem: str | None


def _read_manifest(manifest: Path) -> list[_ManifestRow]:
    # Undecodable bytes survive as surrogates, so the one bad row is reported, not the whole file.
    text = manifest.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    suffix = manifest.suffix.lower()
    if suffix == ".csv":
        return _read_csv(manifest, text)
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(text)
    raise ValueError(f"--src {manifest}: manifest must be .csv or .jsonl")


def _read_csv(manifest: Path, text: str) -> list[_ManifestRow]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = {"path", "caption"} - set(columns)
    if missing:
        raise ValueError(f"--src {manifest}: CSV header needs columns path,caption[,start,end]; "
                         f"missing {sorted(missing)} in {columns}")
    reader.fieldnames = columns
    try:
        return [_row(reader.line_num, record) for record in reader]
    except csv.Error as exc:
        raise ValueError(f"--src {manifest}: CSV error at line {reader.line_num}: {exc}") from None


def _read_jsonl(text: str) -> list[_ManifestRow]:
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            rows.append(_ManifestRow(line_no, None, None, None, None, f"not a JSON object: {exc}"))
            continue
        if not isinstance(record, dict):
            rows.append(_ManifestRow(line_no, None, None, None, None, "not a JSON object"))
            continue
        rows.append(_row(line_no, record))
    return rows


def _row(line: int, record: dict) -> _ManifestRow:
    """Validate one manifest record; a bad field becomes the row's problem."""
    path, caption = record.get("path"), record.get("caption")
    if not isinstance(path, str) or not path.strip():
        return _ManifestRow(line, None, None, None, None, "missing path")
    if not isinstance(caption, str):
        return _ManifestRow(line, None, None, None, None, "missing caption")
    path = posixpath.normpath(path.strip())  # './a.mp4' and 'a.mp4' are one video
    try:
        start, end = _seconds(record.get("start"), "start"), _seconds(record.get("end"), "end")
        if start is not None and end is not None and end <= start:
            raise ValueError(f"bad range: end {end} <= start {start}")
    except ValueError as exc:
        return _ManifestRow(line, None, None, None, None, str(exc))
    return _ManifestRow(line, path, caption, start, end, None)


def _seconds(value, name: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    problem = ValueError(f"bad {name}: {value!r} is not a number of seconds >= 0")
    if isinstance(value, bool):
        raise problem
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise problem from None
    if not math.isfinite(seconds) or seconds < 0:
        raise problem
    return seconds


def _range_suffix(start: float | None, end: float | None) -> str:
    """Key suffix for a time range, in milliseconds: '_t1500-3000', '_t0-end'; none for a whole video."""
    if start is None and end is None:
        return ""
    return f"_t{round((start or 0) * 1000)}-{'end' if end is None else round(end * 1000)}"


def _file_version(*paths: Path) -> str:
    """Size and mtime of each file ('-' if missing): an edited input makes its shard stale."""
    parts = []
    for path in paths:
        try:
            st = os.stat(path)
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append("-")
    return ",".join(parts)
