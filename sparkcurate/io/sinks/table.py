"""A catalog table out (``--output-table db.tbl``): the kept rows in a table partitioned by ``file_name``, as
Parquet or Delta (``--output-format``; Parquet when not given).

- First run: ``saveAsTable`` creates the table (in the session's catalog: the warehouse directory, the Hive
  metastore, Unity Catalog or Glue, whatever the cluster uses), partitioned by ``file_name``.
- Re-runs: ``insertInto(overwrite=True)`` under ``spark.sql.sources.partitionOverwriteMode=dynamic``, so only the
  partitions this run writes are replaced; an input that keeps nothing this time has its partition dropped
  (Parquet: ``ALTER TABLE .. DROP PARTITION``; Delta: a ``DELETE``). Columns are matched by name (``insertInto``
  itself goes by position); a table of another format, partitioning or set of columns is refused before
  anything is written, with what differs.
- The run's own files (``_summary.json``, ``_rejects``, ``_report``) still go to ``--output``.
- The table keeps the codec it was created with (Spark stores it with the table).
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import TYPE_CHECKING, ClassVar, Iterable, Iterator

from sparkcurate.io.sinks.base import Sink
from sparkcurate.io.sinks.delta import PARQUET_CODECS, delete_rows, latest_version

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

# --output-format -> the table's provider (USING ...).
TABLE_FORMATS = {"parquet": "parquet", "delta": "delta"}
_PART = r"(?:[A-Za-z0-9_]+|`(?:[^`]|``)+`)"
_TABLE_NAME = re.compile(rf"{_PART}(?:\.{_PART}){{0,2}}")
OVERWRITE_MODE = "spark.sql.sources.partitionOverwriteMode"


class TableSink(Sink):
    """The kept rows in catalog table ``table`` (``[catalog.]db.tbl``), as ``fmt`` (parquet or delta)."""

    name: ClassVar[str] = "table"
    compressions: ClassVar[tuple[str, ...]] = PARQUET_CODECS
    layouts: ClassVar[tuple[str, ...]] = ("partitioned",)

    def __init__(self, table: str, fmt: str = "parquet"):
        if not _TABLE_NAME.fullmatch(table or ""):
            raise ValueError(f"--output-table {table!r} is not a table name ([catalog.]database.table; quote a "
                             "part holding other characters in backticks)")
        if fmt not in TABLE_FORMATS:
            raise ValueError(f"--output-table is written as {' or '.join(TABLE_FORMATS)}, not {fmt}: set "
                             "--output-format")
        self.table = table
        self.provider = TABLE_FORMATS[fmt]
        self.where = f"table {table}"

    @property
    def format_name(self) -> str:
        return self.provider

    def write(self, df: "DataFrame", out: str, layout: str, file_name_column: str,
              compression: str | None) -> None:
        self.check(layout, compression)
        spark = df.sparkSession
        if not spark.catalog.tableExists(self.table):
            log.info("creating table %s (%s, partitioned by %s)", self.table, self.provider, file_name_column)
            warn_if_catalog_forgets(spark, self.table)
            (df.write.format(self.provider).mode("error").option("compression", self.compression(compression))
             .partitionBy(file_name_column).saveAsTable(self.table))
            return
        columns = self.table_columns(spark, df, file_name_column)  # checked before the run too (check_target)
        with session_conf(spark, OVERWRITE_MODE, "dynamic"):
            df.select(*columns).write.insertInto(self.table, overwrite=True)

    def check_target(self, df: "DataFrame", file_name_column: str) -> None:
        if df.sparkSession.catalog.tableExists(self.table):
            self.table_columns(df.sparkSession, df, file_name_column)

    def table_columns(self, spark: "SparkSession", df: "DataFrame", file_name_column: str) -> list[str]:
        """The existing table's columns in its order, after checking it can take ``df``: same format, partitioned
        by ``file_name_column`` alone, the same column names. A ``ValueError`` says what differs."""
        provider = table_provider(spark, self.table)
        if provider is not None and provider.lower() != self.provider:
            raise ValueError(f"table {self.table} is {provider}, not {self.provider}: set --output-format "
                             f"{provider.lower()} or choose another table")
        cols = spark.catalog.listColumns(self.table)
        partitions = [c.name for c in cols if c.isPartition]
        if partitions != [file_name_column]:
            raise ValueError(f"table {self.table} is partitioned by {partitions or 'nothing'}, not "
                             f"[{file_name_column!r}]: a re-run could not replace one input's rows alone")
        names = [c.name for c in cols]
        missing, extra = sorted(set(names) - set(df.columns)), sorted(set(df.columns) - set(names))
        if missing or extra:
            raise ValueError(f"table {self.table} does not match this run's columns (the table's have "
                             f"{missing or 'none'} that the run lacks; the run's have {extra or 'none'} that the "
                             "table lacks): write to another table or drop this one")
        return names

    def mirror_name(self, file_name: str, compression: str | None) -> str:
        raise ValueError("a table has no mirror layout: it is partitioned by file_name")

    def table_version(self, spark: "SparkSession", out: str) -> int | None:
        if self.provider != "delta" or not spark.catalog.tableExists(self.table):
            return None
        jvm = spark.sparkContext._jvm
        return latest_version(jvm.io.delta.tables.DeltaTable.forName(spark._jsparkSession, self.table))

    def remove_outputs(self, spark: "SparkSession", out: str, layout: str, file_name_column: str,
                       file_names: Iterable[str], compression: str | None) -> None:
        names = sorted(set(file_names))
        if not names or not spark.catalog.tableExists(self.table):
            return
        log.info("dropping the partitions of %d input(s) that keep no record this time from %s: %s", len(names),
                 self.table, names[:5])
        if self.provider == "delta":
            jvm = spark.sparkContext._jvm
            delete_rows(jvm.io.delta.tables.DeltaTable.forName(spark._jsparkSession, self.table),
                        file_name_column, names)
            return
        for name in names:
            spark.sql(f"ALTER TABLE {self.table} DROP IF EXISTS PARTITION "
                      f"({quote_identifier(file_name_column)} = {sql_string(name)})")


def warn_if_catalog_forgets(spark: "SparkSession", table: str) -> None:
    """Spark's default catalog (``in-memory``, without Hive support) forgets a table when the session ends, while
    its files stay in the warehouse: a later run in a new session would then fail on the existing location."""
    if spark.conf.get("spark.sql.catalogImplementation", "in-memory") == "in-memory":
        log.warning("table %s is registered in Spark's in-memory catalog, which forgets it when this session "
                    "ends (its files stay under spark.sql.warehouse.dir); for re-runs use a persistent catalog "
                    "(Hive metastore, Unity Catalog, Glue; locally --conf spark.sql.catalogImplementation=hive): "
                    "docs/formats.md", table)


def table_provider(spark: "SparkSession", table: str) -> str | None:
    """The table's format (``Provider`` in ``DESCRIBE TABLE EXTENDED``), or None where the catalog does not say."""
    for row in spark.sql(f"DESCRIBE TABLE EXTENDED {table}").collect():
        if (row[0] or "").strip() == "Provider":
            return (row[1] or "").strip() or None
    return None


def quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def sql_string(value: str) -> str:
    """``value`` as a Spark SQL string literal (backslash escapes, Spark's default parser)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@contextlib.contextmanager
def session_conf(spark: "SparkSession", key: str, value: str) -> Iterator[None]:
    """``key`` set to ``value`` for the block, then put back as it was."""
    before = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)
