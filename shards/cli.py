"""`t2v-shards`: build training shards from synthetic clips, videos, manifests, UCF101 or
video2dataset shards, and summarise a shard folder. One `fire` entry, one function per subcommand.

    t2v-shards synthetic --out data/syn --num_clips 10000 --frames 16 --size 32 --seed 7
    t2v-shards from-folder --src videos/ --out data/vid --frames 16 --stride 2 --workers 2
    t2v-shards stats --src data/syn
"""
from __future__ import annotations

import functools
import inspect
import json
import sys
import types
import typing

import fire

from shards.build import BuildConfig, build, summary_name
from shards.stats import summarize
from shards.synthetic import HELD_OUT_COMBOS, RANDOM_SIZES, SIZES, SyntheticConfig
from shards.synthetic_source import SyntheticSource
from shards.video import ClipSpec
from shards.video_sources import FolderSource, ManifestSource, Ucf101Source
from shards.wds_source import WdsSource


def synthetic(out: str, num_clips: int = 10000, frames: int = 16, size: int = 32, seed: int = 0,
              samples_per_shard: int = 1000, workers: int = 1, mode: str = "incremental",
              val_fraction: float = 0.05, prefix: str = "", two_shape_fraction: float = 0.3,
              textured_fraction: float = 0.5, holdout: bool = False, layout: str = "random",
              plain_colour: tuple[int, int, int] | None = None, object_size: str = "any",
              task_index: int = 0, num_tasks: int = 1,
              progress: bool = True) -> None:
    """Build shards of moving coloured shapes (the embedded default dataset); clip i depends only on (seed, i).

    Args:
        out: output folder; gets [PREFIX-]train-NNNNNN.tar, [PREFIX-]val-NNNNNN.tar, their _stats.json, summary.json.
        num_clips: number of clips to generate.
        frames: frames per clip (>= 2).
        size: frame height and width in pixels.
        seed: dataset seed.
        samples_per_shard: clips per shard.
        workers: processes building shards in parallel (0 = one per CPU core).
        mode: 'incremental' keeps complete shards (stats file present, same inputs and settings);
            'overwrite' rebuilds all.
        val_fraction: fraction of clips put in the val split (stable hash of the clip key).
        prefix: optional shard name prefix.
        two_shape_fraction: fraction of clips with two moving shapes.
        textured_fraction: fraction of clips with a textured (noise, stripes, checker) background;
            0 gives plain backgrounds only (with --two_shape_fraction 0: one object on a plain background).
        holdout: keep the colour x shape x direction combinations of shards.synthetic.HELD_OUT_COMBOS out
            of the train split (val clips may show them), to measure generalisation to unseen combinations.
        layout: 'random' (a path anywhere in view), 'centred' (every path crosses the frame centre) or
            'outward' (every path starts just behind the centre and runs outwards, so the first frame's
            object sits at about one place: the easy variant of the CPU demo).
        plain_colour: R,G,B of every plain background (e.g. 20,20,20); default a random dark colour per clip.
        object_size: 'any' (small or large, at random), 'small', 'large' (radius at random in a range) or
            'fixed' (one radius, 0.2 of the frame side: the demo variant).
        task_index: build only shards task_index, task_index + num_tasks, ... (an array job's task; see
            launch/shards_slurm.sh); each is the same as in a single build. No summary.json is written;
            a final run without these flags reuses the complete shards and writes it.
        num_tasks: number of tasks the shards are split over.
        progress: show a progress bar.
    """
    source = SyntheticSource(num_clips=num_clips, seed=seed, val_fraction=val_fraction, config=SyntheticConfig(
        frames=frames, size=size, two_shape_fraction=two_shape_fraction, textured_fraction=textured_fraction,
        held_out=HELD_OUT_COMBOS if holdout else (), layout=layout, plain_colour=plain_colour,
        sizes=_object_sizes(object_size)))
    _build(source, out, samples_per_shard, workers, mode, val_fraction, prefix, progress, task_index,
           num_tasks)


def _object_sizes(object_size: str) -> tuple[str, ...]:
    if object_size == "any":
        return RANDOM_SIZES
    if object_size not in SIZES:
        raise ValueError(f"--object_size must be 'any' or one of {list(SIZES)}, got {object_size!r}")
    return (object_size,)


def from_folder(src: str, out: str, frames: int = 16, size: int = 32, stride: int | None = None,
                fps: float | None = None, max_clips: int = 0, samples_per_shard: int = 100, workers: int = 1,
                mode: str = "incremental", val_fraction: float = 0.05, prefix: str = "",
                task_index: int = 0, num_tasks: int = 1, progress: bool = True) -> None:
    """Build shards from a folder of videos (searched recursively), each with a sidecar caption NAME.txt.

    Args:
        src: folder of videos (.mp4 .avi .mkv .webm .mov .m4v .mpg .mpeg).
        out: output folder.
        frames: frames per clip; a long video gives several consecutive clips, a shorter one is reported 'too short'.
        size: frames are centre-cropped to a square and area-resized to size x size.
        stride: keep every stride-th frame (default 1 when --fps is not given).
        fps: or resample to this frame rate.
        max_clips: clips per video at most, from its start (0 = all).
        samples_per_shard: input videos per shard (each gives one sample per clip).
        workers: processes building shards in parallel (0 = one per CPU core).
        mode: 'incremental' keeps complete shards; 'overwrite' rebuilds all.
        val_fraction: fraction of videos put in the val split (stable hash of the video's key).
        prefix: optional shard name prefix.
        task_index: build only shards task_index, task_index + num_tasks, ... (an array job's task; see
            launch/shards_slurm.sh); each is the same as in a single build. No summary.json is written;
            a final run without these flags reuses the complete shards and writes it.
        num_tasks: number of tasks the shards are split over.
        progress: show a progress bar.
    """
    source = FolderSource(src=str(src), clip=ClipSpec(frames, size, stride, fps, max_clips))
    _build(source, out, samples_per_shard, workers, mode, val_fraction, prefix, progress, task_index,
           num_tasks)


def from_manifest(src: str, out: str, root: str | None = None, frames: int = 16, size: int = 32,
                  stride: int | None = None, fps: float | None = None, max_clips: int = 0,
                  samples_per_shard: int = 100, workers: int = 1, mode: str = "incremental",
                  val_fraction: float = 0.05, prefix: str = "", task_index: int = 0, num_tasks: int = 1,
                  progress: bool = True) -> None:
    """Build shards from a CSV (header path,caption[,start,end]) or JSONL ({"path","caption"[,"start","end"]}) manifest.

    Args:
        src: the manifest, .csv or .jsonl; start/end are seconds (end exclusive), empty = whole video.
        out: output folder.
        root: folder that relative video paths start from (default: the manifest's folder).
        frames: frames per clip; a long video gives several consecutive clips.
        size: frames are centre-cropped to a square and area-resized to size x size.
        stride: keep every stride-th frame (default 1 when --fps is not given).
        fps: or resample to this frame rate.
        max_clips: clips per row at most (0 = all).
        samples_per_shard: manifest rows per shard (each gives one sample per clip).
        workers: processes building shards in parallel (0 = one per CPU core).
        mode: 'incremental' keeps complete shards; 'overwrite' rebuilds all.
        val_fraction: fraction of rows put in the val split (stable hash of the row's key: path + time range).
        prefix: optional shard name prefix.
        task_index: build only shards task_index, task_index + num_tasks, ... (an array job's task; see
            launch/shards_slurm.sh); each is the same as in a single build. No summary.json is written;
            a final run without these flags reuses the complete shards and writes it.
        num_tasks: number of tasks the shards are split over.
        progress: show a progress bar.
    """
    source = ManifestSource(src=str(src), root=None if root is None else str(root),
                            clip=ClipSpec(frames, size, stride, fps, max_clips))
    _build(source, out, samples_per_shard, workers, mode, val_fraction, prefix, progress, task_index,
           num_tasks)


def ucf101(src: str, out: str, template: str = "a person doing {action}", frames: int = 16, size: int = 32,
           stride: int | None = None, fps: float | None = None, max_clips: int = 0, samples_per_shard: int = 100,
           workers: int = 1, mode: str = "incremental", val_fraction: float = 0.05, prefix: str = "",
           task_index: int = 0, num_tasks: int = 1, progress: bool = True) -> None:
    """Build shards from the UCF101 layout UCF-101/<ClassName>/v_*.avi; the caption comes from the class name.

    Args:
        src: the UCF-101 folder (or the folder holding it).
        out: output folder.
        template: caption template; {action} is the class name in lower-case words (ApplyEyeMakeup -> apply eye makeup).
        frames: frames per clip; a long video gives several consecutive clips.
        size: frames are centre-cropped to a square and area-resized to size x size.
        stride: keep every stride-th frame (default 1 when --fps is not given).
        fps: or resample to this frame rate.
        max_clips: clips per video at most (0 = all).
        samples_per_shard: input videos per shard (each gives one sample per clip).
        workers: processes building shards in parallel (0 = one per CPU core).
        mode: 'incremental' keeps complete shards; 'overwrite' rebuilds all.
        val_fraction: fraction of (class, group) pairs put in the val split; a group's videos share actors and scene.
        prefix: optional shard name prefix.
        task_index: build only shards task_index, task_index + num_tasks, ... (an array job's task; see
            launch/shards_slurm.sh); each is the same as in a single build. No summary.json is written;
            a final run without these flags reuses the complete shards and writes it.
        num_tasks: number of tasks the shards are split over.
        progress: show a progress bar.
    """
    source = Ucf101Source(src=str(src), template=str(template), clip=ClipSpec(frames, size, stride, fps, max_clips))
    _build(source, out, samples_per_shard, workers, mode, val_fraction, prefix, progress, task_index,
           num_tasks)


def from_wds(src: str, out: str, frames: int = 16, size: int = 32, stride: int | None = None,
             fps: float | None = None, max_clips: int = 0, samples_per_shard: int = 100, workers: int = 1,
             mode: str = "incremental", val_fraction: float = 0.05, prefix: str = "",
             task_index: int = 0, num_tasks: int = 1, progress: bool = True) -> None:
    """Build shards from video2dataset-style shards (KEY.mp4 + KEY.txt [+ KEY.json] in tar files).

    Args:
        src: a folder of .tar files, one .tar, or a brace pattern like 'in/{00000..00009}.tar'.
        out: output folder.
        frames: frames per clip; a long video gives several consecutive clips.
        size: frames are centre-cropped to a square and area-resized to size x size.
        stride: keep every stride-th frame (default 1 when --fps is not given).
        fps: or resample to this frame rate.
        max_clips: clips per input sample at most (0 = all).
        samples_per_shard: input samples per shard (each gives one sample per clip).
        workers: processes building shards in parallel (0 = one per CPU core).
        mode: 'incremental' keeps complete shards; 'overwrite' rebuilds all.
        val_fraction: fraction of input samples put in the val split (stable hash of the input key).
        prefix: optional shard name prefix.
        task_index: build only shards task_index, task_index + num_tasks, ... (an array job's task; see
            launch/shards_slurm.sh); each is the same as in a single build. No summary.json is written;
            a final run without these flags reuses the complete shards and writes it.
        num_tasks: number of tasks the shards are split over.
        progress: show a progress bar.
    """
    source = WdsSource(src=str(src), clip=ClipSpec(frames, size, stride, fps, max_clips))
    _build(source, out, samples_per_shard, workers, mode, val_fraction, prefix, progress, task_index,
           num_tasks)


def stats(src: str, verify: bool = False) -> None:
    """Summarise a shard folder: samples, frames, clip length histogram, split sizes, errors (printed as JSON).

    Args:
        src: the shard folder (the --out of a build).
        verify: also read every tar and check it against its stats (sample count, members, frame array shape).
    """
    summary = summarize(str(src), verify=verify)
    print(json.dumps(summary, indent=1))
    if verify and not summary["verify"]["ok"]:
        raise SystemExit(1)


def _checked(command):
    """Check fire's parsed values against the annotations: fire turns '--frames abc' into a str
    and '--src 2024' into an int. Numbers given for str options become strings; ints pass as
    floats; anything else is a clear error naming the option."""
    hints = typing.get_type_hints(command)
    signature = inspect.signature(command)

    @functools.wraps(command)
    def run(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        for name, value in bound.arguments.items():
            bound.arguments[name] = _coerce(name, value, hints[name])
        return command(*bound.args, **bound.kwargs)

    return run


def _coerce(name: str, value, hint):
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    if str in allowed and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return str(value)
    if bool in allowed and isinstance(value, bool):
        return value
    if int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    if float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    for t in allowed:  # fixed-length tuples, given as --name 1,2,3
        items = typing.get_args(t)
        if typing.get_origin(t) is tuple and isinstance(value, (tuple, list)) and len(value) == len(items):
            return tuple(_coerce(name, v, item) for v, item in zip(value, items))
    expected = " or ".join("none" if t is type(None) else
                           f"{len(typing.get_args(t))} comma-separated values" if typing.get_origin(t) is tuple
                           else t.__name__ for t in allowed)
    raise ValueError(f"--{name}: expected {expected}, got {value!r}")


COMMANDS = {
    "synthetic": _checked(synthetic),
    "from-folder": _checked(from_folder),
    "from-manifest": _checked(from_manifest),
    "ucf101": _checked(ucf101),
    "from-wds": _checked(from_wds),
    "stats": _checked(stats),
}


def _build(source, out, samples_per_shard: int, workers: int, mode: str, val_fraction: float, prefix: str,
           progress: bool, task_index: int = 0, num_tasks: int = 1) -> None:
    config = BuildConfig(out=str(out), samples_per_shard=samples_per_shard, workers=workers, mode=str(mode),
                         val_fraction=val_fraction, prefix=str(prefix), progress=progress, task_index=task_index,
                         num_tasks=num_tasks)
    summary = build(source, config)
    if num_tasks > 1:
        print(f"{source.kind} task {task_index} of {num_tasks}: {summary['inputs']} inputs -> {summary['samples']} "
              f"samples in {len(summary['built']) + len(summary['reused'])} shards (built {len(summary['built'])}, "
              f"reused {len(summary['reused'])}); {summary['seconds']} s. Run once more without --num_tasks to "
              f"write {out}/{summary_name(prefix)}")
        return
    train, val = summary["splits"]["train"], summary["splits"]["val"]
    reported = (f"{summary['errors']} reported in the shards' _stats.json {summary['errors_by_reason']}"
                if summary["errors"] else "nothing to report")
    print(f"{source.kind}: {summary['inputs']} inputs -> {summary['samples']} samples "
          f"(train {train['samples']} in {train['shards']} shards, val {val['samples']} in {val['shards']}); "
          f"{reported}; built {len(summary['built'])}, reused {len(summary['reused'])}; {summary['seconds']} s")
    patterns = [f"{split}: {out}/{summary['splits'][split]['pattern']}" for split in ("train", "val")
                if summary["splits"][split]["pattern"]]
    print("  ".join(patterns + [f"summary: {out}/{summary_name(prefix)}"]))


def main() -> int:
    try:
        fire.Fire(COMMANDS, name="t2v-shards")
    except ValueError as exc:  # bad arguments or inputs: a clear message, not a traceback
        print(f"t2v-shards: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
