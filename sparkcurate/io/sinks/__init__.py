"""Output formats by name (``--output-format``): add a format as one module here and one line in ``SINKS``."""

from __future__ import annotations

from sparkcurate.io.sinks.base import LAYOUTS, Sink
from sparkcurate.io.sinks.jsonl import JsonlSink

SINKS: dict[str, type[Sink]] = {
    JsonlSink.name: JsonlSink,
}


def get_sink(name: str) -> Sink:
    """The sink registered as ``name``; a ``ValueError`` listing the known ones otherwise."""
    if name not in SINKS:
        raise ValueError(f"unknown output format {name!r}; known: {', '.join(sorted(SINKS))}")
    return SINKS[name]()


__all__ = ["LAYOUTS", "SINKS", "Sink", "get_sink"]
