"""ORC in (``--input-format orc``): every ``.orc`` file under the input, read with the schema its footers
declare (merged across files, as for Parquet).

What it shares with every typed format: ``sparkcurate.io.sources.spark``.
"""

from __future__ import annotations

from typing import ClassVar

from sparkcurate.io.sources.spark import SparkFileSource


class OrcSource(SparkFileSource):
    """ORC files (any codec inside); Spark splits them at stripes."""

    name: ClassVar[str] = "orc"
    format: ClassVar[str] = "orc"
    suffixes: ClassVar[tuple[str, ...]] = (".orc",)
    label: ClassVar[str] = "ORC"
    merge_schema: ClassVar[bool] = True
