"""Which files a file-based source reads, and the ``file_name`` of every record.

- Input: a directory (read recursively), a file, or a glob, on any file system the cluster can read.
- ``file_name`` is the path relative to the input root, so ``a/x.jsonl`` and ``b/x.jsonl`` stay apart. It is
  derived from Spark's own file listing, matched on the path Spark reports for each record
  (``with_file_names``: an expression checked against every listed name, no join), so it is exact for any
  character in a name.
- Files under the input that are not read (hidden names, other suffixes, broken symbolic links) are listed
  with the reason.
- Symbolic links under a local input: a link to a folder is followed once, and never into a folder that is
  read already (a loop such as ``a/b -> a``, or a link to a sibling folder: those files are read once, under
  their real folder's name); a link to a file already read is not read again; a broken link is listed as not
  read. When the input holds links, Spark is handed the listed files, never the folder (its own recursive
  listing would follow the links again).
- A file named explicitly is read whatever its suffix; one whose name Spark treats as hidden (``_x``, ``.x``)
  is refused with the reason, since Spark reads nothing from it.

Every file format uses these (``sparkcurate.io.sources.base.Source``); only the suffixes differ.
"""

from __future__ import annotations

import glob as _glob
import logging
import posixpath
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable
from urllib.parse import unquote, urlparse

from sparkcurate.io.names import COMPRESSED_SUFFIXES, partition_safe_name

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column, DataFrame, DataFrameReader, SparkSession

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
    # Symbolic links met under a local input (relative names): Spark must then be handed the files, not the root.
    links: tuple[str, ...] = ()

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


def root_prefix(root: str) -> str:
    """The input root as ``relative_name`` compares it with a canonical path ('' when there is none)."""
    root_path = canonical_path(root).rstrip("/")
    if root_path and not root_path.startswith("/"):
        import os

        root_path = os.path.abspath(root_path)
    return root_path


def relative_name(listed_path: str, root: str) -> str:
    """``listed_path`` (as Spark's listing reports it) relative to the input root."""
    path = canonical_path(listed_path)
    root_path = root_prefix(root)
    if root_path and (path == root_path or path.startswith(root_path + "/")):
        rel = path[len(root_path):].lstrip("/")
        return rel or posixpath.basename(path)
    return posixpath.basename(path)


def _location(path: str) -> tuple[str, tuple[str, ...]]:
    """Where a path points, for comparing two paths: (store, path components). Local paths and ``file:`` URIs
    are resolved (relative paths, ``..`` and symbolic links); other URIs are compared as normalized strings
    (scheme and host in lower case, ``s3``/``s3a``/``s3n`` as one store, ``.``, ``..`` and repeated slashes
    folded). A glob stands for the folder before its first wildcard."""
    import os

    head = input_root(path) if _has_glob(path) else path
    parsed = urlparse(head)
    if not parsed.scheme or (parsed.scheme == "file" and parsed.netloc in ("", "localhost")):
        local = parsed.path if parsed.scheme else head
        real = os.path.realpath(os.path.expanduser(local))
        return "file", tuple(p for p in real.split("/") if p)
    scheme = parsed.scheme.lower()
    scheme = "s3" if scheme in ("s3", "s3a", "s3n") else scheme
    folded = posixpath.normpath("/" + unquote(parsed.path))
    return f"{scheme}://{parsed.netloc.lower()}", tuple(p for p in folded.split("/") if p)


def check_paths_apart(input_path: str, output_path: str) -> None:
    """A ``ValueError`` when ``--output`` is ``--input``, lies inside it, or holds it: a mirror output over its
    input replaces the source files, and an output inside the input is read back as input by the next run. Checked
    before anything is read or written (the command exits 2)."""
    (in_store, in_parts), (out_store, out_parts) = _location(input_path), _location(output_path)
    if in_store != out_store:
        return
    if in_parts == out_parts:
        raise ValueError(f"--output {output_path} is the input {input_path}: choose an output folder outside "
                         "the input")
    if out_parts[:len(in_parts)] == in_parts:
        raise ValueError(f"--output {output_path} lies inside --input {input_path}: the next run would read the "
                         "output as input; choose an output folder outside the input")
    if in_parts[:len(out_parts)] == out_parts:
        raise ValueError(f"--input {input_path} lies inside --output {output_path}: writing the output would "
                         "replace or prune the input; choose an output folder outside the input")


def check_listing_outside(listing: "InputListing", output_path: str) -> None:
    """An ``InputError`` when a listed local file is, through a symbolic link, inside the output folder (the
    paths themselves are apart: ``check_paths_apart``)."""
    store, out_parts = _location(output_path)
    if store != "file":
        return
    for f in listing.files:
        where, parts = _location(canonical_path(f.path))
        if where == "file" and parts[:len(out_parts)] == out_parts:
            raise InputError(f"input file {f.file_name!r} is, through a link, inside --output {output_path}: "
                             "remove the link or choose another output folder")


def check_distinct_outputs(listing: "InputListing", target: Callable[[str], str], layout: str,
                           fold_case: bool = False) -> None:
    """An ``InputError`` naming the pair when two inputs would be written to one output path (``target``: the
    sink's output path of a ``file_name``, relative to OUT), or one's output would be a folder of another's
    (``a.jsonl`` and ``a.jsonl/x.jsonl``). ``fold_case``: the output's file system does not tell upper from lower
    case (nor NFC from NFD), so names equal after folding meet too. Checked after listing, before any reading, so
    no two inputs ever share an output file."""
    def key(name: str) -> str:
        return unicodedata.normalize("NFC", name).casefold() if fold_case else name

    owners: dict[str, tuple[str, str]] = {}
    for f in sorted(listing.files, key=lambda f: f.file_name):
        out = target(f.file_name)
        if key(out) in owners:
            other, other_out = owners[key(out)]
            raise InputError(_clash_message(other, other_out, f.file_name, out, layout, fold_case, False))
        owners[key(out)] = (f.file_name, out)
    for k, (name, out) in owners.items():
        parts = k.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in owners:
                other, other_out = owners["/".join(parts[:i])]
                raise InputError(_clash_message(other, other_out, name, out, layout, fold_case, True))


def _clash_message(a: str, a_out: str, b: str, b_out: str, layout: str, fold_case: bool, nested: bool) -> str:
    where = f"OUT/{a_out}" if a_out == b_out else f"OUT/{a_out} and OUT/{b_out}"
    where += ", a file and a folder of one name" if nested else ""
    case = ", on an output file system that ignores case" if fold_case else ""
    hint = " (the partitioned layout keeps every name apart)" if layout == "mirror" else ""
    return (f"input files {a!r} and {b!r} would both be written to {where} ({layout} layout{case}): nothing is "
            f"written; rename one of them{hint}")


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
    links: list[str] = []
    try:
        found = _hadoop_listing(spark, path, suffixes, kind, ignored, links)
    except Exception as exc:
        if "FileNotFound" in str(exc) or "does not exist" in str(exc):
            raise InputError(f"input {path!r} does not exist") from exc
        raise
    if found is None:  # no JVM handle (Spark Connect): Spark's own listing (it leaves out empty files)
        found = _binary_file_listing(spark, path, suffixes)
        if local:  # elsewhere the local walk (_walk_local) lists broken links itself
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
    return InputListing(root=root, files=files, source=path, ignored=skipped,
                        links=tuple(sorted(relative_name(p, root) for p in links)))


def broken_link_reason(path: str) -> str:
    import os

    return f"broken symbolic link: its target {os.readlink(path)} does not exist"


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
                    found.append((os.path.abspath(full), broken_link_reason(full)))
    return found


def splittable(name: str) -> bool:
    """Whether Spark's JSON-lines reader can cut this file into several tasks: plain text and bzip2 split; the
    other codecs (gzip, zstd, deflate, ...) are streams, one task per file however large."""
    lower = name.lower()
    return lower.endswith(".bz2") or not lower.endswith(COMPRESSED_SUFFIXES)


def suffix_glob(suffixes: tuple[str, ...]) -> str:
    """The Hadoop glob of file names ending in one of ``suffixes`` (for ``pathGlobFilter``)."""
    return "*.{" + ",".join(s.lstrip(".") for s in suffixes) + "}"


def spark_skips(name: str) -> bool:
    """Whether Spark's file listing leaves out a file or folder of this name (its rule, ``HadoopFSUtils
    .shouldFilterOutPathName``): names starting with '.', or with '_' unless they hold '=' (a partition
    folder), and names ending in ``._COPYING_``; ``_metadata`` and ``_common_metadata`` are kept. It applies to
    a file named explicitly too: Spark reads nothing from ``_x.jsonl`` whatever the path says."""
    exclude = (name.startswith("_") and "=" not in name) or name.startswith(".") or name.endswith("._COPYING_")
    return exclude and not name.startswith(("_common_metadata", "_metadata"))


HIDDEN_REASON = "hidden: a name in its path starts with '_' or '.' (Spark skips those)"


def _wanted(name: str, suffixes: tuple[str, ...]) -> bool:
    return not spark_skips(name) and name.endswith(suffixes)


def _ignore_reason(rel_parts: list[str], suffixes: tuple[str, ...], kind: str) -> str | None:
    """Why Spark would not read a file under a directory input (None: it reads it)."""
    if any(spark_skips(p) for p in rel_parts if p):
        return HIDDEN_REASON
    if not rel_parts[-1].endswith(suffixes):
        return f"not a {kind} suffix ({', '.join(suffixes)})"
    return None


def _refuse_hidden_file(path: str, name: str) -> None:
    """A file the user named whose name Spark skips: Spark would read 0 records from it (or fail to infer a
    schema), so the run refuses before anything is read."""
    if spark_skips(name):
        raise InputError(f"input file {path!r}: Spark reads nothing from a file whose name starts with '_' or '.' "
                         f"(or ends with '._COPYING_'); rename it, or link it under another name, to read it")


def _hadoop_listing(spark: "SparkSession", path: str, suffixes: tuple[str, ...], kind: str,
                    ignored: list[tuple[str, str]] | None = None,
                    links: list[str] | None = None) -> list[tuple[str, int]] | None:
    """(path, size) of every input file, empty ones included, through Hadoop's FileSystem API (local folders:
    ``_walk_local``, which follows folder links once). Files under a directory that are not read are appended to
    ``ignored`` with the reason, symbolic links met to ``links``."""
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
    ignored = ignored if ignored is not None else []
    links = links if links is not None else []
    out: list[tuple[str, int]] = []
    local = str(fs.getScheme()) == "file"
    seen: dict[str, str] = {}  # real path -> the listed path that reads it (local walks)
    for st in statuses or []:
        where = str(st.getPath().toString())
        if st.isDirectory() and local:
            out.extend(_walk_local(where, suffixes, kind, ignored, links, seen))
        elif st.isDirectory():
            it = fs.listFiles(st.getPath(), True)
            while it.hasNext():
                f = it.next()
                rel_parts = str(f.getPath().toString())[len(where):].split("/")
                why = _ignore_reason(rel_parts, suffixes, kind)
                if why is None:
                    out.append((str(f.getPath().toString()), int(f.getLen())))
                else:
                    ignored.append((str(f.getPath().toString()), why))
        elif _has_glob(path) and not _wanted(st.getPath().getName(), suffixes):
            hidden = spark_skips(str(st.getPath().getName()))
            ignored.append((where, HIDDEN_REASON if hidden else f"not a {kind} suffix ({', '.join(suffixes)})"))
        else:  # a file named explicitly is read whatever its suffix; a name Spark skips is refused
            if not _has_glob(path):
                _refuse_hidden_file(path, str(st.getPath().getName()))
            out.append((where, int(st.getLen())))
    return out


def _walk_local(root_uri: str, suffixes: tuple[str, ...], kind: str, ignored: list[tuple[str, str]],
                links: list[str], seen: dict[str, str]) -> list[tuple[str, int]]:
    """Every file under a local folder as (path as Hadoop writes it, size).

    Why not Hadoop's recursive listing: it follows folder links without memory, so a link ``a/b -> a`` reads
    ``a`` again at every level until the path is too long. Here real folders are walked first, then each folder
    link is followed once, into a folder not read yet; a link whose folder is read already (a loop, or a link to
    a sibling) and a link to a file read already are listed in ``ignored`` instead, as are broken links.
    ``seen`` maps real paths to the path that reads them, across the roots of one glob.
    """
    import os

    prefix = root_uri.rstrip("/")
    local_root = urlparse(prefix).path if prefix.startswith("file:") else prefix
    out: list[tuple[str, int]] = []
    pending_dirs: list[str] = []  # relative names of folder links, followed after the real folders
    pending_files: list[str] = []  # relative names of file links, read after every real file

    root_real = os.path.realpath(local_root)

    def walk(rel_dir: str) -> None:
        real = os.path.realpath(os.path.join(local_root, rel_dir))
        if rel_dir and real in seen:  # a folder under a followed link that is read already
            ignored.append((f"{prefix}/{rel_dir}", f"folder read already as {seen[real] or '(the input folder)'}"))
            return
        if not any(spark_skips(p) for p in rel_dir.split("/") if p):  # a hidden folder is listed, not read
            seen.setdefault(real, rel_dir)
        try:
            entries = sorted(os.scandir(os.path.join(local_root, rel_dir)), key=lambda e: e.name)
        except OSError as exc:
            ignored.append((f"{prefix}/{rel_dir}".rstrip("/"), f"folder not readable: {exc.strerror or exc}"))
            return
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_symlink():
                links.append(f"{prefix}/{rel}")
                if any(spark_skips(p) for p in rel.split("/")):
                    ignored.append((f"{prefix}/{rel}", HIDDEN_REASON))
                elif not os.path.exists(entry.path):
                    ignored.append((f"{prefix}/{rel}", broken_link_reason(entry.path)))
                elif entry.is_dir():
                    pending_dirs.append(rel)
                else:
                    pending_files.append(rel)
            elif entry.is_dir(follow_symlinks=False):
                walk(rel)
            elif entry.is_file(follow_symlinks=False):
                add_file(rel, entry.stat(follow_symlinks=False).st_size, os.path.join(real, entry.name))

    def add_file(rel: str, size: int, real: str) -> None:
        why = _ignore_reason(rel.split("/"), suffixes, kind)
        if why is None and real in seen:
            why = f"the same file as {seen[real] or '(the input)'}, read once"
        if why is not None:
            ignored.append((f"{prefix}/{rel}", why))
            return
        seen[real] = rel
        out.append((f"{prefix}/{rel}", size))

    walk("")
    while pending_dirs:  # links found inside a followed folder join the queue
        rel = pending_dirs.pop(0)
        real = os.path.realpath(os.path.join(local_root, rel))
        why = _link_loop(rel, real, os.path.realpath(os.path.join(local_root, posixpath.dirname(rel))),
                         root_real, seen)
        if why is not None:
            ignored.append((f"{prefix}/{rel}", why))
        else:
            walk(rel)
    for rel in pending_files:
        path = os.path.join(local_root, rel)
        add_file(rel, os.stat(path).st_size, os.path.realpath(path))
    return out


def _link_loop(rel: str, real: str, parent_real: str, root_real: str, seen: dict[str, str]) -> str | None:
    """Why the folder link ``rel`` (to ``real``) is not followed, or None: it points to a folder read already
    (a loop when the link sits inside that folder) or to a folder that holds the input (always a loop)."""
    if root_real == real or root_real.startswith(real.rstrip("/") + "/"):
        return f"folder link loop: it points to {real}, the input folder or a folder above it"
    if real not in seen:
        return None
    inside = posixpath.join(parent_real, posixpath.basename(rel)).startswith(real.rstrip("/") + "/")
    what = "loop" if inside else "to a folder read already"
    return f"folder link {what}: {seen[real] or '(the input folder)'} is read once"


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
    """Whether Spark can be pointed at the input folder itself: not where the folder holds links (Spark's own
    recursive listing follows them, loops included, and would not read what the listing decided)."""
    src = listing.source
    return (bool(src) and not listing.links and not _has_glob(src)
            and canonical_path(src).rstrip("/") == canonical_path(listing.root).rstrip("/"))


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
    root, from the listing, matched on the path Spark reports for the record.

    Why an expression and not a join: a join with the listing as a table is a broadcast, i.e. a Spark job of its
    own before the classify stage (seconds in a fresh application, issue 23). Every listed ``file_name`` is almost
    always the record's path with the input root cut off (``NameRule``); the few that are not (names shortened
    to fit a partition folder, globs over several roots) are matched one by one. When more than
    ``MAX_NAME_EXCEPTIONS`` are, the listing is joined as before (a per-row chain that long would cost more)."""
    from pyspark.sql import functions as F

    rule = name_rule(listing)
    # The path once, in a column of its own: input_file_name() is nondeterministic, so Spark would neither share
    # it between the rule's uses nor fold this projection into the next.
    df = df.withColumn(SOURCE_COLUMN, F.expr(RECORD_PATH_SQL))
    if rule is not None:
        return df.withColumn(file_name_column, rule.column(F.col(SOURCE_COLUMN))).drop(SOURCE_COLUMN)
    names = spark.createDataFrame([(canonical_path(f.path), f.file_name) for f in listing.files],
                                  f"{SOURCE_COLUMN} string, {file_name_column} string")
    df = df.join(F.broadcast(names), on=SOURCE_COLUMN, how="left")
    df = df.withColumn(file_name_column, F.coalesce(F.col(file_name_column), F.col(SOURCE_COLUMN)))
    return df.drop(SOURCE_COLUMN)


# Listed files whose file_name the path rule does not give, matched one by one in each row's expression.
MAX_NAME_EXCEPTIONS = 64
_WHOLE = 2**31 - 1  # Spark's substring: to the end of the string


@dataclass(frozen=True)
class NameRule:
    """A record's ``file_name`` from its canonical path (``RECORD_PATH_SQL``), as a Spark expression: the path
    after ``prefix`` + '/' (else its last component); with ``prefix`` None, the path without its leading
    slashes. ``exceptions``: listed paths whose name the rule does not give, with their names. ``name`` is the
    same rule in Python: a listed file's name is an exception exactly where ``name`` differs from it."""

    prefix: str | None
    exceptions: tuple[tuple[str, str], ...] = ()

    def name(self, path: str) -> str:
        if self.prefix is None:
            return path.lstrip("/")
        if self.prefix and path.startswith(self.prefix + "/"):
            return path[len(self.prefix) + 1:]
        return path.rsplit("/", 1)[-1]

    def column(self, path: "Column") -> "Column":
        from pyspark.sql import functions as F

        if self.prefix is None:
            out = F.regexp_replace(path, "^/+", "")
        elif self.prefix:
            out = F.when(path.startswith(F.lit(self.prefix + "/")), path.substr(len(self.prefix) + 2, _WHOLE)
                         ).otherwise(F.substring_index(path, "/", -1))
        else:
            out = F.substring_index(path, "/", -1)
        for listed, file_name in self.exceptions:
            out = F.when(path == F.lit(listed), F.lit(file_name)).otherwise(out)
        return out


def name_rule(listing: InputListing) -> NameRule | None:
    """The ``NameRule`` that gives the listed files' names with the fewest exceptions (relative to the input
    root, or the whole path), or None when even that one has more than ``MAX_NAME_EXCEPTIONS``."""
    listed = [(canonical_path(f.path), f.file_name) for f in listing.files]  # once for both rules
    best = None
    for prefix in (root_prefix(listing.root), None):
        rule = NameRule(prefix)
        missed = tuple((path, name) for path, name in listed if rule.name(path) != name)
        if best is None or len(missed) < len(best.exceptions):
            best = NameRule(prefix, missed)
    return best if best is not None and len(best.exceptions) <= MAX_NAME_EXCEPTIONS else None
