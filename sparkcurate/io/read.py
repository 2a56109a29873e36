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
    from pyspark.sql import Column, DataFrame, SparkSession

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
    "nul_bytes": "the line holds raw NUL bytes: a UTF-16/UTF-32 file or binary data (re-encode it as UTF-8)",
    "text_missing": "the text field is missing or null (a key that differs only in case, like TEXT, is not it)",
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
    source: str = ""  # the path as given
    # Files under the input that are not read, with why (hidden or '_' names, other suffixes): reported, not lost.
    ignored: tuple[tuple[str, str], ...] = ()

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
    ignored: list[tuple[str, str]] = []
    try:
        found = _hadoop_listing(spark, path, ignored)
    except Exception as exc:
        if "FileNotFound" in str(exc) or "does not exist" in str(exc):
            raise InputError(f"input {path!r} does not exist") from exc
        raise
    if found is None:  # no JVM handle (Spark Connect): Spark's own listing (it leaves out empty files)
        found = _binary_file_listing(spark, path)
    from sparkcurate.io.write import partition_safe_name

    root = input_root(path)
    files = sorted((InputFile(p, partition_safe_name(relative_name(p, root)), size) for p, size in found),
                   key=lambda f: f.file_name)
    names = [f.file_name for f in files]
    if len(set(names)) != len(names):  # only possible for globs spanning several roots
        files = [InputFile(f.path, canonical_path(f.path).lstrip("/"), f.size) for f in files]
    skipped = tuple(sorted((relative_name(p, root), why) for p, why in ignored))
    if skipped:
        log.warning("%d file(s) under %s are not read (see ignored_files in the summary), e.g. %s", len(skipped),
                    path, skipped[0])
    return InputListing(root=root, files=files, source=path, ignored=skipped)


INPUT_SUFFIXES = tuple("." + ext for ext in INPUT_GLOB[3:-1].split(","))


def _wanted(name: str) -> bool:
    return not name.startswith(("_", ".")) and name.endswith(INPUT_SUFFIXES)


def _ignore_reason(rel_parts: list[str]) -> str | None:
    """Why Spark would not read a file under a directory input (None: it reads it)."""
    if any(p.startswith(("_", ".")) for p in rel_parts if p):
        return "hidden: a name in its path starts with '_' or '.' (Spark skips those)"
    if not rel_parts[-1].endswith(INPUT_SUFFIXES):
        return f"not a JSONL suffix ({', '.join(INPUT_SUFFIXES)})"
    return None


def _hadoop_listing(spark: "SparkSession", path: str,
                    ignored: list[tuple[str, str]] | None = None) -> list[tuple[str, int]] | None:
    """(path, size) of every input file, empty ones included, through Hadoop's FileSystem API. Files under a
    directory that are not read are appended to ``ignored`` with the reason."""
    try:
        jvm = spark.sparkContext._jvm
    except Exception:
        return None
    if jvm is None:
        return None
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(conf)
    statuses = fs.globStatus(hpath) if _has_glob(path) else [fs.getFileStatus(hpath)]
    out: list[tuple[str, int]] = []
    for st in statuses or []:
        if st.isDirectory():
            it = fs.listFiles(st.getPath(), True)
            while it.hasNext():
                f = it.next()
                rel_parts = str(f.getPath().toString())[len(str(st.getPath().toString())):].split("/")
                why = _ignore_reason(rel_parts)
                if why is None:
                    out.append((str(f.getPath().toString()), int(f.getLen())))
                elif ignored is not None:
                    ignored.append((str(f.getPath().toString()), why))
        elif _has_glob(path) and not _wanted(st.getPath().getName()):
            continue
        else:  # a file named explicitly is read whatever its name
            out.append((str(st.getPath().toString()), int(st.getLen())))
    return out


def _binary_file_listing(spark: "SparkSession", path: str) -> list[tuple[str, int]]:
    reader = spark.read.format("binaryFile")
    if not _has_glob(path):
        reader = reader.option("recursiveFileLookup", "true").option("pathGlobFilter", INPUT_GLOB)
    return [(r["path"], int(r["length"])) for r in reader.load(path).select("path", "length").collect()]


# How many compressed bytes the driver may re-read to find which file Spark failed to decompress (see
# find_undecodable_file). A failing run stops here, so this is spent once, only on the failure path.
PROBE_MAX_BYTES = 4 * 2**30


@dataclass(frozen=True)
class Undecodable:
    """A compressed input file that Hadoop's codec cannot read to its end, with the Java error."""

    path: str
    error: str


def find_undecodable_file(spark: "SparkSession", files: list[InputFile], max_bytes: int | None = None
                          ) -> tuple[Undecodable | None, bool]:
    """The first compressed input that Hadoop cannot decompress, and whether every compressed input was checked.

    Why: Spark 4 names the file in ``FAILED_READ_FILE`` when a codec fails (truncated ``.gz``, no native zstd);
    Spark 3.5 (Databricks 14/15, EMR 7, Dataproc 2.2) reports only ``EOFException`` with no path. The driver then
    decompresses the compressed inputs itself, through the same Hadoop codecs and file systems (the bytes stay in
    the JVM: ``IOUtils.copyBytes`` into a null stream), stopping at the first failure or after ``max_bytes`` of
    compressed input (default ``PROBE_MAX_BYTES``).
    """
    max_bytes = PROBE_MAX_BYTES if max_bytes is None else max_bytes
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    factory = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(conf)
    spent = 0
    for f in files:
        hpath = jvm.org.apache.hadoop.fs.Path(f.path)
        codec = factory.getCodec(hpath)
        if codec is None or f.size == 0:
            continue
        if spent + f.size > max_bytes:
            return None, False
        spent += f.size
        error = _decompress_error(jvm, conf, hpath, codec)
        if error is not None:
            return Undecodable(f.path, error), True
    return None, True


def _decompress_error(jvm, conf, hpath, codec) -> str | None:
    """Read one compressed file to its end through ``codec``; the Java error (``Class: message``) or None."""
    try:
        raw = hpath.getFileSystem(conf).open(hpath)
        try:
            stream = codec.createInputStream(raw)
            jvm.org.apache.hadoop.io.IOUtils.copyBytes(stream, jvm.java.io.OutputStream.nullOutputStream(),
                                                       1 << 16, True)
        finally:
            raw.close()
    except Exception as exc:  # py4j's Py4JJavaError carries the Java exception
        java = getattr(exc, "java_exception", None)
        return str(java.toString()) if java is not None else f"{type(exc).__name__}: {exc}"
    return None


def _infer_schema(spark: "SparkSession", paths: list[str], sampling_ratio: float):
    """Spark's inferred schema. Inferred case-sensitively: with the default (case-insensitive) analysis, keys that
    differ only in case ("text" and "TEXT") make Spark fail the whole read with COLUMN_ALREADY_EXISTS;
    ``_fold_case_duplicates`` then decides which spelling is read."""
    reader = spark.read.option("samplingRatio", sampling_ratio).option("mode", "PERMISSIVE")
    reader = reader.option("columnNameOfCorruptRecord", CORRUPT_COLUMN)
    key = "spark.sql.caseSensitive"
    before = spark.conf.get(key, "false")
    spark.conf.set(key, "true")
    try:
        try:
            return reader.json(paths).schema
        except Exception as exc:  # a record with the same key twice: Spark's inference cannot express it
            if "COLUMN_ALREADY_EXISTS" not in str(exc):
                raise
            log.warning("some records repeat a key; inferring the schema with the last value of each key (as the "
                        "reader then reads them)")
            return _infer_schema_deduplicated(spark, paths, sampling_ratio)
    finally:
        spark.conf.set(key, before)


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


def _infer_schema_deduplicated(spark: "SparkSession", paths: list[str], sampling_ratio: float):
    lines = spark.read.text(paths).rdd.map(lambda r: _last_value_wins(r[0]) if r[0] is not None else r[0])
    if sampling_ratio < 1.0:
        lines = lines.sample(False, sampling_ratio, seed=1)
    return (spark.read.option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT_COLUMN)
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
    fields = _fold_case_duplicates(spark, fields, text_field)
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
    # Spark treats every path it is given as a glob: escape the names, so 'a[1].jsonl' or 'back\\slash.jsonl'
    # are read as themselves.
    paths = [glob_escape(f.path) for f in listing.files if f.size > 0]
    if not paths:
        return _empty_frame(spark, text_field, file_name_column, schema), listing
    read_schema_ = read_schema(spark, paths, text_field, schema, sampling_ratio)
    if file_name_column in read_schema_.names:
        raise InputError(f"the input already has a {file_name_column!r} field: choose another --file-name-column")
    reader = spark.read.schema(read_schema_).option("mode", "PERMISSIVE").option(
        "columnNameOfCorruptRecord", CORRUPT_COLUMN)
    if _is_directory(listing):
        # A directory is read as one source (no per-file list: names with glob characters stay literal).
        reader = reader.option("recursiveFileLookup", "true").option("pathGlobFilter", INPUT_GLOB)
        source: str | list[str] = glob_escape(path)
    else:
        source = paths
    df = (reader.json(source)
          .withColumn(SOURCE_COLUMN, F.expr(RECORD_PATH_SQL)))
    names = spark.createDataFrame([(canonical_path(f.path), f.file_name) for f in listing.files],
                                  f"{SOURCE_COLUMN} string, {file_name_column} string")
    df = df.join(F.broadcast(names), on=SOURCE_COLUMN, how="left")
    df = df.withColumn(file_name_column, F.coalesce(F.col(file_name_column), F.col(SOURCE_COLUMN)))
    return df.withColumn(REASON_COLUMN, reject_reason(text_field)).drop(SOURCE_COLUMN), listing


_GLOB_SPECIAL = re.compile(r"([\\*?\[\]{}])")


def glob_escape(path: str) -> str:
    """``path`` with Hadoop's glob characters backslash-escaped: a literal path for Spark's reader."""
    return _GLOB_SPECIAL.sub(r"\\\1", path)


def _is_directory(listing: InputListing) -> bool:
    src = listing.source
    return bool(src) and not _has_glob(src) and canonical_path(src).rstrip("/") == canonical_path(listing.root).rstrip("/")


def reject_reason(text_field: str):
    """Why a record cannot be classified, or null."""
    from pyspark.sql import functions as F

    corrupt = F.col(CORRUPT_COLUMN)
    text = F.col(text_field)
    return (F.when(corrupt.isNotNull() & invalid_utf8(corrupt), F.lit("invalid_utf8"))
            .when(corrupt.isNotNull() & corrupt.contains("\u0000"), F.lit("nul_bytes"))
            .when(corrupt.isNotNull(), F.lit("malformed_json"))
            .when(text.isNull(), F.lit("text_missing"))
            .when(text.rlike(BLANK_PATTERN), F.lit("text_empty")))


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
