#!/usr/bin/env bash
# The embedded demo (`make demo`): synthetic moving-shape shards -> 2 CPU ranks of DeepSpeed ZeRO-2
# over gloo -> checkpoints and sample videos -> the text-faithfulness evaluation (t2v-eval). Runs again
# resume: shards already built are kept, and training continues from the latest checkpoint in runs/demo.
# The demo's data is the easy variant of the synthetic set (one object of one size on a fixed dark
# background, 8 frames of a path from just behind the frame centre outwards) with the full vocabulary, and
# 8 colour x shape x direction combinations held out of training (scored apart as "unseen").
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
CONFIG=launch/configs/demo.yaml
RUN_DIR=${RUN_DIR:-runs/demo}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}

echo "== 1/4 shards: data/demo (incremental: complete shards are kept)"
"$PY" -m shards.cli synthetic --out data/demo --num_clips 4000 --frames 8 --size 32 --seed 7 \
    --samples_per_shard 250 --two_shape_fraction 0 --textured_fraction 0 --layout outward \
    --plain_colour 20,20,20 --object_size fixed --holdout True --progress False

echo "== 2/4 config check for 2 ranks"
"$PY" -m t2v_dist.config --config "$CONFIG" --world-size 2 --run_dir="$RUN_DIR" >/dev/null

echo "== 3/4 training: deepspeed --num_gpus 2 (CPU accelerator, gloo, ZeRO-2)"
"$VENV/bin/deepspeed" --num_gpus 2 launch/train.py --config "$CONFIG" --run_dir "$RUN_DIR" "$@"

echo "== 4/4 evaluation: t2v-eval (colour, shape and direction read back from the generated videos)"
"$PY" launch/eval.py --run_dir "$RUN_DIR"

latest=$(cat "$RUN_DIR/checkpoints/latest")
samples=$(ls -d "$RUN_DIR"/samples/step_* 2>/dev/null | tail -1)
cat <<MSG

Demo finished.
  checkpoint:   $RUN_DIR/checkpoints/$latest   (run 'make demo' again to resume from it)
  samples:      $samples/  (sample_*.mp4, sample_*.gif, sample_sheet.png, prompts.json)
  evaluation:   $RUN_DIR/eval/$latest/  (eval.json, sheet.png)
  training log: $RUN_DIR/train_log.jsonl
  fp32 export:  $PY launch/export.py --run_dir $RUN_DIR
MSG
