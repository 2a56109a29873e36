"""Avro in (``--input-format avro``): every ``.avro`` file under the input, read with the writer's schema.

Spark's Avro reader is a separate package (``org.apache.spark:spark-avro_2.13:<your Spark version>``, e.g.
``spark-submit --packages``); without it the run stops with an ``InputError`` saying so.
What it shares with every typed format: ``sparkcurate.io.sources.spark``.
"""

from __future__ import annotations

from typing import ClassVar

from sparkcurate.io.sources.spark import SparkFileSource


class AvroSource(SparkFileSource):
    """Avro container files; Spark splits them at sync markers."""

    name: ClassVar[str] = "avro"
    format: ClassVar[str] = "avro"
    suffixes: ClassVar[tuple[str, ...]] = (".avro",)
    label: ClassVar[str] = "Avro"
