#!/bin/bash
# Submit sparkcurate's classify job to a Dataproc cluster made by create-cluster.sh.
#
# Needs: CLUSTER, REGION, BUCKET; optional INPUT, OUTPUT, MODEL, FILTER_BY. Run from the repository root
# (jobs/classify.py is uploaded by gcloud). Job properties have no "spark:" prefix; "^#^" switches the
# list delimiter so values may contain commas. Everything after "--" goes to jobs/classify.py.
# Not run here: written without Google Cloud access (see docs/platforms.md).
set -euo pipefail

: "${CLUSTER:?set CLUSTER}"
: "${REGION:?set REGION}"
: "${BUCKET:?set BUCKET}"
INPUT="${INPUT:-gs://$BUCKET/data/crawl/}"
OUTPUT="${OUTPUT:-gs://$BUCKET/curated/news/}"
MODEL="${MODEL:-gs://$BUCKET/models/domain-classifier}"
FILTER_BY="${FILTER_BY:-News}"

gcloud dataproc jobs submit pyspark jobs/classify.py \
    --cluster="$CLUSTER" \
    --region="$REGION" \
    --properties="^#^spark.task.resource.gpu.amount=0.25#spark.python.worker.reuse=true#spark.sql.execution.arrow.maxRecordsPerBatch=4096#spark.sql.execution.arrow.maxBytesPerBatch=67108864#spark.sql.sources.partitionOverwriteMode=dynamic#spark.executorEnv.TOKENIZERS_PARALLELISM=false" \
    -- \
    --input "$INPUT" \
    --output "$OUTPUT" \
    --classifier domain \
    --model "$MODEL" \
    --filter-by "$FILTER_BY" \
    --device cuda
