#!/bin/bash
# Run sparkcurate's classify job with spark-submit on a cluster, shipping env.tar.gz (pack-env.sh).
#
# Usage: MASTER=spark://HOST:7077 ./recipes/spark-submit/submit.sh --input IN --output OUT \
#            --classifier domain --model s3://BUCKET/models/domain-classifier [--filter-by News]
# MASTER: spark://... (standalone, client mode) or yarn (cluster mode). CONF: a spark-defaults file from
# conf/ (default: the multi-GPU standalone one). The discovery script travels with --files, so the
# executors find it in their working directory. Arguments after the variables go to jobs/classify.py.
# Not run on a cluster here (no cluster access); syntax-checked with bash -n (see docs/platforms.md).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
: "${MASTER:?set MASTER=spark://HOST:7077 or yarn}"
ENV_ARCHIVE="${ENV_ARCHIVE:-$PWD/env.tar.gz}"
CONF="${CONF:-$REPO/conf/spark-defaults.gpu-standalone-cluster.conf}"

if [ ! -f "$ENV_ARCHIVE" ]; then
    echo "submit.sh: $ENV_ARCHIVE not found; build it with recipes/spark-submit/pack-env.sh" >&2
    exit 2
fi

# Python on the executors: the unpacked archive. (Not spark.pyspark.python: that conf outranks
# PYSPARK_DRIVER_PYTHON and would send the client-mode driver to a ./environment that only executors have.)
export PYSPARK_PYTHON=./environment/bin/python
if [ "$MASTER" = "yarn" ]; then
    # The driver runs in a YARN container too and uses ./environment there (appMasterEnv below);
    # PYSPARK_DRIVER_PYTHON must not be set in YARN/Kubernetes cluster mode.
    DEPLOY_MODE=cluster
    unset PYSPARK_DRIVER_PYTHON
else
    # Standalone supports Python apps in client mode only: the driver uses the local environment.
    DEPLOY_MODE=client
    export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-python}"
fi

exec spark-submit \
    --master "$MASTER" \
    --deploy-mode "$DEPLOY_MODE" \
    --properties-file "$CONF" \
    --archives "$ENV_ARCHIVE#environment" \
    --files "$REPO/conf/getGpusResources.sh" \
    --conf spark.executor.resource.gpu.discoveryScript=./getGpusResources.sh \
    --conf spark.yarn.appMasterEnv.PYSPARK_PYTHON=./environment/bin/python \
    --conf spark.executorEnv.TOKENIZERS_PARALLELISM=false \
    --conf spark.executorEnv.SPARKCURATE_CACHE=/var/tmp/sparkcurate/models \
    "$REPO/jobs/classify.py" "$@"
