# Databricks notebook source
# MAGIC %md
# MAGIC # sparkcurate: classify a JSONL dataset with the domain classifier, keep some domains
# MAGIC
# MAGIC Runs sparkcurate's Python API on the `spark` session the notebook already has. The cluster must
# MAGIC come from `recipes/databricks/cluster.json` (GPU runtime, `init.sh` installs sparkcurate on every node).
# MAGIC
# MAGIC **Not run here**: written without access to a Databricks workspace; see docs/platforms.md.

# COMMAND ----------

# MAGIC %pip install /Volumes/main/default/artifacts/sparkcurate-0.1.0-py3-none-any.whl

# COMMAND ----------

# Parameters (widgets make the notebook usable as a job task with parameters).
dbutils.widgets.text("input_path", "/Volumes/main/default/raw/crawl/")  # noqa: F821 - Databricks global
dbutils.widgets.text("output_path", "/Volumes/main/default/curated/news/")  # noqa: F821
dbutils.widgets.text("model", "/dbfs/models/domain-classifier")  # noqa: F821
dbutils.widgets.text("filter_by", "News")  # noqa: F821

in_path = dbutils.widgets.get("input_path")  # noqa: F821
out_path = dbutils.widgets.get("output_path")  # noqa: F821
model = dbutils.widgets.get("model")  # noqa: F821
filter_by = [d.strip() for d in dbutils.widgets.get("filter_by").split(",") if d.strip()]  # noqa: F821

# COMMAND ----------

# What the cluster gives the job: GPU scheduling and (optional) RAPIDS Accelerator.
from sparkcurate.spark.rapids import detect_rapids

print("task GPU amount:", spark.conf.get("spark.task.resource.gpu.amount", "not set"))  # noqa: F821
print("RAPIDS:", detect_rapids(spark))  # noqa: F821

# COMMAND ----------

from sparkcurate import DomainClassifier, read_jsonl, write_jsonl

df = read_jsonl(spark, in_path)  # noqa: F821 - `spark` exists in every Databricks notebook
out = DomainClassifier(model=model, filter_by=filter_by)(df)
write_jsonl(out, out_path)

# COMMAND ----------

# Look at what was written.
display(spark.read.json(out_path).limit(20))  # noqa: F821
