#!/usr/bin/env bash
# One command for everything that needs a GPU (about 8 minutes on one H100/H200): the CUDA tests, the
# ops and attention benchmarks and a short real gpt2 training run. Writes gpu_check.json and
# gpu_check.md to --out (default: $OUT if set, else runs/gpu_check). Each section fails soft.
#
#   bash bench/gpu_check.sh                      # on the GPU machine
#   bash bench/gpu_check.sh --dry-run            # on a CPU: the same plumbing at toy sizes (GPU_CHECK_DRY=1)
#   bash bench/gpu_check.sh --fetch-wheels .whl  # on a machine with internet: the wheels a bare GPU machine lacks
#
# A bare GPU machine has python3 with torch, triton and the CUDA toolkit but no registry: the
# project's other dependencies (pyproject.toml) travel as wheels in .whl/ (or GPU_CHECK_WHEELS) and
# are installed from there with --no-index into a scratch folder; the repo itself is used in place.
# Other options go to bench/gpu_check.py (--budget-s, --sections, --train-steps, ...; see its --help).
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="${GPU_CHECK_WHEELS:-$REPO/.whl}"
SITE="${GPU_CHECK_SITE:-/tmp/gpu_check_site}"
ARGS=()

# Packages of pyproject.toml (and their own needs) that the GPU image does not have; versions within
# pyproject's bounds. deepspeed is an sdist: built here into a pure-Python wheel (its CUDA ops JIT-compile there).
FETCH=(av==18.* fire termcolor webdataset braceexpand hjson pydantic annotated-types typing-inspection)

fetch_wheels() {
    local dest="$1" py="${PYTHON:-python3}"
    mkdir -p "$dest"
    local plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
                --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
    "$py" -m pip download -q --no-deps "${plat[@]}" -d "$dest" "${FETCH[@]}" || return 1
    # pydantic pins its pydantic-core exactly: fetch that version
    local core
    core="$("$py" - "$dest" <<'EOF'
import glob, re, sys, zipfile
whl = glob.glob(f"{sys.argv[1]}/pydantic-[0-9]*.whl")[0]
meta = zipfile.ZipFile(whl).read(next(n for n in zipfile.ZipFile(whl).namelist() if n.endswith("METADATA"))).decode()
print(re.search(r"^Requires-Dist: (pydantic-core\s*==\s*[\w.]+)", meta, re.M).group(1).replace(" ", ""))
EOF
)" || return 1
    "$py" -m pip download -q --no-deps "${plat[@]}" -d "$dest" "$core" || return 1
    "$py" -m pip wheel -q --no-deps -w "$dest" "deepspeed>=0.16" || return 1
    if [ "${GPU_CHECK_XFORMERS:-0}" = 1 ]; then  # large: can exceed what a device call carries
        "$py" -m pip download -q --no-deps "${plat[@]}" -d "$dest" "xformers>=0.0.35,<0.0.36" || return 1
    fi
    du -sh "$dest"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) export GPU_CHECK_DRY=1 ;;
        --fetch-wheels) fetch_wheels "${2:?--fetch-wheels needs a folder}"; exit $? ;;
        --wheels) WHEELS="${2:?}"; shift ;;
        -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; ARGS+=(--help) ;;
        *) ARGS+=("$1") ;;
    esac
    shift
done

# The interpreter: $PYTHON, else the repo's .venv on a development machine, else the image's python3.
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
fi

if compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "[gpu_check] installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl || echo "[gpu_check] WARNING: wheel install failed; sections that need them will say so"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$REPO" && exec "$PY" bench/gpu_check.py "${ARGS[@]}"
