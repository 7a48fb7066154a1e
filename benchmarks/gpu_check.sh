#!/usr/bin/env bash
# One GPU check for esd-sdk: erase speed and memory, TensorRT build + refit, ONNX Runtime CUDA and
# serving latency (edited vs unedited), in <= 10 minutes on a CUDA machine, written to ONE JSON.
#
#   bash benchmarks/gpu_check.sh                     # -> $OUT/gpu_check.json if $OUT is set,
#                                                    #    else benchmarks/results/gpu_check.json
#   bash benchmarks/gpu_check.sh path/to/result.json # or --out path/to/result.json
#   bash benchmarks/gpu_check.sh --dry-run           # every section, tiny, on the CPU (< 60 s);
#                                                    # also GPU_CHECK_DRY_RUN=1. Default output:
#                                                    # benchmarks/results/gpu_check.dry-run.json
#   bash benchmarks/gpu_check.sh --sections erase,serving --export-size sd1 --budget-s 900
#
# A section that cannot run here (no tensorrt, no CUDAExecutionProvider) is recorded as
# "skipped" with the reason; one that fails records its error, and the next one runs. Exit
# status: 0 when no section failed, 1 otherwise (the JSON is written either way).
# Python: $PYTHON, else the repository's .venv, else python3; esd-sdk comes from this source
# tree, installed or not. Details: benchmarks/gpu_check.py.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
dry="${GPU_CHECK_DRY_RUN:-0}"
[ "$dry" = "0" ] && dry=""
out=""
pass=()
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry=1 ;;
        --out) out="$2"; shift ;;
        --out=*) out="${1#--out=}" ;;
        --sections|--export-size|--budget-s) pass+=("$1" "$2"); shift ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) pass+=("$1") ;;
        *) out="$1" ;;
    esac
    shift
done
if [ -z "$out" ]; then
    if [ -n "$dry" ]; then
        out="$root/benchmarks/results/gpu_check.dry-run.json"
    elif [ -n "${OUT:-}" ]; then
        out="$OUT/gpu_check.json"
    else
        out="$root/benchmarks/results/gpu_check.json"
    fi
fi

py="${PYTHON:-}"
if [ -z "$py" ]; then
    if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py="python3"; fi
fi
# The tree this script lives in is what it measures, installed or not (gpu_check.py maps its
# export/ and serving/ folders into the package, as pyproject's package-dir does).
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$py" "$here/gpu_check.py" --out "$out" ${dry:+--dry-run} ${pass[@]+"${pass[@]}"}
