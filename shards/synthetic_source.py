"""The synthetic generator as a shard source: input i is clip i of the seed."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterator

from shards.source import InputItem, Sample
from shards.synthetic import SyntheticConfig, make_clip

NOMINAL_FPS = 8.0  # synthetic clips have no real frame rate; loaders may want one


@dataclass(frozen=True)
class SyntheticSource:
    num_clips: int
    seed: int = 0
    config: SyntheticConfig = field(default_factory=SyntheticConfig)
    kind: str = "synthetic"

    def __post_init__(self) -> None:
        if self.num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {self.num_clips}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def settings(self) -> dict:
        return {"seed": self.seed, **asdict(self.config)}

    def plan(self) -> list[InputItem]:
        return [InputItem(key=f"syn_s{self.seed}_{i:08d}", path=f"synthetic:seed={self.seed}:index={i}",
                          split_key=f"syn_s{self.seed}_{i:08d}", payload=i) for i in range(self.num_clips)]

    def samples(self, item: InputItem) -> Iterator[Sample]:
        clip = make_clip(self.seed, item.payload, self.config)
        frames, height, width, _ = clip.frames.shape
        meta = {"source": item.path, "seed": self.seed, "index": item.payload, "fps": NOMINAL_FPS,
                "frame_count": frames, "size": [height, width], "original_size": {"width": width, "height": height},
                "clip_start_frame": 0, "clip_end_frame": frames, **clip.truth_json()}
        yield Sample(key=item.key, frames=clip.frames, caption=clip.caption, meta=meta)
