"""A catalog table in (``--input-table db.tbl``, or ``--input-format table --input db.tbl``): whatever the
session's catalog holds (a Parquet/ORC/Delta/Iceberg table, a Hive table, a view), read as ``spark.read.table``.

- The files are those Spark reads for the table now (``DataFrame.inputFiles()``), listed for the summary, the
  split plan and the per-file report; ``file_name`` is each record's file relative to the table's location
  (``DESCRIBE TABLE EXTENDED``'s Location), e.g. ``lang=en/part-00000-....snappy.parquet``.
- A table without files (a view, a JDBC or in-memory table) reports no file for its records: their
  ``file_name`` is the table name as given, so the partitioned output, rejects and report hold them as one input.
- The schema is the table's own; ``--schema`` does not apply (an ``InputError`` says so).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar

from sparkcurate.io.listing import InputError, InputListing
from sparkcurate.io.sources.spark import SparkFormatSource, loaded_listing

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

# A table name: dot-separated parts, each a plain identifier or a `back-quoted` one (`` doubles a back quote).
_PART = r"(?:[A-Za-z0-9_]+|`(?:[^`]|``)+`)"
TABLE_NAME = re.compile(rf"^{_PART}(?:\.{_PART})*$")


class TableSource(SparkFormatSource):
    """A table in the session's catalog, by name."""

    name: ClassVar[str] = "table"
    format: ClassVar[str] = "table"
    label: ClassVar[str] = "table"

    def list_files(self, spark: "SparkSession", path: str) -> InputListing:
        table = check_table_name(path)
        if not spark.catalog.tableExists(table):
            raise InputError(f"no table {table!r} in the session's catalog (spark.catalog.listTables() lists them)")
        df = spark.read.table(table)
        return loaded_listing(spark, df, table, table_location(spark, table))

    def _loaded(self, spark: "SparkSession", source: str, schema) -> "DataFrame":
        if schema is not None:
            raise InputError("--schema does not apply to a table input: a table is read with its own schema")
        return spark.read.table(check_table_name(source))


def check_table_name(name: str) -> str:
    """``name`` when it is a table name (``tbl``, ``db.tbl``, ``catalog.db.tbl``, parts may be `quoted`)."""
    if not name or not TABLE_NAME.match(name.strip()):
        raise InputError(f"{name!r} is not a table name (db.table, or catalog.db.table; quote odd parts in `...`)")
    return name.strip()


def table_location(spark: "SparkSession", table: str) -> str:
    """Where the table's files live (its Location), or "" for a table without one (a view)."""
    rows = spark.sql(f"DESCRIBE TABLE EXTENDED {table}").collect()
    for row in rows:
        if (row[0] or "").strip() == "Location" and row[1]:
            return str(row[1]).strip()
    return ""
