#!/bin/bash
# EMR bootstrap action for sparkcurate: runs on every node before YARN and Spark start.
#
# Usage (in create-cluster): --bootstrap-actions Path=s3://BUCKET/sparkcurate/bootstrap.sh,Args=[s3://BUCKET/sparkcurate]
# The argument is the S3 prefix holding sparkcurate-*.whl and getGpusResources.sh.
# What it does: installs sparkcurate and PyTorch (CUDA build) into the node's python3 (the one Spark's
# Python workers use on EMR), puts the GPU discovery script at /opt/sparkcurate/getGpusResources.sh (the
# path configurations.json names), and creates the node-local model cache on the instance store.
# Not run here: written without AWS access (see docs/platforms.md).
set -euo pipefail

PREFIX="${1:?usage: bootstrap.sh s3://BUCKET/sparkcurate}"
CACHE="${SPARKCURATE_CACHE:-/mnt/sparkcurate/models}"

sudo mkdir -p /opt/sparkcurate "$CACHE"
sudo chmod 1777 "$CACHE"
aws s3 cp "$PREFIX/getGpusResources.sh" /tmp/getGpusResources.sh
sudo install -m 0755 /tmp/getGpusResources.sh /opt/sparkcurate/getGpusResources.sh

WHEEL_NAME=$(aws s3 ls "$PREFIX/" | awk '/sparkcurate-.*\.whl$/ {print $4}' | sort | tail -n 1)
if [ -z "$WHEEL_NAME" ]; then
    echo "bootstrap.sh: no sparkcurate-*.whl under $PREFIX" >&2
    exit 1
fi
aws s3 cp "$PREFIX/$WHEEL_NAME" "/tmp/$WHEEL_NAME"

# GPU nodes need the CUDA build of torch; the default PyPI wheel for Linux x86_64 is CUDA-enabled.
sudo python3 -m pip install --upgrade pip
sudo python3 -m pip install "/tmp/$WHEEL_NAME" s3fs
