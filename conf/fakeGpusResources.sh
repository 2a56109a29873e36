#!/usr/bin/env bash
# Fake GPU discovery script for testing Spark GPU scheduling on a CPU-only machine.
#
# Prints {"name": "gpu", "addresses": ["0", ..., "N-1"]} with N from SPARKCURATE_FAKE_GPUS
# (default 2). Use it with local-cluster[W,C,MEM] (see conf/spark-defaults.gpu-standalone-cluster.conf)
# to check that tasks receive addresses through TaskContext.resources()["gpu"]; sparkcurate
# must then be run with --device cpu, because the addresses do not name real CUDA devices.
# A value that is not a whole number >= 0 is an error (exit 1): a typo should not silently
# turn into "no GPU".
set -u
n="${SPARKCURATE_FAKE_GPUS:-2}"
if ! [[ "$n" =~ ^[0-9]+$ ]]; then
    echo "fakeGpusResources.sh: SPARKCURATE_FAKE_GPUS must be a whole number >= 0, got '$n'" >&2
    exit 1
fi
out='{"name": "gpu", "addresses": ['
sep=''
for ((i = 0; i < n; i++)); do
    out+="${sep}\"${i}\""
    sep=', '
done
out+=']}'
printf '%s\n' "$out"
