"""Which files a file-based source reads, and the ``file_name`` of every record.

- Input: a directory (read recursively), a file, or a glob, on any file system the cluster can read.
- ``file_name`` is the path relative to the input root, so ``a/x.jsonl`` and ``b/x.jsonl`` stay apart. It is
  derived from Spark's own file listing, joined on the path Spark reports for each record
  (``with_file_names``), so it is exact for any character in a name.
- Files under the input that are not read (hidden names, other suffixes, broken symbolic links) are listed
  with the reason.

Every file format uses these (``sparkcurate.io.sources.base.Source``); only the suffixes differ.
"""

from __future__ import annotations

import glob as _glob
import logging
import posixpath
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from sparkcurate.io.names import COMPRESSED_SUFFIXES, partition_safe_name

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, DataFrameReader, SparkSession

log = logging.getLogger(__name__)

# A temporary column of with_file_names, in the job's namespace (sources.base.INTERNAL_PREFIX, where input fields are
# refused), so it can never replace an input field called "_source_path".
SOURCE_COLUMN = "__sparkcurate_source_path"


class InputError(ValueError):
    """The input cannot be read: the message says why (``sparkcurate.io.failures`` explains Spark's read
    failures with it; the command exits 4)."""


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


def list_input_files(spark: "SparkSession", path: str, suffixes: tuple[str, ...], kind: str) -> InputListing:
    """Every ``kind`` file (one of ``suffixes``) under ``path`` as Spark sees it (names starting with '_' or '.'
    are skipped, as Spark does). Uses Spark's own listing, so it works for every file system the cluster can
    read."""
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
        found = _hadoop_listing(spark, path, suffixes, kind, ignored)
    except Exception as exc:
        if "FileNotFound" in str(exc) or "does not exist" in str(exc):
            raise InputError(f"input {path!r} does not exist") from exc
        raise
    if found is None:  # no JVM handle (Spark Connect): Spark's own listing (it leaves out empty files)
        found = _binary_file_listing(spark, path, suffixes)
    if local:
        ignored.extend(broken_links(path))
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


def broken_links(path: str) -> list[tuple[str, str]]:
    """Symbolic links under a local directory input (or the directories a glob matches) whose target does not
    exist, with why. Hadoop's listing passes over them without a word; reported in ``ignored_files``, a link
    that points nowhere is not a file silently missing from the run. Folder links are followed, each real folder
    walked once."""
    import os

    local = urlparse(path).path if path.startswith("file:") else path
    tops = _glob.glob(local, recursive=True) if _has_glob(path) else [local]
    seen: set[str] = set()
    found: list[tuple[str, str]] = []
    for top in (t for t in tops if os.path.isdir(t)):
        for folder, dirs, files in os.walk(top, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            for name in files:  # a link whose target is missing is no folder: os.walk lists it with the files
                full = os.path.join(folder, name)
                if os.path.islink(full) and not os.path.exists(full):
                    found.append((os.path.abspath(full),
                                  f"broken symbolic link: its target {os.readlink(full)} does not exist"))
    return found


def splittable(name: str) -> bool:
    """Whether Spark's JSON-lines reader can cut this file into several tasks: plain text and bzip2 split; the
    other codecs (gzip, zstd, deflate, ...) are streams, one task per file however large."""
    lower = name.lower()
    return lower.endswith(".bz2") or not lower.endswith(COMPRESSED_SUFFIXES)


def suffix_glob(suffixes: tuple[str, ...]) -> str:
    """The Hadoop glob of file names ending in one of ``suffixes`` (for ``pathGlobFilter``)."""
    return "*.{" + ",".join(s.lstrip(".") for s in suffixes) + "}"


def _wanted(name: str, suffixes: tuple[str, ...]) -> bool:
    return not name.startswith(("_", ".")) and name.endswith(suffixes)


def _ignore_reason(rel_parts: list[str], suffixes: tuple[str, ...], kind: str) -> str | None:
    """Why Spark would not read a file under a directory input (None: it reads it)."""
    if any(p.startswith(("_", ".")) for p in rel_parts if p):
        return "hidden: a name in its path starts with '_' or '.' (Spark skips those)"
    if not rel_parts[-1].endswith(suffixes):
        return f"not a {kind} suffix ({', '.join(suffixes)})"
    return None


def _hadoop_listing(spark: "SparkSession", path: str, suffixes: tuple[str, ...], kind: str,
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
                why = _ignore_reason(rel_parts, suffixes, kind)
                if why is None:
                    out.append((str(f.getPath().toString()), int(f.getLen())))
                elif ignored is not None:
                    ignored.append((str(f.getPath().toString()), why))
        elif _has_glob(path) and not _wanted(st.getPath().getName(), suffixes):
            continue
        else:  # a file named explicitly is read whatever its name
            out.append((str(st.getPath().toString()), int(st.getLen())))
    return out


def _binary_file_listing(spark: "SparkSession", path: str, suffixes: tuple[str, ...]) -> list[tuple[str, int]]:
    reader = spark.read.format("binaryFile")
    if not _has_glob(path):
        reader = reader.option("recursiveFileLookup", "true").option("pathGlobFilter", suffix_glob(suffixes))
    return [(r["path"], int(r["length"])) for r in reader.load(path).select("path", "length").collect()]


_GLOB_SPECIAL = re.compile(r"([\\*?\[\]{}])")


def glob_escape(path: str) -> str:
    """``path`` with Hadoop's glob characters backslash-escaped: a literal path for Spark's reader."""
    return _GLOB_SPECIAL.sub(r"\\\1", path)


def _is_directory(listing: InputListing) -> bool:
    src = listing.source
    return bool(src) and not _has_glob(src) and canonical_path(src).rstrip("/") == canonical_path(listing.root).rstrip("/")


def readable_paths(listing: InputListing) -> list[str]:
    """The non-empty listed files as literal paths for Spark's reader (which treats every path as a glob:
    escaped, 'a[1].jsonl' or 'back\\slash.jsonl' are read as themselves)."""
    return [glob_escape(f.path) for f in listing.files if f.size > 0]


def point_reader(reader: "DataFrameReader", listing: InputListing,
                 suffixes: tuple[str, ...]) -> tuple["DataFrameReader", str | list[str]]:
    """The reader and what to load: a directory is read as one source (no per-file list: names with glob
    characters stay literal), anything else as the listed files."""
    if _is_directory(listing):
        reader = reader.option("recursiveFileLookup", "true").option("pathGlobFilter", suffix_glob(suffixes))
        return reader, glob_escape(listing.source)
    return reader, readable_paths(listing)


def with_file_names(spark: "SparkSession", df: "DataFrame", listing: InputListing,
                    file_name_column: str) -> "DataFrame":
    """``df`` (read from the listed files) with ``file_name_column``: each record's file relative to the input
    root, from the listing, joined on the path Spark reports for the record."""
    from pyspark.sql import functions as F

    df = df.withColumn(SOURCE_COLUMN, F.expr(RECORD_PATH_SQL))
    names = spark.createDataFrame([(canonical_path(f.path), f.file_name) for f in listing.files],
                                  f"{SOURCE_COLUMN} string, {file_name_column} string")
    df = df.join(F.broadcast(names), on=SOURCE_COLUMN, how="left")
    df = df.withColumn(file_name_column, F.coalesce(F.col(file_name_column), F.col(SOURCE_COLUMN)))
    return df.drop(SOURCE_COLUMN)
