"""Score a trained model's text faithfulness on the synthetic shapes task (the `t2v-eval` console script).

    python launch/eval.py --run_dir runs/demo                   # latest checkpoint; prints a table, writes eval.json
    python launch/eval.py --weights runs/demo/model.safetensors --val_shards 'data/demo/val-*.tar' --out /tmp/ev

`--help` lists every flag.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from t2v_dist.eval_cli import main  # noqa: E402

if __name__ == "__main__":
    main()
