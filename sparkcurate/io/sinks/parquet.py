"""Parquet out (``--output-format parquet``): the kept rows with the input's own column types (an int stays an
int, a struct a struct, as the source read them), partitioned by ``file_name`` or one file per input.

- ``partitioned``: ``OUT/file_name=<name>/part-*.parquet``; ``spark.read.parquet(OUT)`` restores ``file_name``.
  Spark's dynamic partition overwrite stages the new files and swaps only the partitions written, so a re-run
  replaces exactly the inputs it rewrites and a failed one leaves the old output.
- ``mirror``: one Parquet file per input, named after it: ``a/b.jsonl`` -> ``OUT/a/b.jsonl.parquet``, an input
  that is Parquet already keeps its name (``part-0.parquet`` -> ``OUT/part-0.parquet``). The input's full name
  stays in the output's, so ``x.jsonl`` and ``x.json`` never share an output.
- Compression is Parquet's own, inside the file (column chunks): ``snappy`` (Spark's default, and the default
  here), ``zstd``, ``gzip``, ``lz4`` or ``none``; file names do not change with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from sparkcurate.io.names import COMPRESSED_SUFFIXES, safe_relative_path
from sparkcurate.io.sinks.base import Sink
from sparkcurate.io.sinks.mirror import write_mirror_files

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

PARQUET_SUFFIX = ".parquet"


class ParquetSink(Sink):
    """Parquet files, compressed inside (snappy by default)."""

    name: ClassVar[str] = "parquet"
    compressions: ClassVar[tuple[str, ...]] = ("snappy", "zstd", "gzip", "lz4", "none")

    def write(self, df: "DataFrame", out: str, layout: str, file_name_column: str,
              compression: str | None) -> None:
        self.check(layout, compression)
        codec = self.compression(compression)
        if layout == "partitioned":
            (df.write.mode("overwrite").option("partitionOverwriteMode", "dynamic").option("compression", codec)
             .partitionBy(file_name_column).parquet(out))
        else:
            write_mirror_files(df, out, file_name_column,
                               lambda writer, path: writer.option("compression", codec).parquet(path),
                               lambda file_name: self.mirror_name(file_name, compression))

    def mirror_name(self, file_name: str, compression: str | None) -> str:
        return parquet_mirror_name(file_name)


def parquet_mirror_name(file_name: str) -> str:
    """``OUT``-relative name of input ``file_name``'s Parquet file: the input's name (less a compression suffix,
    which Parquet's inner codec replaces) plus ``.parquet``, unless it ends with ``.parquet`` already."""
    base = file_name
    for suffix in COMPRESSED_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    if not base.endswith(PARQUET_SUFFIX):
        base += PARQUET_SUFFIX
    return safe_relative_path(base, PARQUET_SUFFIX)
