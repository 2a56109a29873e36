"""Names of output files and directories: what an input's ``file_name`` becomes under OUT, for every sink.

Output names come only from sanitised input names and stay inside the output directory; names that sanitising
changes get a short hash of the original, so two inputs never share an output. The listing uses
``partition_safe_name`` too, so a ``file_name`` always fits one partition directory.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import unicodedata

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


# Characters Spark never escapes in a partition value on any platform (it escapes some ASCII only, and ' ' '<' '>'
# '|' on Windows): a name made of these is its own directory name, with no call into the JVM.
_PLAIN = re.compile("[A-Za-z0-9._\\-\u0080-\U0010ffff]*")
_CATALOG_UTILS: dict[int, object] = {}


def partition_dir_name(spark, column: str, value: str) -> str:
    """The directory Spark's ``partitionBy(column)`` writes for ``value`` (Spark's own escaping, from the JVM
    when there is one; the class handle is kept, since the job asks once per input file)."""
    if _PLAIN.fullmatch(column) and _PLAIN.fullmatch(value):
        return f"{column}={value}"
    try:
        jvm = spark.sparkContext._jvm
        utils = _CATALOG_UTILS.get(id(jvm))
        if utils is None:
            utils = _CATALOG_UTILS[id(jvm)] = jvm.org.apache.spark.sql.catalyst.catalog.ExternalCatalogUtils
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
