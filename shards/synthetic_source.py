"""The synthetic generator as a shard source: input i is clip i of the seed."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterator

from shards.keys import split_of
from shards.source import InputItem, Sample
from shards.synthetic import SyntheticConfig, make_clip

NOMINAL_FPS = 8.0  # synthetic clips have no real frame rate; loaders may want one


@dataclass(frozen=True)
class SyntheticSource:
    num_clips: int
    seed: int = 0
    config: SyntheticConfig = field(default_factory=SyntheticConfig)
    # With config.held_out, a clip's content depends on its split, so the source must know the build's
    # val_fraction (the same value: the CLI passes one to both); unused otherwise.
    val_fraction: float = 0.05
    kind: str = "synthetic"

    def __post_init__(self) -> None:
        if self.num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {self.num_clips}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 0.0 <= self.val_fraction <= 1.0:
            raise ValueError(f"val_fraction must be in [0, 1], got {self.val_fraction}")

    def settings(self) -> dict:
        settings = {"seed": self.seed, **asdict(self.config)}
        if self.config.layout == "random":  # as before layouts existed: the same shard fingerprints
            del settings["layout"]
        if self.config.sizes == SyntheticConfig.sizes:  # as before the option existed
            del settings["sizes"]
        if self.config.plain_colour is None:
            del settings["plain_colour"]
        else:
            settings["plain_colour"] = list(self.config.plain_colour)
        if not self.config.held_out:  # the settings (and shard fingerprints) of builds from before held_out
            del settings["held_out"]
        else:
            settings["held_out"] = [list(combo) for combo in self.config.held_out]
            settings["val_fraction"] = self.val_fraction
        return settings

    def plan(self) -> list[InputItem]:
        return [InputItem(key=f"syn_s{self.seed}_{i:08d}", path=f"synthetic:seed={self.seed}:index={i}",
                          split_key=f"syn_s{self.seed}_{i:08d}", payload=i) for i in range(self.num_clips)]

    def samples(self, item: InputItem) -> Iterator[Sample]:
        split = split_of(item.split_key, self.val_fraction) if self.config.held_out else "train"
        clip = make_clip(self.seed, item.payload, self.config, split)
        frames, height, width, _ = clip.frames.shape
        meta = {"source": item.path, "seed": self.seed, "index": item.payload, "fps": NOMINAL_FPS,
                "frame_count": frames, "size": [height, width], "original_size": {"width": width, "height": height},
                "clip_start_frame": 0, "clip_end_frame": frames, **clip.truth_json()}
        if self.config.held_out:
            held_out = set(self.config.held_out)
            meta["held_out_combo"] = any((o.colour, o.shape, o.direction) in held_out for o in clip.objects)
        yield Sample(key=item.key, frames=clip.frames, caption=clip.caption, meta=meta)
