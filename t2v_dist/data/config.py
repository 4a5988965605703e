"""Configuration of the shard loader."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    train_shards: str = ""        # brace patterns, paths, folders or pipe: URLs; several joined by "::"
    val_shards: str = ""
    frames: int = 16              # T frames per clip
    stride: int = 1               # take every `stride`-th source frame
    min_frames: int | None = None  # keep shorter clips down to this many frames; None: exactly `frames`
    image_size: int = 32          # frames are H = W = image_size (mp4 is resized, .frames.npy must match)
    token_budget: int = 256       # row length of a packed batch
    max_rows: int = 8             # rows per packed batch (micro-batch)
    max_caption_tokens: int = 32  # <|endoftext|> included; longer captions are skipped and counted
    num_workers: int = 2          # DataLoader worker processes per rank; 0 reads in the main process
    prefetch_factor: int = 2      # batches each worker prepares ahead
    pin_memory: bool = False
    resampled: bool = False       # train only: draw shards with replacement, an endless stream
    shuffle: bool = True          # train only: seeded shard order and order inside each shard
    seed: int = 0
    tokenizer_path: str | None = None
    max_buffered_shard_mb: int = 2048  # pipe:/http/compressed shards are held whole per worker; larger ones fail

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"DataConfig.{name}={getattr(self, name)!r}: {rule}")

        need(self.frames >= 2, "frames", "a clip needs at least 2 frames")
        need(self.stride >= 1, "stride", "must be >= 1")
        need(self.min_frames is None or 2 <= self.min_frames <= self.frames, "min_frames",
             f"must be None or between 2 and frames={self.frames}")
        need(self.image_size >= 1, "image_size", "must be >= 1")
        need(self.max_caption_tokens >= 2, "max_caption_tokens", "a caption needs a token plus <|endoftext|>")
        longest = self.max_caption_tokens + self.frames - 1
        need(self.token_budget >= longest, "token_budget",
             f"the longest sample takes max_caption_tokens + frames - 1 = {longest} positions")
        need(self.max_rows >= 1, "max_rows", "must be >= 1")
        need(self.num_workers >= 0, "num_workers", "must be >= 0")
        need(self.prefetch_factor >= 1, "prefetch_factor", "must be >= 1")
        need(self.seed >= 0, "seed", "must be >= 0")
        need(self.max_buffered_shard_mb >= 1, "max_buffered_shard_mb", "must be >= 1")
