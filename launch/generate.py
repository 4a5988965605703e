"""Generate videos for prompts with a trained model (the `t2v-generate` console script).

    python launch/generate.py --run_dir runs/demo --prompts "a red circle moves left" "a blue square moves up"
    python launch/generate.py --weights runs/demo/model.safetensors --prompts_file prompts.txt \
        --num_frames 16 --seed 0 --batch_size 8 --formats mp4,gif,png --scale 4 --out out/ --device cuda

Writes one file per prompt and format, sheet.png (the prompts written under their rows) and prompts.json.
`--help` lists every flag.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from t2v_dist.generation import main  # noqa: E402

if __name__ == "__main__":
    main()
