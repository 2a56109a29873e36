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
from typing import TYPE_CHECKING, ClassVar

from sparkcurate.io.names import safe_relative_path
from sparkcurate.io.sinks.base import LAYOUTS, Sink
from sparkcurate.io.sinks.mirror import write_mirror_files
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
        return jsonl_mirror_name(file_name, compression)


def jsonl_mirror_name(file_name: str, compression: str | None) -> str:
    """``OUT``-relative name of input ``file_name``'s JSONL file: its sanitised name, with the codec's suffix."""
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
        writer = _options(df.write.mode("overwrite").option("partitionOverwriteMode", "dynamic"), compression)
        writer = writer.partitionBy(file_name_column)
        if lines:
            writer.text(out)
            name_text_parts_json(df.sparkSession, out)
        else:
            writer.json(out)
    else:
        # mirror.py's one writer for every format: its checks (one part file per input, no two inputs on one
        # output name) hold for finished lines (text) and records (JSON) alike
        write_mirror_files(df, out, file_name_column, lambda writer, path: _save(writer, path, compression, lines),
                           lambda file_name: jsonl_mirror_name(file_name, compression))


def _save(writer, path: str, compression: str | None, lines: bool) -> None:
    """Write finished lines (``spliced_lines``: text) or records (JSON) to ``path``."""
    writer = _options(writer, compression)
    (writer.text if lines else writer.json)(path)


def _options(writer, compression: str | None):
    """The JSON writers' options: the codec (none unless asked) and nulls written, as the plain writer does."""
    return writer.option("compression", compression or "none").option("ignoreNullFields", "false")


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
    # The line less its last byte, cut as bytes: a string's length and substring count characters, a scan of
    # the whole line each (measured: most of the write's time on 1.6 KB lines). The last byte is the closing
    # "}", which UTF-8 never uses inside a multi-byte character, so what is left is the line's own UTF-8.
    head = F.expr(f"substring(cast({RAW_LINE_COLUMN} as binary), 1, octet_length({RAW_LINE_COLUMN}) - 1)")
    empty = (F.octet_length(line) < 64) & line.rlike(EMPTY_OBJECT_PATTERN)  # the pattern on short lines only
    comma = F.when(empty, F.lit("")).otherwise(F.lit(","))
    tail = F.concat(comma, inner, F.lit("}")).cast("binary")
    return (df.withColumn("_fields", fields)
            .select(F.col(file_name_column), F.concat(head, tail).cast("string").alias("value")))


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
