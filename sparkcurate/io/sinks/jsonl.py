"""JSON lines out: partitioned by ``file_name``, or one file per input (``layout="mirror"``).

Re-runs replace only what they rewrite: the partitioned layout uses Spark's dynamic partition overwrite (Spark
stages the new files and swaps partitions at job commit, so a failed re-run leaves the old output), and the mirror
layout writes to a staging folder first and then replaces one file per input. Names: ``sparkcurate.io.names``.

Rows read line by line (``--jsonl-mode exact``: the source's ``RAW_LINE_COLUMN``) are written as their own line
with the other columns (the predictions) appended before its last ``}`` (``spliced_lines``): the record's own
fields stay as they were written, byte for byte.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import unquote

from sparkcurate.io.names import safe_relative_path
from sparkcurate.io.sinks.base import LAYOUTS, Sink
from sparkcurate.io.sources.base import RAW_LINE_COLUMN
from sparkcurate.io.sources.jsonl import EMPTY_OBJECT_PATTERN

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)


class JsonlSink(Sink):
    """JSON lines, optionally compressed (``gzip``, ``bzip2``)."""

    name: ClassVar[str] = "jsonl"

    def write(self, df: "DataFrame", out: str, layout: str, file_name_column: str,
              compression: str | None) -> None:
        write_jsonl(df, out, layout, file_name_column, compression)

    def mirror_name(self, file_name: str, compression: str | None) -> str:
        return safe_relative_path(file_name) + compression_suffix(compression)


def compression_suffix(compression: str | None) -> str:
    """The suffix Spark's JSON writer gives files compressed with ``compression``."""
    return {"gzip": ".gz", "bzip2": ".bz2", "deflate": ".deflate"}.get(compression or "", "")


def write_jsonl(df: "DataFrame", out: str, layout: str = "partitioned", file_name_column: str = "file_name",
                compression: str | None = None) -> None:
    """Write ``df`` as JSON lines under ``out``.

    ``partitioned``: ``out/file_name=<name>/part-*.json`` (``spark.read.json(out)`` restores ``file_name``).
    ``mirror``: ``out/<input's relative name>`` , one file per input file, as NeMo Curator's write_to_filename.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    if file_name_column not in df.columns:
        raise ValueError(f"cannot write by {file_name_column!r}: not a column of the DataFrame")
    lines = RAW_LINE_COLUMN in df.columns
    if lines:
        df = spliced_lines(df, file_name_column)
    if layout == "partitioned":
        writer = _writer(df, compression).partitionBy(file_name_column)
        if lines:
            writer.text(out)
            name_text_parts_json(df.sparkSession, out)
        else:
            writer.json(out)
    else:
        write_mirror(df, out, file_name_column, compression, text=lines)


def _writer(df: "DataFrame", compression: str | None):
    writer = df.write.mode("overwrite").option("partitionOverwriteMode", "dynamic")
    writer = writer.option("compression", compression or "none").option("ignoreNullFields", "false")
    return writer


def spliced_lines(df: "DataFrame", file_name_column: str) -> "DataFrame":
    """``(file_name_column, value)``: each row's line (``RAW_LINE_COLUMN``: one JSON object, trailing whitespace
    already gone) with every other column (the predictions) appended before its closing ``}``, as
    ``,"name":value`` in Spark's JSON (nulls written, as the plain writer does). The columns the source parsed
    from the line (the metadata ``fields_in_line``: the text field) are in it already and are not repeated; an
    empty object gets no leading comma."""
    from pyspark.sql import functions as F

    in_line = set(df.schema[RAW_LINE_COLUMN].metadata.get("fields_in_line", []))
    added = [c for c in df.columns if c not in (RAW_LINE_COLUMN, file_name_column) and c not in in_line]
    line = F.col(RAW_LINE_COLUMN)
    if not added:
        return df.select(F.col(file_name_column), line.alias("value"))
    fields = F.to_json(F.struct(*[F.col(c) for c in added]), {"ignoreNullFields": "false"})
    inner = F.expr("substring(_fields, 2, length(_fields) - 2)")  # {"a":1,"b":2} -> "a":1,"b":2
    head = F.expr(f"substring({RAW_LINE_COLUMN}, 1, length({RAW_LINE_COLUMN}) - 1)")
    empty = (F.octet_length(line) < 64) & line.rlike(EMPTY_OBJECT_PATTERN)  # the pattern on short lines only
    comma = F.when(empty, F.lit("")).otherwise(F.lit(","))
    return (df.withColumn("_fields", fields)
            .select(F.col(file_name_column), F.concat(head, comma, inner, F.lit("}")).alias("value")))


def name_text_parts_json(spark, out: str) -> None:
    """Spark's text writer names its files ``part-*.txt``; the partitioned layout's files are ``part-*.json``
    whichever writer wrote them (readers and globs such as ``file_name=*/*.json`` rely on it). Renames the text
    writer's part files under every partition directory of ``out``."""
    from sparkcurate.io.fs import HadoopFS

    fs = HadoopFS(spark, out)
    for dirname, is_dir in fs.list():
        if not is_dir or "=" not in dirname:
            continue
        for name, sub in fs.list(dirname):
            if not sub and name.startswith("part-") and ".txt" in name:
                head, _, tail = name.rpartition(".txt")
                fs.rename(f"{dirname}/{name}", f"{dirname}/{head}.json{tail}")


def write_mirror(df: "DataFrame", out: str, file_name_column: str = "file_name",
                 compression: str | None = None, text: bool = False) -> list[str]:
    """One output file per input file, under the input's (sanitised) relative name. Returns the names written.
    ``text``: ``df`` holds finished lines in ``value`` (``spliced_lines``), written as they are."""
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from sparkcurate.io.fs import HadoopFS

    spark = SparkSession.getActiveSession() or df.sparkSession
    fs = HadoopFS(spark, out)
    staging = f"_staging/mirror-{uuid.uuid4().hex[:12]}"
    # Every row of one input lands in one task, so each partition directory holds exactly one part file.
    writer = (df.repartition(F.col(file_name_column)).write.mode("overwrite")
              .option("compression", compression or "none").option("ignoreNullFields", "false")
              .option("maxRecordsPerFile", 0).partitionBy(file_name_column))
    (writer.text if text else writer.json)(f"{out.rstrip('/')}/{staging}")
    written: list[str] = []
    ext = compression_suffix(compression)
    try:
        for dirname, is_dir in fs.list(staging):
            if not is_dir or "=" not in dirname:
                continue
            name = unquote(dirname.split("=", 1)[1])
            parts = [p for p, d in fs.list(f"{staging}/{dirname}") if not d and p.startswith("part-")]
            if len(parts) != 1:
                raise RuntimeError(f"expected one part file for {name!r}, found {len(parts)}")
            target = safe_relative_path(name) + ext
            fs.delete(target)
            fs.rename(f"{staging}/{dirname}/{parts[0]}", target)
            written.append(target)
    finally:
        fs.delete(staging)
        if not fs.list("_staging"):
            fs.delete("_staging")
    return sorted(written)

