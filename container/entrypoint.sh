#!/usr/bin/env bash
# Entry point of the t2v-dist image.
#   IMAGE train [flags]       python launch/train.py (e.g. --config /opt/t2v/launch/configs/demo.yaml)
#   IMAGE shards CMD [flags]  t2v-shards        IMAGE generate [flags]  t2v-generate
#   IMAGE check               the stack check the build ran (GPU checks where a GPU is visible)
#   IMAGE CMD ...             anything else as is: deepspeed ..., python ..., bash
set -euo pipefail

# HOME and the compiler caches must be writable by whichever UID runs the image. On a read-only
# image (Apptainer SIF) or a HOME the UID cannot write, they move under $TMPDIR.
for var in HOME TRITON_CACHE_DIR TORCH_EXTENSIONS_DIR; do
  dir=${!var:-}
  if [ -z "$dir" ] || ! mkdir -p "$dir" 2>/dev/null || [ ! -w "$dir" ]; then
    dir=${TMPDIR:-/tmp}/t2v-$(id -u)/$(echo "$var" | tr '[:upper:]' '[:lower:]')
    mkdir -p "$dir"
    export "$var=$dir"
  fi
done

cmd=${1:-help}
[ $# -gt 0 ] && shift
case "$cmd" in
  train)    exec python /opt/t2v/launch/train.py "$@" ;;
  shards)   exec t2v-shards "$@" ;;
  generate) exec t2v-generate "$@" ;;
  check)    exec python /opt/t2v/container/check_stack.py "$@" ;;
  help|--help|-h)
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
    echo "Run configs: $(ls /opt/t2v/launch/configs | tr '\n' ' ')(in /opt/t2v/launch/configs)" ;;
  *)        exec "$cmd" "$@" ;;
esac
