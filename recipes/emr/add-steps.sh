#!/bin/bash
# Submit sparkcurate's classify job to a running EMR cluster as a Spark step (cluster deploy mode).
#
# Needs: CLUSTER_ID (j-...), BUCKET; optional INPUT, OUTPUT, MODEL, FILTER_BY. The cluster must have been
# created with bootstrap.sh and configurations.json from this folder, and jobs/classify.py copied to
# s3://BUCKET/sparkcurate/jobs/classify.py. The model is an s3:// URI: each node copies it once into its
# local cache (sparkcurate.models.remote), so it needs s3fs (installed by bootstrap.sh).
# Not run here: written without AWS access (see docs/platforms.md).
set -euo pipefail

: "${CLUSTER_ID:?set CLUSTER_ID=j-XXXXXXXX}"
: "${BUCKET:?set BUCKET=your-bucket}"
INPUT="${INPUT:-s3://$BUCKET/data/crawl/}"
OUTPUT="${OUTPUT:-s3://$BUCKET/curated/news/}"
MODEL="${MODEL:-s3://$BUCKET/models/domain-classifier}"
FILTER_BY="${FILTER_BY:-News}"

# EMR's --steps shorthand splits Args on commas, so the comma-separated filter list goes through a
# JSON steps file instead of the shorthand.
STEPS_FILE=$(mktemp)
trap 'rm -f "$STEPS_FILE"' EXIT
cat > "$STEPS_FILE" <<JSON
[
  {
    "Type": "Spark",
    "Name": "sparkcurate-classify",
    "ActionOnFailure": "CONTINUE",
    "Args": ["--deploy-mode", "cluster",
             "--conf", "spark.task.resource.gpu.amount=0.25",
             "--conf", "spark.yarn.maxAppAttempts=1",
             "s3://$BUCKET/sparkcurate/jobs/classify.py",
             "--input", "$INPUT",
             "--output", "$OUTPUT",
             "--classifier", "domain",
             "--model", "$MODEL",
             "--filter-by", "$FILTER_BY",
             "--device", "cuda"]
  }
]
JSON

aws emr add-steps --cluster-id "$CLUSTER_ID" --steps "file://$STEPS_FILE"

# The shorthand form, equivalent when no argument contains a comma:
#   aws emr add-steps --cluster-id "$CLUSTER_ID" --steps \
#     Type=Spark,Name=sparkcurate-classify,ActionOnFailure=CONTINUE,Args=[--deploy-mode,cluster,\
#   --conf,spark.task.resource.gpu.amount=0.25,s3://$BUCKET/sparkcurate/jobs/classify.py,\
#   --input,$INPUT,--output,$OUTPUT,--classifier,domain,--model,$MODEL,--filter-by,News,--device,cuda]
