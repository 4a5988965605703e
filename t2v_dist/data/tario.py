"""Stage 5 of the loader: one tar shard -> an index of its samples, each read when it is visited.

A shard's member headers are read first (the tar index: where each member's bytes lie); a
sample's members are read only when the sample is visited, in the seeded visiting order, so a
worker holds about one sample at a time. Local shards are read in place (seek + read).
Non-seekable shards (`pipe:` commands, http) and compressed tars are buffered whole in memory
first, up to `DataConfig.max_buffered_shard_mb`.

Samples are grouped as webdataset groups them: consecutive members with the same key (the name
up to its first dot). Members with extensions the loader does not decode (.pyd, .pickle, ...)
are never read. Read problems are listed per shard, never raised:
  - the end of the member headers must be the end-of-archive block (512 zero bytes). Python's
    tarfile takes any bad header after offset 0 for the end of the archive; here a bad header
    counts as `damaged_tar_header`, and every sample found after it by scanning on for valid
    headers is lost and counted as `lost_sample` (a file with none is an `unreadable_shard`);
  - a shard cut short (inside a member, or with no end-of-archive block) counts as `truncated_tar`.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import re
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO

from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext

from t2v_dist.data.shardlist import local_path

# The only members the loader reads; everything else is counted as "ignored_member".
DECODED_EXTENSIONS = ("frames.npy", "mp4", "txt", "json")
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members (__key__/, ...): skipped
_BLOCK = tarfile.BLOCKSIZE
_COMPRESSED = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ\x00": lzma.open}
_CHUNK = 1 << 20


class ShardTooLarge(ValueError):
    """A non-seekable shard is over the buffering limit: a configuration problem, not bad data."""


@dataclass
class SampleEntry:
    key: str
    members: dict[str, tuple[int, int]] = field(default_factory=dict)  # extension -> (data offset, size)


@dataclass
class ShardIndex:
    """A shard's samples (where their members lie) and the problems found while indexing it."""
    file: BinaryIO | None
    samples: list[SampleEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # skip reasons (error names)

    def read(self, i: int) -> dict[str, bytes] | None:
        """The raw members of sample i; None if the file no longer holds them (changed under us)."""
        out = {}
        for ext, (offset, size) in self.samples[i].members.items():
            try:
                self.file.seek(offset)
                data = self.file.read(size)
            except OSError:
                return None
            if len(data) != size:
                return None
            out[ext] = data
        return out

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self) -> "ShardIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_shard(url: str, max_buffered_bytes: int) -> ShardIndex:
    """Index the shard at `url`. Raises ShardTooLarge for a non-seekable shard over the limit."""
    path = local_path(url)
    try:
        stream = open(path, "rb") if path is not None else gopen(url, "rb")
        whole = path is None or stream.read(6).startswith(tuple(_COMPRESSED))  # not seekable, or compressed
        if path is not None:
            stream.seek(0)
    except Exception:  # missing file, a command that cannot start, an unreachable host, an I/O error
        return ShardIndex(None, problems=["unreadable_shard"])
    if whole:
        file, failed = _buffered(stream, url, max_buffered_bytes)
    else:
        file, failed = stream, False  # a plain local tar: read in place
    index = ShardIndex(file)
    _index_members(index)
    if failed and not set(index.problems) & {"unreadable_shard", "truncated_tar", "damaged_tar_header"}:
        # the stream broke (or its command failed) where the tar looked complete: the rest is lost
        index.problems.append("truncated_tar" if index.samples else "unreadable_shard")
    return index


def _buffered(stream: BinaryIO, url: str, limit: int) -> tuple[io.BytesIO, bool]:
    """(the stream's decompressed bytes, at most `limit` of them; whether reading failed part way).

    What was read before a failure is kept: the samples in it are still good.
    """
    try:
        raw, failed = _read_at_most(stream, url, limit)
    finally:
        try:
            stream.close()  # for pipe: URLs this also checks the command's exit status
        except Exception:
            failed = True
    for magic, opener in _COMPRESSED.items():
        if raw.startswith(magic):
            with opener(io.BytesIO(raw)) as unpacked:  # small reads: a cut stream keeps all but its tail
                raw, broken = _read_at_most(unpacked, url, limit, chunk=_CHUNK // 64)
            failed = failed or broken
            break
    return io.BytesIO(raw), failed


def _read_at_most(stream: BinaryIO, url: str, limit: int, chunk: int = _CHUNK) -> tuple[bytes, bool]:
    """(the bytes of `stream` up to where it ended or failed, whether it failed); over `limit`: ShardTooLarge."""
    chunks, total, size = [], 0, chunk
    while True:
        try:
            chunk = stream.read(size)
        except Exception:  # a broken connection, a truncated or corrupt compressed stream
            return b"".join(chunks), True
        if not chunk:
            return b"".join(chunks), False
        total += len(chunk)
        if total > limit:
            raise ShardTooLarge(
                f"shard {url} is over DataConfig.max_buffered_shard_mb={limit / 2**20:g} MB: a non-seekable "
                f"(pipe:, http) or compressed shard is held whole in each worker's memory. Raise the limit, "
                f"write smaller shards, or copy them to local disk as plain .tar (read sample by sample)")
        chunks.append(chunk)


def _index_members(index: ShardIndex) -> None:
    """Read every member header; group members into samples; list what was wrong."""
    file = index.file
    size = file.seek(0, io.SEEK_END)
    file.seek(0)
    try:
        tar = tarfile.open(fileobj=file, mode="r:")
    except Exception:  # not a tar, empty, or a bad first header
        lost = _keys_after(file, _BLOCK, size)
        index.problems += ["damaged_tar_header"] + ["lost_sample"] * len(lost) if lost else ["unreadable_shard"]
        return
    current: SampleEntry | None = None
    cut = False
    while True:
        try:
            info = tar.next()
        except Exception:  # a bad extended (pax/GNU) header, or data cut short
            break
        if info is None:
            break
        if info.offset_data + info.size > size:  # the member's data runs past the end of the file
            cut = True
            break
        if not info.isreg() or _META.match(info.name):
            continue
        key, ext = base_plus_ext(info.name)
        if ext is None or ext.lower() not in DECODED_EXTENSIONS:
            index.problems.append("ignored_member")
            continue
        if current is None or key != current.key:
            current = SampleEntry(key)
            index.samples.append(current)
        if ext.lower() in current.members:
            index.problems.append("duplicate_member")  # the first one is kept
            continue
        current.members[ext.lower()] = (info.offset_data, info.size)
    if cut:
        index.problems.append("truncated_tar")
        return
    file.seek(tar.offset)  # where the header that ended the iteration starts
    block = file.read(_BLOCK)
    if len(block) < _BLOCK:  # cut at or inside a header, or no end-of-archive block
        index.problems.append("truncated_tar")
    elif block.count(0) != _BLOCK:  # not the end of the archive: a damaged header
        index.problems.append("damaged_tar_header")
        lost = _keys_after(file, tar.offset + _BLOCK, size) - {current.key if current else None}
        index.problems += ["lost_sample"] * len(lost)


def _keys_after(file: BinaryIO, offset: int, size: int) -> set[str]:
    """Sample keys of the valid member headers after `offset`, found block by block."""
    keys = set()
    while offset + _BLOCK <= size:
        file.seek(offset)
        try:
            info = tarfile.TarInfo.frombuf(file.read(_BLOCK), tarfile.ENCODING, "surrogateescape")
        except tarfile.HeaderError:  # data, zeros or damage: try the next block
            offset += _BLOCK
            continue
        key, ext = base_plus_ext(info.name)
        if info.isreg() and ext is not None and ext.lower() in DECODED_EXTENSIONS:
            keys.add(key)
        offset += _BLOCK + -(-info.size // _BLOCK) * _BLOCK
    return keys
