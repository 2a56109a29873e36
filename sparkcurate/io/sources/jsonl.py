"""JSONL in: the first input format (``--input-format jsonl``), plain or compressed (Spark's codecs: .gz, .bz2,
.zst, ...), with ``file_name`` and a reason for every record that cannot be classified.

- Listing and ``file_name``: ``sparkcurate.io.listing``; read failures: ``sparkcurate.io.failures``.
- The text field gets an explicit string type (the RAPIDS GPU JSON reader needs a schema); every other field
  keeps the type Spark infers (or the schema you pass).
- Malformed lines are kept as ``CORRUPT_COLUMN`` and, like missing or blank texts, get a ``reject reason``
  instead of ever reaching a tokenizer.
- Line mode (``keep_lines``: ``--jsonl-mode exact`` and attribute files): each line is read as text and only the
  text field (and any ``key_fields``) is parsed; the line itself is kept for the JSONL sink, which writes it back
  byte for byte with the predictions appended (``read_lines``; docs/formats.md has the rules).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar

from sparkcurate.io.listing import InputListing, point_reader, readable_paths, with_file_names
from sparkcurate.io.sources.base import (CORRUPT_COLUMN, INTERNAL_PREFIX, POSITION_COLUMN, RAW_LINE_COLUMN,
                                         REASON_COLUMN, Source, check_input_fields, check_text_field,
                                         parse_schema, text_reject_reason, with_record_positions)

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

# What a directory input reads (a file named explicitly is read whatever its name).
INPUT_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz", ".jsonl.bz2", ".json.bz2",
                  ".jsonl.zst", ".json.zst", ".jsonl.deflate")


class JsonlSource(Source):
    """JSON lines: one object per line; malformed lines are kept and rejected with a reason."""

    name: ClassVar[str] = "jsonl"
    suffixes: ClassVar[tuple[str, ...]] = INPUT_SUFFIXES
    label: ClassVar[str] = "JSONL"

    def read(self, spark: "SparkSession", listing: InputListing, text_field: str, file_name_column: str,
             schema=None, sampling_ratio: float = 1.0) -> "DataFrame":
        if self.keep_lines:
            if schema is not None:
                log.info("--schema is not used when JSONL is read line by line: only the text field is parsed")
            return read_lines(spark, listing, text_field, file_name_column, self.key_fields, self.record_positions)
        df, _ = read_jsonl_checked(spark, listing.source, text_field, schema, file_name_column, sampling_ratio,
                                   listing)
        return df


def _infer_schema(spark: "SparkSession", paths: list[str], sampling_ratio: float):
    """The input's own fields, as Spark infers them. Inferred case-sensitively: with the default
    (case-insensitive) analysis, keys that differ only in case ("text" and "TEXT") make Spark fail the whole read
    with COLUMN_ALREADY_EXISTS; ``_fold_case_duplicates`` then decides which spelling is read. The column Spark
    adds for malformed lines gets a name no record can have (a new uuid) and is dropped, so every field left is
    one the input has (a field called ``_corrupt_record`` included)."""
    import uuid

    from pyspark.sql import types as T

    corrupt = f"{INTERNAL_PREFIX}infer_{uuid.uuid4().hex}"
    reader = spark.read.option("samplingRatio", sampling_ratio).option("mode", "PERMISSIVE")
    reader = reader.option("columnNameOfCorruptRecord", corrupt)
    key = "spark.sql.caseSensitive"
    before = spark.conf.get(key, "false")
    spark.conf.set(key, "true")
    try:
        try:
            schema = reader.json(paths).schema
        except Exception as exc:  # a record with the same key twice: Spark's inference cannot express it
            if "COLUMN_ALREADY_EXISTS" not in str(exc):
                raise
            log.warning("some records repeat a key; inferring the schema with the last value of each key (as the "
                        "reader then reads them)")
            schema = _infer_schema_deduplicated(spark, paths, sampling_ratio, corrupt)
    finally:
        spark.conf.set(key, before)
    return T.StructType([f for f in schema.fields if f.name != corrupt])


def _last_value_wins(line: str) -> str:
    """A JSON line re-encoded with each repeated key kept once (its last value, as Spark's reader reads it); lines
    that are not JSON are returned as they are (the reader marks them corrupt)."""
    import json

    def hook(pairs):
        return dict(pairs)

    try:
        return json.dumps(json.loads(line, object_pairs_hook=hook))
    except ValueError:
        return line


def _infer_schema_deduplicated(spark: "SparkSession", paths: list[str], sampling_ratio: float, corrupt: str):
    lines = spark.read.text(paths).rdd.map(lambda r: _last_value_wins(r[0]) if r[0] is not None else r[0])
    if sampling_ratio < 1.0:
        lines = lines.sample(False, sampling_ratio, seed=1)
    return (spark.read.option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", corrupt)
            .json(lines).schema)


def _fold_case_duplicates(spark: "SparkSession", fields: list, text_field: str) -> list:
    """Fields to read when keys differ only in case. Case-sensitive sessions read them all. Otherwise the exact
    text field wins (a record holding only "TEXT" has no text and is rejected as ``text_missing``) and, for other
    keys, the first spelling is read and the others are dropped, with a warning naming them."""
    if str(spark.conf.get("spark.sql.caseSensitive", "false")).lower() == "true":
        return fields
    kept: dict[str, object] = {}
    dropped: list[str] = []
    for f in fields:
        low = f.name.lower()
        if low == text_field.lower() and f.name != text_field:
            dropped.append(f.name)
        elif low in kept:
            dropped.append(f.name)
        else:
            kept[low] = f
    if dropped:
        log.warning("keys that differ only in case from another key are not read: %s (the text field is %r; set "
                    "spark.sql.caseSensitive=true to read every spelling)", sorted(dropped), text_field)
    return list(kept.values())


def read_schema(spark: "SparkSession", paths: list[str], text_field: str, schema=None, sampling_ratio: float = 1.0,
                file_name_column: str = "file_name"):
    """The explicit read schema: given or inferred, with the text field forced to string and a corrupt-record
    column added, so malformed lines are kept and routed to rejects instead of becoming all-NULL rows. An input
    field that a column of the job would replace is refused first (``check_input_fields``)."""
    from pyspark.sql import types as T

    base = parse_schema(schema) if schema is not None else _infer_schema(spark, paths, sampling_ratio)
    check_input_fields(base.names, [file_name_column])
    fields = [f for f in base.fields if f.name != text_field]
    fields = _fold_case_duplicates(spark, fields, text_field)
    fields.append(T.StructField(text_field, T.StringType(), True))
    fields.append(T.StructField(CORRUPT_COLUMN, T.StringType(), True))
    return T.StructType(fields)


def read_jsonl_checked(spark: "SparkSession", path: str, text_field: str = "text", schema=None,
                       file_name_column: str = "file_name", sampling_ratio: float = 1.0,
                       listing: InputListing | None = None) -> tuple["DataFrame", InputListing]:
    """All records with ``file_name`` and a ``REASON_COLUMN`` column (null when the record is fine), plus the
    file listing. Internal columns: ``CORRUPT_COLUMN`` (the raw line when malformed)."""
    check_text_field(text_field, file_name_column)
    listing = listing or JsonlSource().list_files(spark, path)
    paths = readable_paths(listing)
    if not paths:
        return _empty_frame(spark, text_field, file_name_column, schema), listing
    read_schema_ = read_schema(spark, paths, text_field, schema, sampling_ratio, file_name_column)
    reader = spark.read.schema(read_schema_).option("mode", "PERMISSIVE").option(
        "columnNameOfCorruptRecord", CORRUPT_COLUMN)
    reader, source = point_reader(reader, listing, INPUT_SUFFIXES)
    df = with_file_names(spark, reader.json(source), listing, file_name_column)
    return df.withColumn(REASON_COLUMN, reject_reason(text_field)), listing


def reject_reason(text_field: str) -> "Column":
    """Why a JSON line cannot be classified, or null: the line's own faults first, then its text's
    (``text_reject_reason``: ``text_missing``, ``text_empty``).

    - ``invalid_utf8``: the line holds bytes that are not valid UTF-8;
    - ``nul_bytes``: the line holds raw NUL bytes: a UTF-16/UTF-32 file or binary data (re-encode it as UTF-8);
    - ``malformed_json``: the line is not a JSON object (or not valid JSON).
    """
    from pyspark.sql import functions as F

    corrupt = F.col(CORRUPT_COLUMN)
    line_reason = (F.when(corrupt.isNotNull() & invalid_utf8(corrupt), F.lit("invalid_utf8"))
                   .when(corrupt.isNotNull() & corrupt.contains("\u0000"), F.lit("nul_bytes"))
                   .when(corrupt.isNotNull(), F.lit("malformed_json")))
    return F.coalesce(line_reason, text_reject_reason(text_field))


def invalid_utf8(column: "Column") -> "Column":
    """True where the string column holds bytes that are not valid UTF-8.

    Spark 4 has ``is_valid_utf8``. Spark 3.5 (Databricks 14/15, EMR 7, Dataproc 2.2) does not: there the raw
    bytes (``cast(... as binary)``) are compared with ``encode(..., 'UTF-8')``, which goes through a Java String
    and so turns every invalid byte into U+FFFD; the two differ exactly when the bytes are not valid UTF-8 (checked
    on 3.5.9 and 4.3.0; Spark 4 uses its own function).
    """
    from pyspark.sql import functions as F

    if hasattr(F, "is_valid_utf8"):
        return ~F.is_valid_utf8(column)
    return F.encode(column, "UTF-8") != column.cast("binary")


def _empty_frame(spark: "SparkSession", text_field: str, file_name_column: str, schema=None) -> "DataFrame":
    from pyspark.sql import types as T

    fields = [T.StructField(text_field, T.StringType()), T.StructField(CORRUPT_COLUMN, T.StringType()),
              T.StructField(file_name_column, T.StringType()), T.StructField(REASON_COLUMN, T.StringType())]
    return spark.createDataFrame([], T.StructType(fields))


def read_jsonl(spark: "SparkSession", path: str, text_field: str = "text", schema=None,
               file_name_column: str = "file_name", sampling_ratio: float = 1.0) -> "DataFrame":
    """JSONL as a DataFrame with ``file_name``: the records that can be classified.

    Records that cannot (malformed lines, missing or blank text) are left out here; ``sparkcurate classify`` and
    ``sparkcurate.pipeline.run`` keep them in ``OUT/_rejects`` with their reasons and count them in the summary.
    Use ``read_jsonl_checked`` to get them in a notebook.
    """
    from pyspark.sql import functions as F

    df, _ = read_jsonl_checked(spark, path, text_field, schema, file_name_column, sampling_ratio)
    return df.filter(F.col(REASON_COLUMN).isNull()).drop(REASON_COLUMN, CORRUPT_COLUMN)


# An empty object (the sink appends to it without a leading comma).
EMPTY_OBJECT_PATTERN = r"^[ \t]*\{[ \t]*\}$"


def read_lines(spark: "SparkSession", listing: InputListing, text_field: str, file_name_column: str,
               key_fields: tuple[str, ...] = (), positions: bool = False) -> "DataFrame":
    """Every non-blank line of the listed files as one record: ``RAW_LINE_COLUMN`` (the line without a leading
    BOM and trailing whitespace), the text field (and ``key_fields``) parsed from it as strings,
    ``file_name_column``, ``_corrupt_record`` (the raw line for *every* reject, so OUT/_rejects keeps the line as
    it was) and ``_reject_reason``; with ``positions``, ``POSITION_COLUMN`` for attribute files.

    Why text: no schema inference pass and no parse of the other fields (Jackson still reads the whole line once,
    to check it), and the line can be written back exactly. A line is a record when it holds exactly one JSON
    object (``line_parse``); one line is one record (a top-level array is ``malformed_json`` here).
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    paths = readable_paths(listing)
    fields = [text_field] + [k for k in dict.fromkeys(key_fields) if k != text_field]
    check_text_field(text_field, file_name_column)
    check_input_fields(fields, [file_name_column], "choose another --id-field or --file-name-column")
    if not paths:
        schema = T.StructType([T.StructField(RAW_LINE_COLUMN, T.StringType())]
                              + [T.StructField(f, T.StringType()) for f in fields]
                              + [T.StructField(c, T.StringType()) for c in (CORRUPT_COLUMN, file_name_column,
                                                                             REASON_COLUMN)])
        return spark.createDataFrame([], schema)
    reader, source = point_reader(spark.read, listing, INPUT_SUFFIXES)
    df = reader.text(source)
    if positions:
        df = with_record_positions(df)
    # The line as written, less a leading BOM (an encoding mark, not content) and trailing JSON whitespace. The
    # common line (no BOM, ending in "}") is taken as it is: byte tests only, no copy, no regular expression.
    value = F.col("value")
    line = F.when(value.startswith("\ufeff"), F.expr("substring(value, 2)")).otherwise(value)
    df = df.withColumn(RAW_LINE_COLUMN, line)
    trimmed = F.expr(f"trim(TRAILING ' \\t\\r\\n' FROM {RAW_LINE_COLUMN})")
    df = df.withColumn(RAW_LINE_COLUMN, F.when(F.col(RAW_LINE_COLUMN).endswith("}"), F.col(RAW_LINE_COLUMN))
                       .otherwise(trimmed))
    df = df.filter(F.col(RAW_LINE_COLUMN) != "")  # blank lines are not records (as Spark's reader)
    parsed, one_object = line_parse(RAW_LINE_COLUMN, fields)
    df = df.withColumn("_parsed", parsed)
    df = df.select(
        F.col(RAW_LINE_COLUMN).alias(RAW_LINE_COLUMN, metadata={"fields_in_line": fields}),
        *[F.col("_parsed").getItem(0).getField(f).alias(f) for f in fields],
        *([F.col(POSITION_COLUMN)] if positions else []),
        F.col("value").alias(CORRUPT_COLUMN), one_object(F.col("_parsed")).alias("_one_object"))
    reason = line_reject_reason(F.col(CORRUPT_COLUMN), F.col("_one_object"), text_field)
    df = df.withColumn(REASON_COLUMN, reason).drop("_one_object")
    df = df.withColumn(CORRUPT_COLUMN, F.when(F.col(REASON_COLUMN).isNotNull(), F.col(CORRUPT_COLUMN)))
    df = with_file_names(spark, df, listing, file_name_column)
    return df.select(*[c for c in df.columns if c != REASON_COLUMN], REASON_COLUMN)


def line_parse(line_column: str, fields: list[str]):
    """The line's first JSON object parsed for ``fields`` (strings), and a test on that parse saying the line is
    exactly one JSON object.

    Spark's JSON parser stops after the first value, so ``{"text": "x"} junk`` or ``{"a": 1}{"text": "x"}`` would
    parse, and the sink appends the predictions before the line's last ``}``, which must therefore close the
    first object. So the line is parsed as ``[<line>,{"<marker>":<number>}]``: an array of exactly two elements,
    the line's object and the marker object with the number, comes back only when the line is one object and
    nothing else (anything after it breaks the array or adds elements). The number is drawn per run, so a line
    that writes the marker itself cannot pass by chance. Single-quoted JSON is refused (with the predictions
    appended it would still not be JSON). One copy of the line, one parser pass, no regular expression.
    """
    import secrets

    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    marker, token = "\\u0000sparkcurate_end", secrets.randbelow(2**31 - 1) + 1  # the key as JSON text
    element = T.StructType([T.StructField(f, T.StringType()) for f in fields]
                           + [T.StructField("\x00sparkcurate_end", T.LongType())])
    wrapped = F.concat(F.lit("["), F.col(line_column), F.lit(f',{{"{marker}":{token}}}]'))
    parsed = F.from_json(wrapped, T.ArrayType(element), {"mode": "PERMISSIVE", "allowSingleQuotes": "false"})

    def one_object(p: "Column") -> "Column":
        return F.coalesce((F.size(p) == 2) & p.getItem(0).isNotNull()
                          & (p.getItem(1).getField("\x00sparkcurate_end") == F.lit(token)), F.lit(False))

    return parsed, one_object


def line_reject_reason(raw: "Column", one_object: "Column", text_field: str) -> "Column":
    """Why a line cannot be classified, or null: ``invalid_utf8``, ``nul_bytes``, ``malformed_json`` (not exactly
    one JSON object), then the text's own faults (``text_missing``, ``text_empty``: ``text_reject_reason``)."""
    from pyspark.sql import functions as F

    line_reason = (F.when(invalid_utf8(raw), F.lit("invalid_utf8"))
                   .when(raw.contains("\u0000"), F.lit("nul_bytes"))
                   .when(~one_object, F.lit("malformed_json")))
    return F.coalesce(line_reason, text_reject_reason(text_field))
