"""Reading JSONL into a DataFrame, with ``file_name`` and a reason for every record that cannot be classified.

- Input: a directory (read recursively), a file, or a glob; plain or compressed (Spark's codecs: .gz, .bz2, ...).
- ``file_name`` is the path relative to the input root, so ``a/x.jsonl`` and ``b/x.jsonl`` stay apart. It is
  derived from Spark's own file listing (the ``binaryFile`` source, contents not read), joined on the path Spark
  reports for each record, so it is exact for any character in a name.
- The text field gets an explicit string type (the RAPIDS GPU JSON reader needs a schema); every other field
  keeps the type Spark infers (or the schema you pass).
- Malformed lines are kept as ``_corrupt_record`` and, like missing or blank texts, get a ``reject reason``
  instead of ever reaching a tokenizer.
"""

from __future__ import annotations

import glob as _glob
import logging
import posixpath
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

CORRUPT_COLUMN = "_corrupt_record"
REASON_COLUMN = "_reject_reason"
SOURCE_COLUMN = "_source_path"
INPUT_GLOB = "*.{jsonl,json,ndjson,jsonl.gz,json.gz,ndjson.gz,jsonl.bz2,json.bz2,jsonl.zst,json.zst,jsonl.deflate}"
# Characters that count as blank: whitespace, separators, format (zero-width, BOM) and control characters.
BLANK_PATTERN = r"^[\s\p{Z}\p{Cf}\p{Cc}]*$"

REASONS = {
    "malformed_json": "the line is not a JSON object (or not valid JSON)",
    "invalid_utf8": "the line holds bytes that are not valid UTF-8",
    "text_missing": "the text field is missing or null",
    "text_empty": "the text is empty, or only whitespace, zero-width or control characters",
}


class InputError(ValueError):
    """The input path cannot be read as JSONL: the message says why."""


@dataclass(frozen=True)
class InputFile:
    path: str  # as Spark reports it (a URI, percent-encoded)
    file_name: str  # relative to the input root, decoded
    size: int


@dataclass(frozen=True)
class InputListing:
    root: str
    files: list[InputFile]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _has_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[{")


def input_root(path: str) -> str:
    """The directory that ``file_name`` is relative to: the path itself for a directory, the parent of a file,
    the part before the first wildcard for a glob."""
    if _has_glob(path):
        head = path
        while _has_glob(head):
            head = posixpath.dirname(head.rstrip("/"))
        return head
    parsed = urlparse(path)
    local = parsed.path if parsed.scheme in ("", "file") else None
    if local is not None:
        import os

        return path.rstrip("/") if os.path.isdir(local) else posixpath.dirname(path.rstrip("/"))
    return path.rstrip("/") if path.endswith("/") else posixpath.dirname(path)


def canonical_path(path: str) -> str:
    """A path with its scheme dropped and leading slashes folded: ``file:///a/b``, ``file:/a/b`` and ``/a/b``
    all give ``/a/b``; ``s3a://bucket/k`` gives ``/bucket/k``. Spark's file listing reports paths decoded
    (``file:/a b/x``); the same rule applied to both sides of a comparison makes them match."""
    rest = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*:", "", path) if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", path) else path
    return "/" + rest.lstrip("/") if rest.startswith("/") else rest


# The same rule in Spark SQL, for the path each record reports (``input_file_name()`` is percent-encoded; '+' is
# protected because url_decode would turn it into a space).
RECORD_PATH_SQL = (
    "regexp_replace(url_decode(regexp_replace(input_file_name(), '\\\\+', '%2B')), "
    "'^([A-Za-z][A-Za-z0-9+.-]*:)?/+', '/')"
)


def relative_name(listed_path: str, root: str) -> str:
    """``listed_path`` (as Spark's listing reports it) relative to the input root."""
    path = canonical_path(listed_path)
    root_path = canonical_path(root).rstrip("/")
    if root_path and not root_path.startswith("/"):
        import os

        root_path = os.path.abspath(root_path)
    if root_path and (path == root_path or path.startswith(root_path + "/")):
        rel = path[len(root_path):].lstrip("/")
        return rel or posixpath.basename(path)
    return posixpath.basename(path)


def list_input_files(spark: "SparkSession", path: str) -> InputListing:
    """Every JSONL file under ``path`` as Spark sees it (names starting with '_' or '.' are skipped, as Spark
    does). Uses Spark's own listing, so it works for every file system the cluster can read."""
    if not path:
        raise InputError("no input path given")
    local = urlparse(path).scheme in ("", "file")
    if local and not _has_glob(path):
        import os

        local_path = urlparse(path).path if path.startswith("file:") else path
        if not os.path.exists(local_path):
            raise InputError(f"input {path!r} does not exist")
    if local and _has_glob(path) and not _glob.glob(path, recursive=True):
        raise InputError(f"input glob {path!r} matches nothing")
    reader = spark.read.format("binaryFile")
    if not _has_glob(path):
        reader = reader.option("recursiveFileLookup", "true").option("pathGlobFilter", INPUT_GLOB)
    try:
        rows = reader.load(path).select("path", "length").collect()
    except Exception as exc:
        if "Path does not exist" in str(exc) or "FileNotFound" in str(exc):
            raise InputError(f"input {path!r} does not exist") from exc
        raise
    from sparkcurate.io.write import partition_safe_name

    root = input_root(path)
    files = sorted((InputFile(r["path"], partition_safe_name(relative_name(r["path"], root)), int(r["length"]))
                    for r in rows), key=lambda f: f.file_name)
    names = [f.file_name for f in files]
    if len(set(names)) != len(names):  # only possible for globs spanning several roots
        files = [InputFile(f.path, canonical_path(f.path).lstrip("/"), f.size) for f in files]
    return InputListing(root=root, files=files)


def _infer_schema(spark: "SparkSession", paths: list[str], sampling_ratio: float):
    reader = spark.read.option("samplingRatio", sampling_ratio).option("mode", "PERMISSIVE")
    reader = reader.option("columnNameOfCorruptRecord", CORRUPT_COLUMN)
    return reader.json(paths).schema


def read_schema(spark: "SparkSession", paths: list[str], text_field: str, schema=None, sampling_ratio: float = 1.0):
    """The explicit read schema: given or inferred, with the text field forced to string and a corrupt-record
    column added, so malformed lines are kept and routed to rejects instead of becoming all-NULL rows."""
    from pyspark.sql import types as T

    if schema is None:
        base = _infer_schema(spark, paths, sampling_ratio)
    elif isinstance(schema, str):
        base = T._parse_datatype_string(schema)
    else:
        base = schema
    fields = [f for f in base.fields if f.name not in (text_field, CORRUPT_COLUMN)]
    fields.append(T.StructField(text_field, T.StringType(), True))
    fields.append(T.StructField(CORRUPT_COLUMN, T.StringType(), True))
    return T.StructType(fields)


def read_jsonl_checked(spark: "SparkSession", path: str, text_field: str = "text", schema=None,
                       file_name_column: str = "file_name", sampling_ratio: float = 1.0,
                       listing: InputListing | None = None) -> tuple["DataFrame", InputListing]:
    """All records with ``file_name`` and a ``_reject_reason`` column (null when the record is fine), plus the
    file listing. Internal columns: ``_corrupt_record`` (the raw line when malformed)."""
    from pyspark.sql import functions as F

    listing = listing or list_input_files(spark, path)
    paths = [f.path for f in listing.files if f.size > 0]
    if not paths:
        return _empty_frame(spark, text_field, file_name_column, schema), listing
    read_schema_ = read_schema(spark, paths, text_field, schema, sampling_ratio)
    if file_name_column in read_schema_.names:
        raise InputError(f"the input already has a {file_name_column!r} field: choose another --file-name-column")
    df = (spark.read.schema(read_schema_).option("mode", "PERMISSIVE")
          .option("columnNameOfCorruptRecord", CORRUPT_COLUMN).json(paths)
          .withColumn(SOURCE_COLUMN, F.expr(RECORD_PATH_SQL)))
    names = spark.createDataFrame([(canonical_path(f.path), f.file_name) for f in listing.files],
                                  f"{SOURCE_COLUMN} string, {file_name_column} string")
    df = df.join(F.broadcast(names), on=SOURCE_COLUMN, how="left")
    df = df.withColumn(file_name_column, F.coalesce(F.col(file_name_column), F.col(SOURCE_COLUMN)))
    return df.withColumn(REASON_COLUMN, reject_reason(text_field)).drop(SOURCE_COLUMN), listing


def reject_reason(text_field: str):
    """Why a record cannot be classified, or null."""
    from pyspark.sql import functions as F

    corrupt = F.col(CORRUPT_COLUMN)
    text = F.col(text_field)
    return (F.when(corrupt.isNotNull() & corrupt.contains("\ufffd"), F.lit("invalid_utf8"))
            .when(corrupt.isNotNull(), F.lit("malformed_json"))
            .when(text.isNull(), F.lit("text_missing"))
            .when(text.rlike(BLANK_PATTERN), F.lit("text_empty")))


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
