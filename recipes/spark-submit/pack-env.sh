#!/bin/bash
# Build env.tar.gz, a relocatable Python environment with sparkcurate, for spark-submit --archives.
#
# PACKER=conda (default): conda-pack of a fresh conda env; carries its own Python, so worker nodes need
#                         no matching interpreter.
# PACKER=venv:            venv-pack of a fresh venv; smaller, but bin/python links to the base Python,
#                         which must exist at the same path on every node.
# WHEEL: the sparkcurate wheel or source dir to install (default: this repository).
# TORCH_INDEX: pip index for torch (e.g. https://download.pytorch.org/whl/cu124 for a pinned CUDA build).
# Not run here on a cluster: written and syntax-checked (bash -n) only (see docs/platforms.md).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PACKER="${PACKER:-conda}"
WHEEL="${WHEEL:-$REPO}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
OUT="${OUT:-$PWD/env.tar.gz}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

install_into() {
    # $1 = python of the new environment
    local py="$1"
    "$py" -m pip install --upgrade pip
    if [ -n "${TORCH_INDEX:-}" ]; then
        "$py" -m pip install --index-url "$TORCH_INDEX" torch
    fi
    "$py" -m pip install "$WHEEL"
}

case "$PACKER" in
    conda)
        conda create -y -p "$WORK/env" "python=$PYTHON_VERSION"
        install_into "$WORK/env/bin/python"
        conda install -y -p "$WORK/env" -c conda-forge conda-pack
        "$WORK/env/bin/conda-pack" -p "$WORK/env" -o "$OUT" --force
        ;;
    venv)
        "python$PYTHON_VERSION" -m venv "$WORK/env"
        install_into "$WORK/env/bin/python"
        "$WORK/env/bin/python" -m pip install venv-pack
        "$WORK/env/bin/venv-pack" -p "$WORK/env" -o "$OUT" --force
        ;;
    *)
        echo "pack-env.sh: PACKER must be conda or venv, got '$PACKER'" >&2
        exit 2
        ;;
esac
echo "wrote $OUT"
