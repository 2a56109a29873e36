#!/bin/bash
# Dataproc initialization action for sparkcurate (runs as root on every node after cluster creation).
#
# Reads the metadata key sparkcurate-prefix (gs://BUCKET/sparkcurate) set by create-cluster.sh, installs
# the newest sparkcurate-*.whl found there (plus gcsfs, so gs:// models can be copied to local disk) into
# the Python Spark uses, puts the GPU discovery script at /opt/sparkcurate/getGpusResources.sh and
# creates the node-local model cache. Must run after Google's install_gpu_driver.sh (list it second).
# Not run here: written without Google Cloud access (see docs/platforms.md).
set -euo pipefail

PREFIX=$(/usr/share/google/get_metadata_value attributes/sparkcurate-prefix)
CACHE=/mnt/sparkcurate/models

mkdir -p /opt/sparkcurate "$CACHE"
chmod 1777 "$CACHE"
gsutil cp "$PREFIX/getGpusResources.sh" /opt/sparkcurate/getGpusResources.sh
chmod 0755 /opt/sparkcurate/getGpusResources.sh

WHEEL=$(gsutil ls "$PREFIX/sparkcurate-*.whl" | sort | tail -n 1)
if [ -z "$WHEEL" ]; then
    echo "init-action.sh: no sparkcurate-*.whl under $PREFIX" >&2
    exit 1
fi
gsutil cp "$WHEEL" /tmp/
# Dataproc 2.x images run PySpark on the conda Python under /opt/conda/default.
/opt/conda/default/bin/pip install "/tmp/$(basename "$WHEEL")" gcsfs
