"""Input formats by name (``--input-format``): add a format as one module here and one line in ``SOURCES``.

Any other Spark data source is read by name as ``spark:<format>`` (``spark:hudi``, ``spark:xml``): loaded with
``spark.read.format(<format>).load(--input)``.
"""

from __future__ import annotations

from sparkcurate.io.sources.avro import AvroSource
from sparkcurate.io.sources.base import CORRUPT_COLUMN, REASON_COLUMN, Source
from sparkcurate.io.sources.jsonl import JsonlSource
from sparkcurate.io.sources.orc import OrcSource
from sparkcurate.io.sources.parquet import ParquetSource
from sparkcurate.io.sources.spark import SPARK_PREFIX, DeltaSource, IcebergSource, spark_format_source
from sparkcurate.io.sources.table import TableSource

SOURCES: dict[str, type[Source]] = {
    JsonlSource.name: JsonlSource,
    ParquetSource.name: ParquetSource,
    OrcSource.name: OrcSource,
    AvroSource.name: AvroSource,
    DeltaSource.name: DeltaSource,
    IcebergSource.name: IcebergSource,
    TableSource.name: TableSource,
}


def get_source(name: str) -> Source:
    """The source registered as ``name``, or Spark's data source ``F`` for ``spark:F``; a ``ValueError`` listing
    the known ones otherwise."""
    if name.startswith(SPARK_PREFIX):
        return spark_format_source(name[len(SPARK_PREFIX):])()
    if name not in SOURCES:
        raise ValueError(f"unknown input format {name!r}; known: {', '.join(sorted(SOURCES))}, "
                         f"{SPARK_PREFIX}<format>")
    return SOURCES[name]()


class SourceNames:
    """What ``--input-format`` accepts (argparse ``choices``): the registered names and ``spark:<format>``."""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in SOURCES or (name.startswith(SPARK_PREFIX)
                                                              and len(name) > len(SPARK_PREFIX)))

    def __iter__(self):
        return iter([*sorted(SOURCES), f"{SPARK_PREFIX}<format>"])


SOURCE_NAMES = SourceNames()

__all__ = ["CORRUPT_COLUMN", "REASON_COLUMN", "SOURCES", "SOURCE_NAMES", "Source", "get_source"]
