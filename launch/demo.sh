#!/usr/bin/env bash
# The embedded demo (`make demo`): synthetic moving-shape shards -> 2 CPU ranks of DeepSpeed ZeRO-2
# over gloo -> checkpoints and sample videos. Runs again resume: shards already built are kept, and
# training continues from the latest checkpoint in runs/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
CONFIG=launch/configs/demo.yaml
RUN_DIR=${RUN_DIR:-runs/demo}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}

echo "== 1/3 shards: data/demo (incremental: complete shards are kept)"
"$PY" -m shards.cli synthetic --out data/demo --num_clips 4000 --frames 16 --size 32 --seed 7 \
    --samples_per_shard 250 --progress False

echo "== 2/3 config check for 2 ranks"
"$PY" -m t2v_dist.config --config "$CONFIG" --world-size 2 --run_dir="$RUN_DIR" >/dev/null

echo "== 3/3 training: deepspeed --num_gpus 2 (CPU accelerator, gloo, ZeRO-2)"
"$VENV/bin/deepspeed" --num_gpus 2 launch/train.py --config "$CONFIG" --run_dir "$RUN_DIR" "$@"

latest=$(cat "$RUN_DIR/checkpoints/latest")
samples=$(ls -d "$RUN_DIR"/samples/step_* 2>/dev/null | tail -1)
cat <<MSG

Demo finished.
  checkpoint:   $RUN_DIR/checkpoints/$latest   (run 'make demo' again to resume from it)
  samples:      $samples/  (sample_*.mp4, sample_*.gif, sample_sheet.png, prompts.json)
  training log: $RUN_DIR/train_log.jsonl
  fp32 export:  $PY launch/export.py --run_dir $RUN_DIR
MSG
