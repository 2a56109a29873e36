"""What an output format provides to the job (``sparkcurate.pipeline``): one small ``Sink`` class per format.

A sink writes the kept rows under OUT in one of the two layouts (``partitioned``: one Spark partition directory
per input file; ``mirror``: one output file per input file) and says where an input's output lives, so the job
can remove the earlier output of an input that keeps nothing this time (``sparkcurate.io.commit``). A file sink
is handed a commit group's staging folder as ``out`` (``OUT/_staging/<run>/g<N>``), never OUT itself:
``sparkcurate.io.publish`` moves what it wrote into OUT at the end of the run. A new format is a subclass in its
own module plus one line in ``sparkcurate/io/sinks/__init__.py``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar, Iterable

from sparkcurate.io.names import partition_dir_name

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

LAYOUTS = ("partitioned", "mirror")
# The codecs Spark's text writers (JSON, CSV) take, and the ones a sink accepts unless it says otherwise.
TEXT_COMPRESSIONS = ("none", "gzip", "bzip2")


class Sink:
    """One output format. Subclasses set ``name`` and implement ``write`` and ``mirror_name``; a format whose
    codecs are not the text ones sets ``compressions`` (the first is its default, used when none is asked for),
    and one that cannot write every layout sets ``layouts``."""

    name: ClassVar[str] = ""
    compressions: ClassVar[tuple[str, ...]] = TEXT_COMPRESSIONS
    layouts: ClassVar[tuple[str, ...]] = LAYOUTS
    # What the output is, for messages and the summary ("OUT", or a table's name).
    where: str = "OUT"

    @property
    def format_name(self) -> str:
        """The file format written, for messages."""
        return self.name

    def check(self, layout: str, compression: str | None) -> None:
        """A ``ValueError`` naming the choices when this format cannot write ``layout`` or ``compression``:
        raised before anything is read, so a wrong option costs seconds, not a classified corpus."""
        if layout not in self.layouts:
            raise ValueError(f"--layout {layout} cannot be written as {self.format_name} to {self.where}; choose "
                             f"{' or '.join(self.layouts)}")
        if compression is not None and compression not in self.compressions:
            raise ValueError(f"--compression {compression} is not a {self.format_name} codec; choose one of "
                             f"{', '.join(self.compressions)} (default {self.compressions[0]})")

    def check_target(self, df: "DataFrame", file_name_column: str) -> None:
        """A ``ValueError`` when the output cannot take ``df``'s rows (a table of other columns): called with the
        output rows' (lazy, unclassified) frame before anything is classified. Files under OUT take anything."""

    def compression(self, compression: str | None) -> str:
        """The codec to write with: the one asked for, else the format's convention (``compressions[0]``)."""
        return compression or self.compressions[0]

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

    def table_version(self, spark: "SparkSession", out: str) -> int | None:
        """The table's version after the run (a Delta table's latest commit), for the summary: readers of the
        table's latest version see one version per commit group during a run; this one is the run's result.
        None for files (published in one step, ``io.publish``) and tables without versions."""
        return None

    def remove_outputs(self, spark: "SparkSession", out: str, layout: str, file_name_column: str,
                       file_names: Iterable[str], compression: str | None) -> None:
        """Remove the earlier output of inputs that keep nothing this time (Spark writes nothing for them, so a
        re-run would otherwise leave their old rows). Files under OUT by default; a table sink drops partitions."""
        from sparkcurate.io.fs import HadoopFS

        fs = HadoopFS(spark, out)
        for file_name in file_names:
            target = self.target(spark, layout, file_name_column, file_name, compression)
            if fs.exists(target):
                log.info("removing %s: %s keeps no record this time", target, file_name)
                fs.delete(target)
