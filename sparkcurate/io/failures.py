"""How a failed read is explained: Spark's error for an input file it could not read, turned into an
``InputError`` that names the file and says why (truncated or corrupt compressed data, a file deleted or moved
while the job ran, a codec this Hadoop lacks).

Every file-based source shares these (``Source.explain_failure`` calls ``explain_failure``); a source whose
failures read differently overrides that hook.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sparkcurate.io.listing import InputError, InputFile, InputListing
from sparkcurate.io.names import COMPRESSED_SUFFIXES

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


_READ_FAILURE = re.compile(r"(?:reading file|File|Path does not exist:) (\S+?)\.? (?:does not exist|SQLSTATE)"
                           r"|Path does not exist: (\S+?)\.?$"  # Spark 3.5: no SQLSTATE after the path
                           r"|reading file (\S+)", re.MULTILINE)
_TRUNCATED = ("EOF", "end of input stream", "GZIP", "ZipException", "Truncated", "ZstdIOException",
              "Unknown frame descriptor", "incorrect header check")
# A Hadoop codec in the failure: Spark 3.5 reports a file it could not decompress this way, without its path.
_CODEC_FAILURE = ("org.apache.hadoop.io.compress", "zStandard")
_NO_ZSTD = "native zStandard library not available"


def explain_failure(exc: Exception, spark: "SparkSession | None" = None,
                    listing: InputListing | None = None) -> Exception | None:
    """An ``InputError`` naming the file when Spark failed reading an input file (truncated or corrupt
    compressed data, a file deleted mid-run, a codec this Hadoop lacks); None for any other failure.

    Spark 4 names the file (``FAILED_READ_FILE``, ``PATH_NOT_FOUND``); Spark 3.5 does not for codec failures, so
    with ``spark`` and the run's ``listing`` the compressed inputs are checked on the driver to find it."""
    text = str(exc)
    if any(key in text for key in ("FAILED_READ_FILE", "FileNotFoundException", "PATH_NOT_FOUND")):
        match = _READ_FAILURE.search(text)
        name = next((g for g in match.groups() if g), None) if match else None
        return _input_error(name.rstrip(".") if name else "(see the Spark error)", _why(text), text)
    if spark is not None and listing is not None and any(key in text for key in _CODEC_FAILURE):
        return _explain_codec_failure(spark, listing, text)
    return None


def _explain_codec_failure(spark: "SparkSession", listing: InputListing, text: str) -> Exception | None:
    """Spark 3.5's path-less codec failure: find the file by decompressing the compressed inputs on the driver."""
    compressed = [f for f in listing.files if f.file_name.endswith(COMPRESSED_SUFFIXES)]
    if not compressed:
        return None
    log.info("Spark did not name the file it could not decompress: checking the %d compressed input(s)",
             len(compressed))
    unchecked = f"checking them all would read more than {PROBE_MAX_BYTES // 2**30} GiB on the driver"
    try:
        bad, complete = find_undecodable_file(spark, compressed)
    except Exception as probe_exc:  # never hide the real failure (e.g. no JVM handle under Spark Connect)
        log.warning("could not check the compressed inputs: %s", probe_exc)
        bad, complete, unchecked = None, False, f"checking them failed ({type(probe_exc).__name__})"
    if bad is not None:
        return _input_error(bad.path, _why(f"{bad.error}\n{text}"), f"{text}\nCaused by: {bad.error}")
    if complete:  # every compressed input decompresses: the failure was something else
        return None
    return InputError(f"one of the {len(compressed)} compressed input files could not be decompressed "
                      f"({_why(text)}); this Spark does not say which and {unchecked} (test them with e.g. "
                      f"`gzip -t`); nothing was written (Spark: {_first_line(text)})")


def _why(text: str) -> str:
    if any(key in text for key in ("FILE_NOT_EXIST", "FileNotFoundException", "PATH_NOT_FOUND")):
        return "it was deleted or moved while the job ran"
    if _NO_ZSTD in text:
        return ("this Spark's Hadoop cannot decompress zstd (its libhadoop has no native zstd); decompress the "
                ".zst files first, or run where Hadoop has native zstd (Spark 4 reads them as they are)")
    if any(key in text for key in _TRUNCATED):
        return "it is truncated or not valid compressed data"
    return "Spark could not read it"


def _first_line(text: str) -> str:
    """The line of a Spark error that says what failed, plus its first ``Caused by``."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = next((ln for ln in lines if "FAILED_READ_FILE" in ln or "PATH_NOT_FOUND" in ln),
                 lines[0] if lines else "")[:300]
    cause = next((ln for ln in lines if ln.startswith("Caused by:")), "")
    return f"{first}; {cause[:200]}" if cause else first


def _input_error(name: str, why: str, text: str) -> Exception:
    return InputError(f"input file {name}: {why}; nothing was written (Spark: {_first_line(text)})")


def check_no_vanished_files(spark: "SparkSession", listing: InputListing, counts: Any) -> None:
    """A listed, non-empty file that produced no record and no longer exists was deleted between listing and
    reading: fail rather than report a run that silently skipped it. ``counts``: the run's
    ``report.summary.Counts`` (not imported: the summary sits above the sources this module serves)."""
    from sparkcurate.io.fs import HadoopFS

    seen = {fname for fname, _status, _reason, _n in counts.by_status_file}
    for f in listing.files:
        if f.size > 0 and f.file_name not in seen and not HadoopFS(spark, f.path).exists(""):
            raise InputError(f"input file {f.path} was deleted or moved after it was listed; nothing was written")


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
