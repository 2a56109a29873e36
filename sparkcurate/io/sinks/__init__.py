"""Output formats by name (``--output-format``): add a format as one module here and one line in ``SINKS``."""

from __future__ import annotations

from sparkcurate.io.sinks.base import LAYOUTS, Sink
from sparkcurate.io.sinks.delta import DeltaSink
from sparkcurate.io.sinks.jsonl import JsonlSink
from sparkcurate.io.sinks.parquet import ParquetSink
from sparkcurate.io.sinks.table import TableSink

SINKS: dict[str, type[Sink]] = {
    JsonlSink.name: JsonlSink,
    ParquetSink.name: ParquetSink,
    DeltaSink.name: DeltaSink,
}


def get_sink(name: str, table: str | None = None) -> Sink:
    """The sink registered as ``name`` (a ``ValueError`` listing the known ones otherwise); with ``table``, the
    catalog table ``table`` written in that format (``--output-table``)."""
    if name not in SINKS:
        raise ValueError(f"unknown output format {name!r}; known: {', '.join(sorted(SINKS))}")
    if table is not None:
        return TableSink(table, name)
    return SINKS[name]()


__all__ = ["LAYOUTS", "SINKS", "Sink", "get_sink"]
