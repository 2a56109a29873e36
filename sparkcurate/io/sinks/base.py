"""What an output format provides to the job (``sparkcurate.pipeline``): one small ``Sink`` class per format.

A sink writes the kept rows under OUT in one of the two layouts (``partitioned``: one Spark partition directory
per input file; ``mirror``: one output file per input file) and says where an input's output lives, so the job
can remove the earlier output of an input that keeps nothing this time (``sparkcurate.io.commit``). A new format
is a subclass in its own module plus one line in ``sparkcurate/io/sinks/__init__.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from sparkcurate.io.names import partition_dir_name

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

LAYOUTS = ("partitioned", "mirror")


class Sink:
    """One output format. Subclasses set ``name`` and implement ``write`` and ``mirror_name``."""

    name: ClassVar[str] = ""

    def write(self, df: "DataFrame", out: str, layout: str, file_name_column: str,
              compression: str | None) -> None:
        """Write ``df`` (the kept rows, ``file_name_column`` included) under ``out``; a re-run replaces only
        the inputs it writes."""
        raise NotImplementedError

    def mirror_name(self, file_name: str, compression: str | None) -> str:
        """The path, relative to OUT, of the ``mirror`` layout's output for input ``file_name``."""
        raise NotImplementedError

    def target(self, spark: "SparkSession", layout: str, file_name_column: str, file_name: str,
               compression: str | None) -> str:
        """Where the output of input ``file_name`` lives, relative to OUT, in ``layout``."""
        if layout == "partitioned":
            return partition_dir_name(spark, file_name_column, file_name)
        return self.mirror_name(file_name, compression)
