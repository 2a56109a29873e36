"""Writing what is kept: JSON lines partitioned by ``file_name``, or one file per input (``layout="mirror"``).

Re-runs replace only what they rewrite: the partitioned layout uses Spark's dynamic partition overwrite (Spark
stages the new files and swaps partitions at job commit, so a failed re-run leaves the old output), and the mirror
layout writes to a staging folder first and then replaces one file per input.

Output names come only from sanitised input names and stay inside the output directory; names that sanitising
changes get a short hash of the original, so two inputs never share an output.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import unicodedata
import uuid
from typing import TYPE_CHECKING
from urllib.parse import unquote

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

LAYOUTS = ("partitioned", "mirror")
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst", ".deflate", ".lz4", ".snappy")
MAX_COMPONENT_BYTES = 200
# Characters Hive/Spark escape in partition directory names (each becomes %XX, three bytes).
_SPARK_ESCAPED = set('"#%\'*/:=?\\\x7f{[]^')


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]


def partition_dir_bytes(value: str) -> int:
    """Bytes of the directory name Spark makes for ``file_name=<value>``."""
    return len("file_name=") + sum(
        3 if (ch in _SPARK_ESCAPED or ord(ch) < 32) else len(ch.encode("utf-8", "surrogatepass")) for ch in value
    )


def partition_dir_name(spark, column: str, value: str) -> str:
    """The directory Spark's ``partitionBy(column)`` writes for ``value`` (Spark's own escaping, from the JVM
    when there is one)."""
    try:
        utils = spark.sparkContext._jvm.org.apache.spark.sql.catalyst.catalog.ExternalCatalogUtils
        return f"{utils.escapePathName(column)}={utils.escapePathName(value)}"
    except Exception:  # no JVM handle: the same rule in Python
        def esc(text: str) -> str:
            return "".join(f"%{ord(ch):02X}" if (ch in _SPARK_ESCAPED or ord(ch) < 32) else ch for ch in text)

        return f"{esc(column)}={esc(value)}"


def partition_safe_name(name: str, limit: int = 240) -> str:
    """``name`` itself when its partition directory fits a file system's 255-byte limit; else a shortened,
    still-unique form (a prefix plus a hash of the full name)."""
    if partition_dir_bytes(name) <= limit:
        return name
    base, ext = _split_ext(name)
    keep = base
    while keep and partition_dir_bytes(keep + "~" + _short_hash(name) + ext) > limit:
        keep = keep[: max(len(keep) - 8, 0)]
    return f"{keep}~{_short_hash(name)}{ext}"


def _split_ext(name: str) -> tuple[str, str]:
    stem, ext = posixpath.splitext(name)
    if ext in COMPRESSED_SUFFIXES:
        stem2, ext2 = posixpath.splitext(stem)
        return stem2, ext2 + ext
    return stem, ext


def _safe_component(part: str) -> str:
    part = "".join(ch for ch in part if unicodedata.category(ch) not in ("Cc", "Cs") and ch not in "\\")
    if part in ("", ".", ".."):
        part = "_" if not part else part.replace(".", "_")
    if part.startswith((".", "_")):  # Spark and Hadoop skip such files when reading the output back
        part = "f" + part
    while len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
        part = part[:-1]
    return part


def safe_relative_path(name: str, suffix: str = ".jsonl") -> str:
    """A relative output path for input ``name`` that cannot escape the output directory.

    Compression suffixes are dropped and the output suffix set (``x.jsonl.gz`` -> ``x.jsonl``); a name that
    sanitising changed gets ``~<hash>`` so inputs that differ only in removed characters stay apart.
    """
    stem, ext = _split_ext(name)
    plain_ext = ext
    for comp in COMPRESSED_SUFFIXES:
        if plain_ext.endswith(comp):
            plain_ext = plain_ext[: -len(comp)]
    target_ext = plain_ext if plain_ext in (".jsonl", ".json", ".ndjson") else suffix
    parts = [p for p in stem.replace("\\", "/").split("/")]
    safe = [_safe_component(p) for p in parts if p != ""] or [_safe_component("")]
    candidate = "/".join(safe) + target_ext
    if "/".join(safe) != stem.strip("/") or len(candidate.encode()) > 1000:
        safe[-1] = safe[-1][:100] + "~" + _short_hash(name)
        candidate = "/".join(safe) + target_ext
    return candidate


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
    if layout == "partitioned":
        _writer(df, compression).partitionBy(file_name_column).json(out)
    else:
        write_mirror(df, out, file_name_column, compression)


def _writer(df: "DataFrame", compression: str | None):
    writer = df.write.mode("overwrite").option("partitionOverwriteMode", "dynamic")
    writer = writer.option("compression", compression or "none").option("ignoreNullFields", "false")
    return writer


def write_mirror(df: "DataFrame", out: str, file_name_column: str = "file_name",
                 compression: str | None = None) -> list[str]:
    """One output file per input file, under the input's (sanitised) relative name. Returns the names written."""
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from sparkcurate.io.fs import HadoopFS

    spark = SparkSession.getActiveSession() or df.sparkSession
    fs = HadoopFS(spark, out)
    staging = f"_staging/mirror-{uuid.uuid4().hex[:12]}"
    # Every row of one input lands in one task, so each partition directory holds exactly one part file.
    (df.repartition(F.col(file_name_column)).write.mode("overwrite")
     .option("compression", compression or "none").option("ignoreNullFields", "false")
     .option("maxRecordsPerFile", 0).partitionBy(file_name_column).json(f"{out.rstrip('/')}/{staging}"))
    written: list[str] = []
    ext = {"gzip": ".gz", "bzip2": ".bz2", "deflate": ".deflate"}.get(compression or "", "")
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

