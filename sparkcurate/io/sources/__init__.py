"""Input formats by name (``--input-format``): add a format as one module here and one line in ``SOURCES``."""

from __future__ import annotations

from sparkcurate.io.sources.base import CORRUPT_COLUMN, REASON_COLUMN, Source
from sparkcurate.io.sources.jsonl import JsonlSource

SOURCES: dict[str, type[Source]] = {
    JsonlSource.name: JsonlSource,
}


def get_source(name: str) -> Source:
    """The source registered as ``name``; a ``ValueError`` listing the known ones otherwise."""
    if name not in SOURCES:
        raise ValueError(f"unknown input format {name!r}; known: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]()


__all__ = ["CORRUPT_COLUMN", "REASON_COLUMN", "SOURCES", "Source", "get_source"]
