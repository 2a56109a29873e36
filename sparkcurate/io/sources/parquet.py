"""Parquet in (``--input-format parquet``): every ``.parquet`` file under the input, read with the schema its
footers declare (merged across files: a column only some files have is read, null elsewhere).

What it shares with every typed format (``file_name``, the text column check, ``text_missing`` /
``text_empty`` rejects, a corrupt file named in an ``InputError``): ``sparkcurate.io.sources.spark``.
"""

from __future__ import annotations

from typing import ClassVar

from sparkcurate.io.sources.spark import SparkFileSource


class ParquetSource(SparkFileSource):
    """Parquet files (any codec inside: snappy, zstd, gzip, ...); Spark splits them at row groups."""

    name: ClassVar[str] = "parquet"
    format: ClassVar[str] = "parquet"
    suffixes: ClassVar[tuple[str, ...]] = (".parquet", ".parq")
    label: ClassVar[str] = "Parquet"
    merge_schema: ClassVar[bool] = True
