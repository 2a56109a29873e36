#!/bin/bash
# Databricks cluster init script for sparkcurate (runs on the driver and every worker before Spark starts).
#
# What it does: installs the sparkcurate wheel (and its dependencies not already in the GPU ML runtime)
# into the cluster's Python, creates the node-local model cache, and, when SPARKCURATE_RAPIDS_JAR is set
# (cluster-rapids.json), copies the RAPIDS Accelerator jar into /databricks/jars so spark.plugins can load it.
# Not run here: written without access to a Databricks workspace (see docs/platforms.md).
set -euo pipefail

WHEEL="${SPARKCURATE_WHEEL:-/Volumes/main/default/artifacts/sparkcurate-0.1.0-py3-none-any.whl}"
CACHE="${SPARKCURATE_CACHE:-/local_disk0/sparkcurate/models}"

# The GPU ML runtime already has torch with CUDA; --upgrade-strategy only-if-needed keeps it.
/databricks/python/bin/pip install --upgrade-strategy only-if-needed "$WHEEL"

mkdir -p "$CACHE"
chmod 1777 "$CACHE"

if [ -n "${SPARKCURATE_RAPIDS_JAR:-}" ]; then
    # The jar's Scala version must match the runtime (Databricks runtimes up to 15.x are Scala 2.12).
    cp "$SPARKCURATE_RAPIDS_JAR" /databricks/jars/
fi
