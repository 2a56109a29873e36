"""Small file-system operations on any path Spark can write (local, HDFS, S3A, GCS, ABFS), through Hadoop's
FileSystem API in the driver JVM, so output promotion and markers work wherever the output lives."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


class HadoopFS:
    """A handle on the file system of one output directory."""

    def __init__(self, spark: "SparkSession", root: str):
        jvm = spark.sparkContext._jvm
        self._jvm = jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()
        self.root = root.rstrip("/")
        self._Path = jvm.org.apache.hadoop.fs.Path
        self.fs = self._Path(self.root).getFileSystem(self._conf)

    def path(self, rel: str = ""):
        return self._Path(self.root + ("/" + rel.lstrip("/") if rel else ""))

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete(self.path(rel), True)

    def rename(self, src: str, dst: str) -> None:
        parent = self.path(dst).getParent()
        if parent is not None and not self.fs.exists(parent):
            self.fs.mkdirs(parent)
        if not self.fs.rename(self.path(src), self.path(dst)):
            raise OSError(f"could not move {self.root}/{src} to {self.root}/{dst}")

    def mkdirs(self, rel: str) -> None:
        self.fs.mkdirs(self.path(rel))

    def list(self, rel: str = "") -> list[tuple[str, bool]]:
        """(name, is_directory) of the entries in a directory."""
        if not self.exists(rel):
            return []
        return [(st.getPath().getName(), bool(st.isDirectory())) for st in self.fs.listStatus(self.path(rel))]

    def write_text(self, rel: str, text: str) -> None:
        """Write a small file atomically where the file system allows: to a temporary name, then rename."""
        tmp = f"{rel}.tmp"
        stream = self.fs.create(self.path(tmp), True)
        try:
            data = text.encode("utf-8")
            stream.write(bytearray(data))
        finally:
            stream.close()
        if self.exists(rel):
            self.fs.delete(self.path(rel), False)
        self.rename(tmp, rel)

    def read_text(self, rel: str) -> str | None:
        if not self.exists(rel):
            return None
        stream = self.fs.open(self.path(rel))
        try:
            reader = self._jvm.java.io.BufferedReader(self._jvm.java.io.InputStreamReader(stream, "UTF-8"))
            lines = []
            line = reader.readLine()
            while line is not None:
                lines.append(line)
                line = reader.readLine()
            return "\n".join(lines)
        finally:
            stream.close()

    def write_json(self, rel: str, data: Any) -> None:
        self.write_text(rel, json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False, default=str) + "\n")

    def read_json(self, rel: str) -> Any | None:
        text = self.read_text(rel)
        return json.loads(text) if text else None


def data_bytes(spark: "SparkSession", root: str) -> int:
    """Bytes of the data under the output ``root``: every entry except ``_`` and ``.`` names (rejects, summary,
    report, markers), which readers skip too."""
    fs = HadoopFS(spark, root)
    total = 0
    for name, _ in fs.list():
        if not name.startswith(("_", ".")):
            total += int(fs.fs.getContentSummary(fs.path(name)).getLength())
    return total


def local_path(uri: str) -> "Path | None":
    """The local path that a Spark path names (a plain path or ``file:`` URI), or None for another file system
    (``s3a://``, ``hdfs://``, ``gs://``, ...), which only Spark's Hadoop client can reach.

    Why: checks that must run before Spark starts (an ``--output`` that is a file) and the HTML report (written with
    plain Python file operations) can only work on local paths; they skip the others instead of misreading
    ``s3a://bucket/x`` as the relative path ``s3a:/bucket/x``.
    """
    from pathlib import Path
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if not parsed.scheme:
        return Path(uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(parsed.path)
    return None
