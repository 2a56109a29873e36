"""Delta Lake out (``--output-format delta``): OUT becomes a Delta table partitioned by ``file_name``.

Needs Delta Lake on the cluster: its jars (``io.delta:delta-spark_<scala>`` and ``io.delta:delta-storage``, the
release that matches the cluster's Spark) and the two session settings Delta documents,
``spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension`` and
``spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog`` (docs/formats.md).

- A re-run replaces only the partitions it writes: Delta's dynamic partition overwrite (one commit, readers see
  the old table or the new, never half), and the partitions of inputs that keep nothing this time are emptied
  with a Delta ``DELETE`` (a commit too), never by removing files under the table.
- The run's own files (``_summary.json``, ``_rejects``, ``_report``) sit beside ``_delta_log``: Delta reads only
  the files its log names, and ``VACUUM`` leaves names that start with ``_`` alone.
- Only the partitioned layout: a table is one dataset, not one file per input.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar, Iterable

from sparkcurate.io.sinks.base import Sink

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

# Delta writes Parquet files: its codecs are Parquet's.
PARQUET_CODECS = ("snappy", "zstd", "gzip", "lz4", "none")


class DeltaSink(Sink):
    """A Delta table at OUT, partitioned by ``file_name``."""

    name: ClassVar[str] = "delta"
    compressions: ClassVar[tuple[str, ...]] = PARQUET_CODECS
    layouts: ClassVar[tuple[str, ...]] = ("partitioned",)

    def write(self, df: "DataFrame", out: str, layout: str, file_name_column: str,
              compression: str | None) -> None:
        self.check(layout, compression)
        (df.write.format("delta").mode("overwrite").option("partitionOverwriteMode", "dynamic")
         .option("compression", self.compression(compression)).partitionBy(file_name_column).save(out))

    def mirror_name(self, file_name: str, compression: str | None) -> str:
        raise ValueError("a Delta table has no mirror layout: it is partitioned by file_name")

    def table_version(self, spark: "SparkSession", out: str) -> int | None:
        if not is_delta_table(spark, out):
            return None
        jvm = spark.sparkContext._jvm
        return latest_version(jvm.io.delta.tables.DeltaTable.forPath(spark._jsparkSession, out))

    def remove_outputs(self, spark: "SparkSession", out: str, layout: str, file_name_column: str,
                       file_names: Iterable[str], compression: str | None) -> None:
        names = sorted(set(file_names))
        if not names or not is_delta_table(spark, out):
            return
        log.info("emptying the partitions of %d input(s) that keep no record this time: %s", len(names),
                 names[:5])
        jvm = spark.sparkContext._jvm
        table = jvm.io.delta.tables.DeltaTable.forPath(spark._jsparkSession, out)
        delete_rows(table, file_name_column, names)


def is_delta_table(spark: "SparkSession", path: str) -> bool:
    """Whether ``path`` holds a Delta table (its ``_delta_log``); False on a first run."""
    from sparkcurate.io.fs import HadoopFS

    return HadoopFS(spark, path).exists("_delta_log")


def latest_version(jtable) -> int | None:
    """The latest commit's version of a Delta table (its ``history(1)``, through the JVM API), None where it
    cannot be read (the summary says so rather than the run failing at its end)."""
    try:
        row = jtable.history(1).head()
        return int(row.getLong(row.fieldIndex("version")))
    except Exception as exc:  # never fail a finished run over a figure of its summary
        log.warning("could not read the Delta table's version: %s", exc)
        return None


def delete_rows(jtable, file_name_column: str, names: list[str]) -> None:
    """``DELETE FROM <table> WHERE file_name IN names`` through Delta's own ``DeltaTable`` (JVM) API: a column
    expression, so no name is ever quoted into SQL."""
    from pyspark.sql import functions as F

    jtable.delete(F.col(file_name_column).isin(names)._jc)
