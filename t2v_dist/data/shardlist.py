"""Stage 1 of the loader: a shard spec -> the ordered list of shard URLs.

webdataset's `expand_urls` splits the spec on "::" and expands brace patterns
(`data/train-{000000..000009}.tar`) and WDS_ environment variables. Each URL is then a
`pipe:` command (run by webdataset's gopen), a remote URL, or a local path, folder (its
*.tar files) or glob. Local paths are checked here, so a typo fails at start-up naming the
file instead of being counted as a bad shard at run time.
"""
from __future__ import annotations

import glob
import hashlib
import os
from urllib.parse import urlparse

from webdataset.shardlists import expand_urls


def local_path(url: str) -> str | None:
    """The file system path of a local URL, None for pipe:/remote ones."""
    scheme = urlparse(url).scheme
    if scheme == "file":
        return urlparse(url).path
    return url if scheme == "" or len(scheme) == 1 else None  # a one-letter scheme is a Windows drive


def expand_shards(spec: str, field: str = "shards") -> list[str]:
    """Every shard URL of `spec`, in order. Raises ValueError naming `field` on a bad spec."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{field} is empty: give a brace pattern, path, folder or pipe: URL")
    urls: list[str] = []
    missing: list[str] = []
    for url in (u.strip() for u in expand_urls(spec)):
        if not url:
            continue
        path = local_path(url)
        if path is None:
            urls.append(url)
        elif os.path.isdir(path):
            found = sorted(glob.glob(os.path.join(path, "*.tar")))
            if not found:
                raise ValueError(f"{field}: folder {path!r} holds no .tar shards")
            urls.extend(found)
        elif glob.has_magic(path):
            found = sorted(glob.glob(path))
            if not found:
                raise ValueError(f"{field}: pattern {path!r} matches no file")
            urls.extend(found)
        elif os.path.isfile(path):
            urls.append(url)
        else:
            missing.append(path)
    if missing:
        raise ValueError(f"{field}: {len(missing)} shard(s) do not exist: {', '.join(missing[:3])}"
                         + (", ..." if len(missing) > 3 else ""))
    if not urls:
        raise ValueError(f"{field}={spec!r} names no shard")
    return urls


def shards_fingerprint(urls: list[str]) -> dict:
    """Identifies a shard list in a saved loader state: a resume must read the same shards.

    Only the file names count, so a run can resume after its data moved to another folder.
    """
    names = [url.rstrip("/").rsplit("/", 1)[-1] for url in urls]
    digest = hashlib.sha1("\n".join(names).encode("utf-8")).hexdigest()
    return {"count": len(urls), "sha1": digest}
