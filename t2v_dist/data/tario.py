"""Stage 5 of the loader: one tar shard -> its samples, read by webdataset.

A shard is read whole into memory (raw bytes only; decoding comes later), so that its samples
can be visited in a seeded permutation and a resumed run can start at any position in it.
Members with extensions the loader does not decode (.pyd, .pickle, ...) are never read.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator

# The only members the loader reads; everything else is counted as "ignored_member".
DECODED_EXTENSIONS = ("frames.npy", "mp4", "txt", "json")


@dataclass
class ShardContents:
    samples: list[dict] = field(default_factory=list)  # webdataset groups: __key__ + extension -> bytes
    problems: list[str] = field(default_factory=list)  # skip reasons found while reading (error names)


def _tagged(files, url: str):
    for f in files:
        f["__url__"] = url  # group_by_keys expects it
        yield f


def read_shard(url: str) -> ShardContents:
    """Every complete-or-partial sample of the shard at `url`; read problems are listed, not raised."""
    out = ShardContents()
    members = 0
    failure: list[BaseException] = []

    def select(fname: str) -> bool:
        nonlocal members
        members += 1
        _, ext = base_plus_ext(fname)
        if ext is None or ext.lower() not in DECODED_EXTENSIONS:
            out.problems.append("ignored_member")
            return False
        return True

    def stop_shard(exn: BaseException) -> bool:
        failure.append(exn)
        return False  # after a damaged member nothing in the stream can be trusted

    def count_duplicate(exn: BaseException) -> bool:
        if not isinstance(exn, ValueError):  # only duplicates are raised inside group_by_keys
            raise exn
        out.problems.append("duplicate_member")
        return True

    stream = None
    try:
        stream = gopen(url, "rb")
        files = tar_file_iterator(stream, handler=stop_shard, select_files=select)
        out.samples.extend(group_by_keys(_tagged(files, url), handler=count_duplicate))
    except Exception as exn:  # untrusted bytes: any error ends this shard, never the loader
        failure.append(exn)
    finally:
        if stream is not None:
            try:
                stream.close()  # for pipe: URLs this also checks the command's exit status
            except Exception as exn:
                failure.append(exn)
    if failure:
        out.problems.append("truncated_tar" if members or out.samples else "unreadable_shard")
    return out
