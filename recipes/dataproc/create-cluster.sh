#!/bin/bash
# Create a Dataproc cluster with GPU workers ready for sparkcurate.
#
# Needs: CLUSTER, REGION, BUCKET (gs://BUCKET/sparkcurate/ holds the wheel, getGpusResources.sh,
# init-action.sh). Google's gpu/install_gpu_driver.sh initialization action installs the NVIDIA driver and
# turns on YARN GPU scheduling; our init-action.sh installs sparkcurate. Cluster properties carry the
# "spark:" prefix (they go to spark-defaults.conf on every node).
# Not run here: written without Google Cloud access (see docs/platforms.md).
set -euo pipefail

: "${CLUSTER:?set CLUSTER}"
: "${REGION:?set REGION}"
: "${BUCKET:?set BUCKET}"
WORKERS="${WORKERS:-4}"
GPU_TYPE="${GPU_TYPE:-nvidia-l4}"
MACHINE="${MACHINE:-g2-standard-16}"

gcloud dataproc clusters create "$CLUSTER" \
    --region="$REGION" \
    --image-version=2.2-debian12 \
    --master-machine-type=n2-standard-8 \
    --num-workers="$WORKERS" \
    --worker-machine-type="$MACHINE" \
    --worker-accelerator="type=$GPU_TYPE,count=1" \
    --initialization-actions="gs://goog-dataproc-initialization-actions-${REGION}/gpu/install_gpu_driver.sh,gs://$BUCKET/sparkcurate/init-action.sh" \
    --metadata="gpu-driver-provider=NVIDIA,sparkcurate-prefix=gs://$BUCKET/sparkcurate" \
    --properties="^#^spark:spark.executor.resource.gpu.amount=1#spark:spark.executor.resource.gpu.discoveryScript=/opt/sparkcurate/getGpusResources.sh#spark:spark.task.resource.gpu.amount=0.25#spark:spark.dynamicAllocation.enabled=false#spark:spark.executorEnv.SPARKCURATE_CACHE=/mnt/sparkcurate/models#spark:spark.executorEnv.TOKENIZERS_PARALLELISM=false"
