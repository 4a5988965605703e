"""Export a run's latest ZeRO-2 checkpoint as consolidated fp32 weights (safetensors).

    python launch/export.py --run_dir runs/demo                       # -> runs/demo/model.safetensors
    python launch/export.py --run_dir runs/demo --tag step00000100 --out /tmp/demo-100.safetensors

Load it with `t2v_dist.export.load_exported(path)`, which rebuilds the model from the stored config.
"""
from __future__ import annotations

import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t2v_dist.export import export_run  # noqa: E402


def main(run_dir: str, out: str | None = None, tag: str | None = None) -> None:
    """Write the fp32 weights of one checkpoint.

    Args:
        run_dir: the training run dir (holds checkpoints/).
        out: output .safetensors path; default run_dir/model.safetensors.
        tag: checkpoint tag such as step00000100; default the latest.
    """
    print(export_run(run_dir, out, tag))


if __name__ == "__main__":
    fire.Fire(main)
