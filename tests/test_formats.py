"""The format seams: an input format is one ``Source`` class plus one entry in ``SOURCES``, an output format one
``Sink`` class plus one entry in ``SINKS``; the job, the command line, rejects, counts and re-runs come with them.

The formats here are throwaway ones defined in the test (text lines in, CSV out), to show what a new format
file has to provide and nothing more.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import ClassVar

import pytest

from sparkcurate.io.listing import InputListing, point_reader, with_file_names
from sparkcurate.io.names import safe_relative_path
from sparkcurate.io.sinks import SINKS, Sink
from sparkcurate.io.sources import CORRUPT_COLUMN, REASON_COLUMN, SOURCES, Source
from sparkcurate.io.sources.base import text_reject_reason
from sparkcurate.pipeline import JobOptions, run
from tests.test_bad_input import LengthClassifier


class TextLinesSource(Source):
    """Every line of a ``.txt`` file is one document's text: all a new input format needs to write."""

    name: ClassVar[str] = "text-lines"
    suffixes: ClassVar[tuple[str, ...]] = (".txt",)
    label: ClassVar[str] = "text"

    def read(self, spark, listing: InputListing, text_field: str, file_name_column: str, schema=None,
             sampling_ratio: float = 1.0):
        from pyspark.sql import functions as F

        reader, paths = point_reader(spark.read, listing, self.suffixes)
        df = reader.text(paths).withColumnRenamed("value", text_field)
        df = df.withColumn(CORRUPT_COLUMN, F.lit(None).cast("string"))  # a text line always parses
        df = with_file_names(spark, df, listing, file_name_column)
        return df.withColumn(REASON_COLUMN, text_reject_reason(text_field))


class CsvSink(Sink):
    """CSV with a header, one Spark partition per input file: all a new output format needs to write."""

    name: ClassVar[str] = "csv-test"

    def write(self, df, out: str, layout: str, file_name_column: str, compression: str | None) -> None:
        if layout != "partitioned":
            raise ValueError("this test sink writes the partitioned layout only")
        (df.write.mode("overwrite").option("partitionOverwriteMode", "dynamic").option("header", "true")
         .partitionBy(file_name_column).csv(out))

    def mirror_name(self, file_name: str, compression: str | None) -> str:
        return safe_relative_path(file_name, ".csv")


@pytest.fixture
def registered(monkeypatch):
    """The one registration line per format, undone after the test."""
    monkeypatch.setitem(SOURCES, TextLinesSource.name, TextLinesSource)
    monkeypatch.setitem(SINKS, CsvSink.name, CsvSink)


def _kept_rows(out: Path) -> dict[str, list[str]]:
    """file_name -> texts, read back from the CSV partitions."""
    rows: dict[str, list[str]] = {}
    for part in sorted(out.glob("file_name=*/part-*.csv")):
        with part.open(newline="", encoding="utf-8") as fh:
            rows.setdefault(part.parent.name.split("=", 1)[1], []).extend(r["text"] for r in csv.DictReader(fh))
    return rows


def test_a_registered_source_and_sink_run_the_whole_job(spark, tmp_path, registered):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a long line of text\n\nshort\n   \n", encoding="utf-8")
    (src / "sub" / "b.txt").write_text("another long one\n", encoding="utf-8")
    (src / "notes.md").write_text("not a .txt file\n", encoding="utf-8")
    out = tmp_path / "out"
    opts = JobOptions(input=str(src), output=str(out), classifiers=[LengthClassifier(filter_by=["long"])],
                      input_format="text-lines", output_format="csv-test")

    summary = run(spark, opts)
    assert (summary["input_records"], summary["output_records"], summary["filtered_records"],
            summary["rejected_records"]) == (5, 2, 1, 2)
    assert summary["rejected_by_reason"] == {"text_empty": 2}  # the blank line and the whitespace-only one
    assert sorted(summary["by_file"]) == ["a.txt", "sub/b.txt"]
    assert summary["ignored_files"] == [{"file": "notes.md", "why": "not a text suffix (.txt)"}]
    assert _kept_rows(out) == {"a.txt": ["a long line of text"], "sub%2Fb.txt": ["another long one"]}
    assert (out / "_rejects").is_dir() and not (out / "_RUNNING.json").exists()

    # A re-run where sub/b.txt keeps nothing: the sink says where its old output is, and it is removed.
    (src / "sub" / "b.txt").write_text("tiny\n", encoding="utf-8")
    summary = run(spark, opts)
    assert summary["output_records"] == 1 and summary["filtered_records"] == 2
    assert _kept_rows(out) == {"a.txt": ["a long line of text"]}


def test_the_command_offers_the_registered_formats(registered):
    from sparkcurate.cli import build_parser

    base = ["classify", "--input", "in", "--output", "out", "--classifier", "domain"]
    args = build_parser().parse_args(base + ["--input-format", "text-lines", "--output-format", "csv-test"])
    assert (args.input_format, args.output_format) == ("text-lines", "csv-test")
    assert build_parser().parse_args(base).input_format == "jsonl"
    assert build_parser().parse_args(base).output_format is None  # jsonl, or parquet for --output-table
    with pytest.raises(SystemExit):
        build_parser().parse_args(base + ["--input-format", "no-such-format"])


def test_an_unknown_format_is_refused_by_name():
    from sparkcurate.io.sinks import get_sink
    from sparkcurate.io.sources import get_source

    with pytest.raises(ValueError, match=r"unknown input format 'xml'; known: .*jsonl.*, spark:<format>"):
        get_source("xml")
    with pytest.raises(ValueError, match="unknown output format 'x'; known: delta, jsonl, parquet"):
        get_sink("x")
