#!/usr/bin/env bash
# GPU discovery script for Spark resource scheduling (sparkcurate).
#
# Spark runs this on each worker/executor (spark.worker.resource.gpu.discoveryScript,
# spark.executor.resource.gpu.discoveryScript) and reads one JSON line from stdout:
#     {"name": "gpu", "addresses": ["0","1"]}
#
# Behaviour:
#   * GPUs are listed with `nvidia-smi --query-gpu=index --format=csv,noheader`.
#   * No nvidia-smi, nvidia-smi failing, hanging (>30 s) or printing no index: prints
#     {"name": "gpu", "addresses": []} and exits 0, so a CPU-only node starts instead of
#     crashing the worker. (Spark then schedules no GPU task there; an application that asks
#     for spark.executor.resource.gpu.amount >= 1 gets no executor on that node.)
#   * CUDA_VISIBLE_DEVICES: when it is set (e.g. a worker started with CUDA_VISIBLE_DEVICES=2,3),
#     only those GPUs are reported, by the ids written there: ["2","3"]. Numeric ids that nvidia-smi
#     does not list are dropped; UUID/MIG ids (GPU-..., MIG-...) are passed through as they are.
#     sparkcurate (sparkcurate/spark/devices.py) turns a task's address into the CUDA ordinal by its
#     position in the process's CUDA_VISIBLE_DEVICES ("3" -> cuda:1), and uses the address as the
#     ordinal when CUDA_VISIBLE_DEVICES is unset. This is what lets several standalone workers share one
#     host: start each with its own CUDA_VISIBLE_DEVICES (its executors inherit it) instead of all of
#     them handing out GPU "0". CUDA_VISIBLE_DEVICES set but empty, or "-1" / "NoDevFiles", means
#     "no GPU": prints an empty list.
#     Set SPARKCURATE_DISCOVERY_IGNORE_CVD=1 to report physical indexes regardless.
#
# Only bash builtins are used besides nvidia-smi (and `timeout` when present), so the script
# also works with a minimal PATH. Verified here on a CPU-only machine with a fake nvidia-smi
# (tests/test_conf.py); not run on a real GPU host from this repository's CI.

set -u

emit() {
    # $@ = addresses; prints the JSON Spark expects.
    local out='{"name": "gpu", "addresses": ['
    local sep=''
    local a
    for a in "$@"; do
        out+="${sep}\"${a}\""
        sep=', '
    done
    out+=']}'
    printf '%s\n' "$out"
}

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "getGpusResources.sh: nvidia-smi not found; reporting no GPU" >&2
    emit
    exit 0
fi

if command -v timeout >/dev/null 2>&1; then
    raw=$(timeout 30 nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null)
else
    raw=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null)
fi
rc=$?
if [ "$rc" -ne 0 ]; then
    echo "getGpusResources.sh: nvidia-smi failed (exit $rc); reporting no GPU" >&2
    emit
    exit 0
fi

physical=()
while IFS= read -r line; do
    line="${line//[[:space:]]/}"
    if [[ "$line" =~ ^[0-9]+$ ]]; then
        physical+=("$line")
    fi
done <<< "$raw"

if [ "${SPARKCURATE_DISCOVERY_IGNORE_CVD:-0}" != "1" ] && [ -n "${CUDA_VISIBLE_DEVICES+x}" ]; then
    cvd="${CUDA_VISIBLE_DEVICES//[[:space:]]/}"
    if [ -z "$cvd" ] || [ "$cvd" = "-1" ] || [ "$cvd" = "NoDevFiles" ]; then
        echo "getGpusResources.sh: CUDA_VISIBLE_DEVICES='$CUDA_VISIBLE_DEVICES' hides every GPU" >&2
        emit
        exit 0
    fi
    IFS=',' read -r -a visible <<< "$cvd"
    chosen=()
    for id in "${visible[@]}"; do
        [ -z "$id" ] && continue
        if [[ "$id" =~ ^[0-9]+$ ]]; then
            found=0
            for p in "${physical[@]+"${physical[@]}"}"; do
                [ "$p" = "$id" ] && found=1
            done
            if [ "$found" -eq 0 ]; then
                echo "getGpusResources.sh: CUDA_VISIBLE_DEVICES lists GPU $id, which nvidia-smi does not; skipped" >&2
                continue
            fi
        fi
        chosen+=("$id")
    done
    emit "${chosen[@]+"${chosen[@]}"}"
    exit 0
fi

emit "${physical[@]+"${physical[@]}"}"
exit 0
