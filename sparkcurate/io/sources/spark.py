"""Inputs that Spark reads with the format's own schema: file formats listed by suffix (Parquet, ORC, Avro:
``SparkFileSource``) and any other Spark data source by name (Delta, Iceberg, ``spark:<format>``:
``SparkFormatSource``).

What every one of them guarantees, as JSONL does:

- ``file_name``: the record's file relative to the input root (for a loaded source, relative to the path it was
  loaded from; a record that comes from no file, such as a view's, gets the input itself as its ``file_name``);
- the schema is the format's own (Parquet and ORC footers merged across files, so a column that only some files
  have is read, null elsewhere; ``--schema`` replaces it). The text field must be a string column: another type
  (or a missing column) is an ``InputError`` naming the column and its type, before any record is read;
- a null text is ``text_missing``, an empty or blank one ``text_empty`` (rejected with the reason, counted);
- a file Spark cannot read (corrupt or truncated: no valid footer) is an ``InputError`` naming it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar

from sparkcurate.io.failures import explain_failure
from sparkcurate.io.listing import (RECORD_PATH_SQL, InputError, InputFile, InputListing, canonical_path,
                                    glob_escape, point_reader, readable_paths, relative_name, with_file_names)
from sparkcurate.io.names import partition_safe_name
from sparkcurate.io.sources.base import (CORRUPT_COLUMN, REASON_COLUMN, Source, check_input_fields,
                                         text_reject_reason, with_record_positions)

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, DataFrameReader, SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

# The prefix that names any Spark data source on the command line: --input-format spark:<format>.
SPARK_PREFIX = "spark:"
# Spark's error classes for a data source this cluster does not have (a missing package or jar).
_NOT_FOUND = ("DATA_SOURCE_NOT_FOUND", "AVRO_DATA_SOURCE_NOT_ENABLED", "Failed to find data source")
# How a corrupt columnar file reads in Spark's errors (no footer, bad magic number, truncated stripes).
_CORRUPT = ("CANNOT_READ_FILE_FOOTER", "is not a Parquet file", "Malformed ORC file", "Not an Avro data file",
            "Invalid ORC", "FileFormatException")


class SparkFileSource(Source):
    """A file format Spark reads by name (``format``), listed by suffix like JSONL: Parquet, ORC, Avro.

    A directory is read recursively; where its folders are Hive-style partitions (``year=2024/``), Spark's
    partition discovery adds those columns, as it does when it reads the directory itself."""

    format: ClassVar[str] = ""
    merge_schema: ClassVar[bool] = False  # read every file's footer: the union of their columns

    def read(self, spark: "SparkSession", listing: InputListing, text_field: str, file_name_column: str,
             schema=None, sampling_ratio: float = 1.0) -> "DataFrame":
        if not readable_paths(listing):
            return empty_frame(spark, text_field, file_name_column)
        reader = spark.read.format(self.format)
        if self.merge_schema:
            reader = reader.option("mergeSchema", "true")
        if schema is not None:
            reader = reader.schema(schema)
        df = self._load(reader, listing)  # Spark's failures here are explained by the job (explain_failure)
        check_text_column(df.schema, text_field, self.label, spark)
        check_free_column(df, file_name_column)
        if self.record_positions:  # attribute files: each row's place in its file
            df = with_record_positions(df)
        df = with_file_names(spark, df, listing, file_name_column)
        return typed_records(df, text_field, file_name_column)

    def _load(self, reader: "DataFrameReader", listing: InputListing) -> "DataFrame":
        """Load the listed files: a directory with partition folders through Spark's partition discovery (the
        partition columns are read), anything else file by file (``point_reader``)."""
        if _partition_folders(listing) and _is_directory_source(listing):
            from pyspark.sql.utils import AnalysisException

            glob = "*.{" + ",".join(s.lstrip(".") for s in self.suffixes) + "}"
            try:
                return reader.option("pathGlobFilter", glob).load(glob_escape(listing.source))
            except AnalysisException as exc:
                if "CONFLICTING_DIRECTORY_STRUCTURES" not in str(exc):
                    raise
                log.warning("%s mixes partition folders (key=value) with other folders: its partition columns "
                            "are not read (each record's file_name still holds its folders)", listing.source)
        reader, paths = point_reader(reader, listing, self.suffixes)
        return reader.load(paths)

    def explain_failure(self, exc: Exception, spark: "SparkSession | None" = None,
                        listing: InputListing | None = None) -> Exception | None:
        return explain_typed_failure(exc, self.format, spark, listing)

    def resumable(self, listing: InputListing) -> bool:
        """Not where partition folders give columns (Spark discovers them only when it reads the folder)."""
        return bool(listing.files) and not _partition_folders(listing)


class SparkFormatSource(Source):
    """Any Spark data source by name (``format``), loaded as Spark loads it: ``spark.read.format(F).load(PATH)``.

    The files are those Spark reads for the current version of the data (``DataFrame.inputFiles()``: for Delta
    the files of the latest snapshot, not every file in the folder), and ``file_name`` is relative to PATH."""

    format: ClassVar[str] = ""

    def list_files(self, spark: "SparkSession", path: str) -> InputListing:
        if not path:
            raise InputError("no input path given")
        df = self._loaded(spark, path, None)
        return loaded_listing(spark, df, path, self._root(spark, path))

    def read(self, spark: "SparkSession", listing: InputListing, text_field: str, file_name_column: str,
             schema=None, sampling_ratio: float = 1.0) -> "DataFrame":
        df = self._loaded(spark, listing.source, schema)
        check_text_column(df.schema, text_field, self.label, spark)
        df = with_relative_file_names(df, listing, file_name_column)
        return typed_records(df, text_field, file_name_column)

    def _loaded(self, spark: "SparkSession", source: str, schema) -> "DataFrame":
        """The input as a DataFrame (Spark's failures, such as a format this cluster lacks, are explained by the
        job through ``explain_failure``)."""
        reader = spark.read.format(self.format)
        if schema is not None:
            reader = reader.schema(schema)
        return reader.load(source)

    def _root(self, spark: "SparkSession", source: str) -> str:
        """The folder ``file_name`` is relative to."""
        return source.rstrip("/")

    def splittable(self, f: InputFile) -> bool:
        return True  # columnar formats split at row groups / stripes; Spark decides

    def resumable(self, listing: InputListing) -> bool:
        return False  # the data source decides which rows its files hold now (a Delta snapshot's deletions)

    def explain_failure(self, exc: Exception, spark: "SparkSession | None" = None,
                        listing: InputListing | None = None) -> Exception | None:
        return explain_typed_failure(exc, self.format, spark, listing)


def spark_format_source(fmt: str, label: str | None = None) -> type[SparkFormatSource]:
    """The ``SparkFormatSource`` class for Spark's data source ``fmt`` (``delta``, ``iceberg``, ``hudi``, ...)."""
    if not fmt or not fmt.replace("_", "").replace(".", "").replace("-", "").isalnum():
        raise ValueError(f"--input-format {SPARK_PREFIX}FORMAT needs a Spark data source name, got {fmt!r}")
    attrs = {"name": fmt, "format": fmt, "label": label or fmt, "__doc__": f"Spark's {fmt!r} data source."}
    return type(f"SparkFormatSource_{fmt}", (SparkFormatSource,), attrs)


DeltaSource = spark_format_source("delta", "Delta")
IcebergSource = spark_format_source("iceberg", "Iceberg")


# ---------------------------------------------------------------------------------------------------------------
# What every typed source shares
# ---------------------------------------------------------------------------------------------------------------


def check_text_column(schema: "StructType", text_field: str, label: str, spark: "SparkSession | None" = None
                      ) -> None:
    """An ``InputError`` unless ``text_field`` is a string column of ``schema``: a typed format says what the
    column holds, so a missing column or another type is known before any record is read."""
    from pyspark.sql import types as T

    field = _find_field(schema, text_field, spark)
    if field is None:
        raise InputError(f"the {label} input has no column {text_field!r} (its columns: "
                         f"{', '.join(schema.names) or 'none'}); name the text column with --text-field")
    if isinstance(field.dataType, (T.StringType, T.VarcharType, T.CharType)):
        return
    hint = ""
    if isinstance(field.dataType, T.BinaryType):
        hint = (" (Parquet written without string annotations stores text as binary: "
                "--conf spark.sql.parquet.binaryAsString=true reads it as UTF-8 text)")
    raise InputError(f"the text column {field.name!r} of the {label} input is {field.dataType.simpleString()}, "
                     f"not a string{hint}; name a string column with --text-field")


def _find_field(schema: "StructType", name: str, spark: "SparkSession | None"):
    """The field Spark resolves ``name`` to: exact, else (where the session is case-insensitive) any case."""
    exact = [f for f in schema.fields if f.name == name]
    if exact:
        return exact[0]
    sensitive = spark is not None and str(spark.conf.get("spark.sql.caseSensitive", "false")).lower() == "true"
    folded = [f for f in schema.fields if f.name.lower() == name.lower()]
    return folded[0] if folded and not sensitive else None


def typed_records(df: "DataFrame", text_field: str, file_name_column: str) -> "DataFrame":
    """``df`` with the columns every source provides: ``CORRUPT_COLUMN`` (always null: a typed record always
    parses) and ``REASON_COLUMN`` (``text_missing``, ``text_empty``). Both are in the job's namespace, which
    ``check_free_column`` refused in the input's columns."""
    from pyspark.sql import functions as F

    df = df.withColumn(CORRUPT_COLUMN, F.lit(None).cast("string"))
    return df.withColumn(REASON_COLUMN, text_reject_reason(text_field))


def empty_frame(spark: "SparkSession", text_field: str, file_name_column: str) -> "DataFrame":
    """No records (an input of only empty files), with the columns the job expects."""
    from pyspark.sql import types as T

    fields = [T.StructField(c, T.StringType()) for c in (text_field, file_name_column, CORRUPT_COLUMN, REASON_COLUMN)]
    return spark.createDataFrame([], T.StructType(fields))


def explain_typed_failure(exc: Exception, fmt: str, spark: "SparkSession | None",
                          listing: InputListing | None) -> Exception | None:
    """An ``InputError`` for a format this cluster lacks, or for a file Spark could not read (naming it, with a
    reason fit for a columnar file); None for other failures."""
    if isinstance(exc, InputError):  # already says what is wrong
        return None
    text = str(exc)
    if any(key in text for key in _NOT_FOUND):
        return InputError(f"this Spark has no {fmt!r} data source: add its package (e.g. spark-submit --packages "
                          f"..., or --conf spark.jars.packages=...) or choose another --input-format")
    if "PATH_NOT_FOUND" in text or "Path does not exist" in text:
        return explain_failure(exc, spark, listing)
    if "DELTA_MISSING_DELTA_TABLE" in text or "is not a Delta table" in text:
        return InputError(f"the input is not a {fmt} table ({text.splitlines()[0][:300]})")
    explained = explain_failure(exc, spark, listing)
    if explained is not None and any(key in text for key in _CORRUPT):
        return InputError(str(explained).replace("Spark could not read it",
                                                 f"it is not a valid {fmt} file (corrupt or truncated)", 1))
    return explained


def _is_directory_source(listing: InputListing) -> bool:
    src = listing.source
    return bool(src) and not listing.links and not any(ch in src for ch in "*?[{") and \
        canonical_path(src).rstrip("/") == canonical_path(listing.root).rstrip("/")


def _partition_folders(listing: InputListing) -> bool:
    """Whether some listed file sits in a Hive-style partition folder (``key=value``) under the input root."""
    return any("=" in part for f in listing.files for part in f.file_name.split("/")[:-1])


# ---------------------------------------------------------------------------------------------------------------
# Loaded sources: their files and file names come from what Spark read
# ---------------------------------------------------------------------------------------------------------------


def loaded_listing(spark: "SparkSession", df: "DataFrame", source: str, root: str) -> InputListing:
    """The files Spark reads for ``df`` (``inputFiles()``; none for a source that is not files) with their sizes
    and ``file_name`` relative to ``root``."""
    try:
        paths = list(df.inputFiles())
    except Exception as exc:  # a source that cannot say: its records still get file names (read time)
        log.info("%s cannot list its files (%s): file names come from the records", source, exc)
        paths = []
    paths = [_decoded(p) for p in paths]
    sizes = _file_sizes(spark, root, paths)
    files = sorted((InputFile(p, partition_safe_name(relative_name(p, root)), sizes.get(canonical_path(p), 0))
                    for p in paths), key=lambda f: f.file_name)
    return InputListing(root=root, files=files, source=source)


def _file_sizes(spark: "SparkSession", root: str, paths: list[str]) -> dict[str, int]:
    """Sizes of ``paths`` (canonical path -> bytes): one recursive listing of ``root``, then one look-up for each
    file outside it."""
    if not paths:
        return {}
    try:
        jvm = spark.sparkContext._jvm
        conf = spark.sparkContext._jsc.hadoopConfiguration()
    except Exception:  # no JVM handle (Spark Connect): sizes unknown, the split plan uses Spark's own
        return {}
    sizes: dict[str, int] = {}
    wanted = {canonical_path(p) for p in paths}
    if root:
        hroot = jvm.org.apache.hadoop.fs.Path(root)
        fs = hroot.getFileSystem(conf)
        if fs.exists(hroot):
            it = fs.listFiles(hroot, True)
            while it.hasNext():
                st = it.next()
                key = canonical_path(str(st.getPath().toString()))
                if key in wanted:
                    sizes[key] = int(st.getLen())
    for p in paths:
        key = canonical_path(p)
        if key not in sizes:
            hpath = jvm.org.apache.hadoop.fs.Path(p)
            sizes[key] = int(hpath.getFileSystem(conf).getFileStatus(hpath).getLen())
    return sizes


def with_relative_file_names(df: "DataFrame", listing: InputListing, file_name_column: str) -> "DataFrame":
    """``df`` with ``file_name_column``: each record's file relative to the listing's root, or the input itself
    for a record that no file holds (a view, an in-memory or JDBC source). Computed from the path each record
    reports, so it holds for files Spark did not list up front (data sources that cannot say); a listed file whose
    name the listing shortened or took outside the root keeps the listing's name."""
    from pyspark.sql import functions as F

    check_free_column(df, file_name_column)
    path = F.expr(RECORD_PATH_SQL)
    root = canonical_path(listing.root).rstrip("/")
    name = F.when(path == "", F.lit(listing.source))
    if root:
        name = name.when(path.startswith(root + "/"), F.expr(f"substring({RECORD_PATH_SQL}, {len(root) + 2})"))
    name = name.otherwise(F.regexp_replace(path, "^/+", ""))
    special = {key: f.file_name for f in listing.files
               if f.file_name != _sql_rule(key := canonical_path(_decoded(f.path)), root)}
    if special:
        mapping = F.create_map(*[F.lit(x) for kv in special.items() for x in kv])
        name = F.coalesce(mapping[path], name)
    return df.withColumn(file_name_column, name)


def _sql_rule(path: str, root: str) -> str:
    """``with_relative_file_names``'s rule in Python: the path under the root, else the whole path."""
    return path[len(root) + 1:] if root and path.startswith(root + "/") else path.lstrip("/")


def _decoded(path: str) -> str:
    """A path as the records report it (decoded): ``inputFiles()`` gives URIs, percent-encoded."""
    from urllib.parse import unquote

    return unquote(path) if "%" in path else path


def check_free_column(df: "DataFrame", file_name_column: str) -> None:
    """The input's columns, before any is added: one named like the file-name column (in any case) or in the
    job's namespace is refused (``check_input_fields``: a usage error, exit 2), never overwritten."""
    check_input_fields(df.columns, [file_name_column])
