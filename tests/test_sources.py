"""Typed inputs through the whole job: Parquet, ORC, any Spark data source by name, and a catalog table.

What holds for JSONL holds for each: ``file_name`` relative to the input root (nested folders stay apart), a null
or blank text rejected with its reason, input = output + filtered + rejected, a re-run that gives the same
output; and what is special to typed inputs: the text column must be a string (an ``InputError`` naming it and
its type), and a corrupt file is an ``InputError`` naming it.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from sparkcurate.io.listing import InputError
from sparkcurate.io.sources import get_source
from sparkcurate.pipeline import JobOptions, run
from tests.test_bad_input import LengthClassifier


def _write(path: Path, fmt: str, columns: dict) -> Path:
    """One Parquet or ORC file with exactly these columns (pyarrow infers the types)."""
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(columns)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    else:
        import pyarrow.orc as orc

        orc.write_table(table, str(path))
    return path


def _output_records(out: Path) -> dict[str, list[dict]]:
    """file_name directory -> records (sorted), read back from the JSONL partitions."""
    found: dict[str, list[dict]] = {}
    for part in sorted(out.glob("file_name=*/part-*")):
        rows = [json.loads(line) for line in part.read_text(encoding="utf-8").splitlines() if line]
        found.setdefault(part.parent.name.split("=", 1)[1], []).extend(rows)
    return {k: sorted(v, key=lambda r: json.dumps(r, sort_keys=True)) for k, v in found.items()}


def _rejects(out: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for part in sorted((out / "_rejects").glob("part-*"))
            for line in part.read_text(encoding="utf-8").splitlines() if line]
    return sorted((r["reason"], r["file_name"]) for r in rows)


@pytest.mark.parametrize("fmt", ["parquet", "orc"])
def test_a_columnar_input_runs_the_whole_job(spark, tmp_path, fmt):
    src = tmp_path / "in"
    _write(src / f"a.{fmt}", fmt, {"id": [1, 2, 3, 4], "text": ["a long line of text", "short", None, "  \u200b "]})
    # A nested file with a column the other file lacks: read (null in a.*), and its file_name keeps the folder.
    _write(src / "sub" / f"b.{fmt}", fmt, {"id": [5], "text": ["another long one"], "score": [0.5]})
    (src / "notes.md").write_text("not an input file\n", encoding="utf-8")
    out = tmp_path / "out"
    opts = JobOptions(input=str(src), output=str(out), classifiers=[LengthClassifier(filter_by=["long"])],
                      input_format=fmt)

    summary = run(spark, opts)
    assert (summary["input_records"], summary["output_records"], summary["filtered_records"],
            summary["rejected_records"]) == (5, 2, 1, 2)
    assert summary["rejected_by_reason"] == {"text_empty": 1, "text_missing": 1}
    assert sorted(summary["by_file"]) == [f"a.{fmt}", f"sub/b.{fmt}"]
    assert summary["by_file"][f"a.{fmt}"]["rejected"] == 2
    assert summary["ignored_files"][0]["file"] == "notes.md"
    kept = _output_records(out)
    assert kept == {
        f"a.{fmt}": [{"id": 1, "text": "a long line of text", "score": None, "length_pred": "long"}],
        f"sub%2Fb.{fmt}": [{"id": 5, "text": "another long one", "score": 0.5, "length_pred": "long"}],
    }
    assert _rejects(out) == [("text_empty", f"a.{fmt}"), ("text_missing", f"a.{fmt}")]

    # Exactly once: a second run over the same input leaves the same output and the same counts.
    again = run(spark, opts)
    assert _output_records(out) == kept and _rejects(out) == [("text_empty", f"a.{fmt}"),
                                                              ("text_missing", f"a.{fmt}")]
    assert {k: again[k] for k in ("input_records", "output_records", "filtered_records", "rejected_records")} == \
        {k: summary[k] for k in ("input_records", "output_records", "filtered_records", "rejected_records")}


def _read(spark, fmt: str, path: Path, text_field: str = "text"):
    source = get_source(fmt)
    listing = source.list_files(spark, str(path))
    return source.read(spark, listing, text_field, "file_name"), listing


def test_a_non_string_text_column_is_named_with_its_type(spark, tmp_path):
    _write(tmp_path / "in" / "n.parquet", "parquet", {"text": [1, 2], "body": ["a", "b"]})
    with pytest.raises(InputError, match=r"text column 'text' of the Parquet input is bigint, not a string"):
        _read(spark, "parquet", tmp_path / "in")
    with pytest.raises(InputError, match=r"has no column 'content' \(its columns: text, body\)"):
        _read(spark, "parquet", tmp_path / "in", "content")
    _read(spark, "parquet", tmp_path / "in", "body")  # the string column reads


def test_a_non_string_text_column_exits_4(spark, tmp_path, deberta_dir):
    from sparkcurate.cli import EXIT_INPUT, main

    _write(tmp_path / "in" / "n.parquet", "parquet", {"text": [1.5]})
    assert main(["classify", "--input", str(tmp_path / "in"), "--input-format", "parquet", "--output",
                 str(tmp_path / "out"), "--classifier", f"domain={deberta_dir}", "--device", "cpu",
                 "--quiet"]) == EXIT_INPUT
    assert not list((tmp_path / "out").glob("file_name=*"))


def test_a_corrupt_parquet_file_is_named(spark, tmp_path):
    src = tmp_path / "in"
    _write(src / "good.parquet", "parquet", {"text": ["a long line of text"]})
    good = (src / "good.parquet").read_bytes()
    (src / "deep").mkdir()
    (src / "deep" / "cut.parquet").write_bytes(good[: len(good) // 2])  # truncated: no footer
    opts = JobOptions(input=str(src), output=str(tmp_path / "out"), classifiers=[LengthClassifier()],
                      input_format="parquet")
    with pytest.raises(InputError, match=r"input file \S*deep/cut\.parquet: it is not a valid parquet file"):
        run(spark, opts)


def test_hive_partition_folders_become_columns(spark, tmp_path):
    src = tmp_path / "in"
    _write(src / "lang=en" / "x.parquet", "parquet", {"text": ["hello there"]})
    _write(src / "lang=de" / "x.parquet", "parquet", {"text": ["guten tag"]})
    df, listing = _read(spark, "parquet", src)
    rows = sorted((r["lang"], r["file_name"], r["text"]) for r in df.collect())
    assert rows == [("de", "lang=de/x.parquet", "guten tag"), ("en", "lang=en/x.parquet", "hello there")]
    assert [f.file_name for f in listing.files] == ["lang=de/x.parquet", "lang=en/x.parquet"]


def test_any_spark_format_by_name(spark, tmp_path):
    data = tmp_path / "data"
    spark.createDataFrame([("first text",), ("second text",)], "text string").coalesce(1).write.parquet(str(data))
    df, listing = _read(spark, "spark:parquet", data)
    names = {r["file_name"] for r in df.collect()}
    assert names == {f.file_name for f in listing.files} and len(names) == 1
    assert next(iter(names)).startswith("part-") and listing.files[0].size > 0

    opts = JobOptions(input=str(data), output=str(tmp_path / "out"), classifiers=[LengthClassifier()],
                      input_format="spark:no_such_format")
    with pytest.raises(InputError, match="this Spark has no 'no_such_format' data source"):
        run(spark, opts)


@pytest.fixture
def database(spark, tmp_path):
    """A database of its own (the Spark session is shared by every test), under tmp_path, dropped after."""
    name = f"h20a_{uuid.uuid4().hex[:8]}"
    spark.sql(f"CREATE DATABASE {name} LOCATION '{tmp_path / 'warehouse'}'")
    yield name
    spark.sql(f"DROP DATABASE IF EXISTS {name} CASCADE")


def test_a_catalog_table_through_the_command(spark, tmp_path, database, deberta_dir):
    from sparkcurate.cli import EXIT_INPUT, EXIT_OK, main

    table = f"{database}.docs"
    location = tmp_path / "docs_table"
    spark.sql(f"CREATE TABLE {table} (id INT, text STRING, lang STRING) USING parquet PARTITIONED BY (lang) "
              f"LOCATION '{location}'")
    spark.sql(f"INSERT INTO {table} VALUES (1, 'The central bank raised interest rates again.', 'en'), "
              f"(2, NULL, 'en'), (3, 'Der Verein gewann das Spiel.', 'de'), (4, '', 'de')")
    out = tmp_path / "out"
    argv = ["classify", "--input-table", table, "--output", str(out), "--classifier", f"domain={deberta_dir}",
            "--device", "cpu", "--quiet", "--no-report"]
    assert main(argv) == EXIT_OK
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["input_records"] == 4 and summary["output_records"] == 2
    assert summary["rejected_by_reason"] == {"text_empty": 1, "text_missing": 1}
    # file_name is relative to the table's location: the partition folder and Spark's part file.
    names = sorted(summary["by_file"])
    assert len(names) == 2 and names[0].startswith("lang=de/part-") and names[1].startswith("lang=en/part-")
    assert summary["input_files"] == 2 and summary["input_bytes"] > 0
    first = _output_records(out)
    assert sorted(r["id"] for rows in first.values() for r in rows) == [1, 3]

    assert main(argv) == EXIT_OK  # exactly once: the same output again
    assert _output_records(out) == first

    assert main(["classify", "--input-table", f"{database}.nope", "--output", str(tmp_path / "o2"),
                 "--classifier", f"domain={deberta_dir}", "--device", "cpu", "--quiet"]) == EXIT_INPUT


def test_a_table_without_files_names_its_records_by_the_table(spark, tmp_path, database):
    view = f"v_{database}"
    spark.sql(f"CREATE OR REPLACE TEMPORARY VIEW {view} AS "
              "SELECT * FROM VALUES ('a long line of text'), (NULL) AS t(text)")
    try:
        opts = JobOptions(input=view, output=str(tmp_path / "out"), classifiers=[LengthClassifier()],
                          input_format="table")
        summary = run(spark, opts)
    finally:
        spark.catalog.dropTempView(view)
    assert summary["input_files"] == 0
    assert summary["by_file"] == {view: {"input": 2, "output": 1, "filtered": 0, "rejected": 1,
                                         "labels": summary["by_file"][view]["labels"]}}
    assert list(_output_records(tmp_path / "out")) == [view]
