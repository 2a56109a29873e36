"""Output formats other than JSONL: Parquet files (partitioned and mirror) and catalog tables (``--output-table``).

What holds for JSONL holds here: input = output + filtered + rejected, rejects in ``OUT/_rejects``, the summary in
``OUT``, and re-runs that replace only what they rewrite. Parquet keeps the input's column types. Delta Lake needs
its jars and runs in its own session: tests/test_delta.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparkcurate.io.failures import InputError
from sparkcurate.pipeline import JobOptions, run
from tests.conftest import write_jsonl
from tests.test_bad_input import LengthClassifier

# Explicit JSONL schema: ints, a nested struct with an array, a double. Inference would make every int a bigint.
SCHEMA = "id INT, text STRING, meta STRUCT<source: STRING, tags: ARRAY<STRING>, depth: SMALLINT>, score DOUBLE"


def _record(i: int, text: str) -> dict:
    return {"id": i, "text": text, "meta": {"source": f"s{i % 2}", "tags": ["x", str(i)], "depth": i},
            "score": i / 4}


@pytest.fixture
def typed_input(tmp_path) -> Path:
    """a.jsonl: 2 long texts + 1 short; sub/b.jsonl: 1 long + 1 rejected (no text)."""
    src = tmp_path / "in"
    write_jsonl(src / "a.jsonl", [_record(1, "a long text"), _record(2, "tiny"), _record(3, "another long one")])
    write_jsonl(src / "sub" / "b.jsonl", [_record(4, "long enough"), {"id": 5, "meta": None, "score": 1.0}])
    return src


def _opts(src: Path, out: Path, **kw) -> JobOptions:
    kw.setdefault("output_format", "parquet")
    kw.setdefault("report", False)
    return JobOptions(input=str(src), output=str(out), classifiers=[LengthClassifier(filter_by=["long"])],
                      schema=SCHEMA, quiet=True, **kw)


def _rows(df) -> dict[int, dict]:
    return {r["id"]: r.asDict(recursive=True) for r in df.collect()}


def test_parquet_partitioned_keeps_the_input_types(spark, typed_input, tmp_path):
    from pyspark.sql import types as T

    out = tmp_path / "out"
    summary = run(spark, _opts(typed_input, out, report=True))
    assert (summary["input_records"], summary["output_records"], summary["filtered_records"],
            summary["rejected_records"]) == (5, 3, 1, 1)
    assert summary["rejected_by_reason"] == {"text_missing": 1}
    assert (out / "_rejects").is_dir() and (out / "_summary.json").is_file()
    assert (out / "_report" / "index.html").is_file()
    [reject] = [json.loads(line) for f in (out / "_rejects").glob("part-*") for line in f.read_text().splitlines()]
    assert (reject["reason"], reject["file_name"], reject["record"]["id"]) == ("text_missing", "sub/b.jsonl", 5)

    df = spark.read.parquet(str(out))
    types = {f.name: f.dataType for f in df.schema.fields}
    assert types["id"] == T.IntegerType()
    assert types["meta"] == T.StructType([T.StructField("source", T.StringType()),
                                          T.StructField("tags", T.ArrayType(T.StringType())),
                                          T.StructField("depth", T.ShortType())])
    assert types["score"] == T.DoubleType() and types["length_pred"] == T.StringType()
    rows = _rows(df)
    assert sorted(rows) == [1, 3, 4]
    assert rows[4]["meta"] == {"source": "s0", "tags": ["x", "4"], "depth": 4} and rows[4]["score"] == 1.0
    assert {rows[i]["file_name"] for i in rows} == {"a.jsonl", "sub/b.jsonl"}
    # Parquet's convention: snappy inside the files when no --compression is given.
    assert all(p.name.endswith(".snappy.parquet") for p in out.glob("file_name=*/part-*"))


def test_parquet_reruns_replace_only_what_they_rewrite(spark, typed_input, tmp_path):
    out = tmp_path / "out"
    run(spark, _opts(typed_input, out))
    # Second run: a.jsonl keeps nothing now (its old partition must go), sub/b.jsonl changes (replaced) ...
    write_jsonl(typed_input / "a.jsonl", [_record(1, "tiny")])
    write_jsonl(typed_input / "sub" / "b.jsonl", [_record(6, "new long text")])
    run(spark, _opts(typed_input, out))
    assert sorted(_rows(spark.read.parquet(str(out)))) == [6]
    assert not list(out.glob("file_name=a.jsonl"))
    # ... and an input that is not part of a run loses its earlier output: OUT holds exactly what the run's
    # summary counts (issue 25, class 7; OUT/_manifest.json says what sparkcurate wrote there).
    other = tmp_path / "other"
    write_jsonl(other / "c.jsonl", [_record(7, "seventh long text")])
    summary = run(spark, _opts(other, out))
    assert sorted(_rows(spark.read.parquet(str(out)))) == [7] and summary["output_records"] == 1


def test_parquet_mirror_one_file_per_input_with_the_asked_codec(spark, typed_input, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    run(spark, _opts(typed_input, out, layout="mirror", compression="zstd"))
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet"))
    assert files == ["a.jsonl.parquet", "sub/b.jsonl.parquet"]
    assert sorted(_rows(spark.read.parquet(str(out / "a.jsonl.parquet")))) == [1, 3]
    meta = pq.ParquetFile(out / "sub" / "b.jsonl.parquet").metadata
    assert meta.num_rows == 1 and meta.row_group(0).column(0).compression == "ZSTD"
    assert not (out / "_staging").exists()
    # A re-run where a.jsonl keeps nothing removes its file (the sink names where it lives).
    write_jsonl(typed_input / "a.jsonl", [_record(1, "tiny")])
    run(spark, _opts(typed_input, out, layout="mirror", compression="zstd"))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet")) == ["sub/b.jsonl.parquet"]


def test_parquet_mirror_names():
    from sparkcurate.io.sinks.parquet import parquet_mirror_name

    assert parquet_mirror_name("a/b.jsonl") == "a/b.jsonl.parquet"
    assert parquet_mirror_name("a/b.jsonl.gz") == "a/b.jsonl.parquet"  # the codec is inside the Parquet file
    assert parquet_mirror_name("part-0.parquet") == "part-0.parquet"
    assert parquet_mirror_name("x.json") != parquet_mirror_name("x.jsonl")
    assert ".." not in parquet_mirror_name("../../etc/x.orc").split("/")  # stays inside OUT


def test_two_inputs_on_one_mirror_name_fail_before_anything_moves(spark, tmp_path):
    src = tmp_path / "in"
    write_jsonl(src / "x.jsonl", [_record(1, "a long text")])
    (src / "x.jsonl.gz").write_bytes(__import__("gzip").compress(json.dumps(_record(2, "long too")).encode()))
    out = tmp_path / "out"
    # refused after listing, before anything is read (issue 25, class 1), naming both inputs
    with pytest.raises(InputError, match="'x.jsonl' and 'x.jsonl.gz' would both be written to OUT/x.jsonl.parquet"):
        run(spark, _opts(src, out, layout="mirror"))
    assert not list(out.rglob("*.parquet"))


@pytest.mark.parametrize("argv, message", [
    (["--output-format", "parquet", "--compression", "bzip2"], "--compression bzip2 is not a parquet codec"),
    (["--compression", "snappy"], "--compression snappy is not a jsonl codec"),
    (["--output-format", "delta", "--layout", "mirror"], "--layout mirror cannot be written as delta"),
    (["--output-table", "db.t", "--layout", "mirror"], "--layout mirror cannot be written as parquet to table db.t"),
    (["--output-table", "db.t", "--output-format", "jsonl"], "written as parquet or delta, not jsonl"),
    (["--output-table", "db.t; DROP TABLE x"], "is not a table name"),
])
def test_output_options_that_do_not_fit_the_format_are_usage_errors(argv, message, tmp_path, caplog):
    from sparkcurate.cli import EXIT_USAGE, main

    code = main(["classify", "--input", str(tmp_path), "--output", str(tmp_path / "out"), "--classifier", "domain",
                 *argv])
    assert code == EXIT_USAGE
    assert message in caplog.text
    assert not (tmp_path / "out").exists()  # refused before Spark starts, nothing written


def test_the_jsonl_codecs_still_work_from_the_command_line():
    from sparkcurate.cli import build_parser, check_output_options

    def resolved(*argv: str) -> tuple[str, str | None]:
        base = ["classify", "--input", "in", "--output", "out", "--classifier", "domain"]
        return check_output_options(build_parser().parse_args(base + list(argv)))

    assert resolved("--compression", "bzip2") == ("jsonl", "bzip2")
    assert resolved("--compression", "none") == ("jsonl", None)  # None: the format's default, as the job takes it
    assert resolved("--output-table", "t") == ("parquet", None)
    assert resolved("--output-format", "parquet", "--compression", "zstd") == ("parquet", "zstd")
    assert resolved("--output-format", "parquet", "--compression", "none") == ("parquet", "none")


def test_parquet_input_keeps_its_types(spark, tmp_path):
    """Parquet in, Parquet out: the column types are the input file's own (needs the parquet source)."""
    from sparkcurate.io.sources import SOURCES

    if "parquet" not in SOURCES:
        pytest.skip("the parquet input source is not registered yet")
    src = tmp_path / "in"
    src.mkdir()
    df = spark.createDataFrame([_record(1, "a long text"), _record(2, "tiny")], SCHEMA)
    df.coalesce(1).write.parquet(str(src / "p"))
    out = tmp_path / "out"
    run(spark, JobOptions(input=str(src), output=str(out), classifiers=[LengthClassifier(filter_by=["long"])],
                          input_format="parquet", output_format="parquet", report=False, quiet=True))
    written = spark.read.parquet(str(out))
    assert {f.name: f.dataType for f in written.schema.fields if f.name in df.columns} == \
        {f.name: f.dataType for f in df.schema.fields}
    assert sorted(_rows(written)) == [1]


# ---------------------------------------------------------------------------------------------------------------
# Catalog tables (the session's in-memory catalog; the database lives under tmp_path)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def database(spark, tmp_path):
    name = "sc_test_outputs"
    spark.sql(f"CREATE DATABASE {name} LOCATION '{(tmp_path / 'warehouse').as_posix()}'")
    yield name
    spark.sql(f"DROP DATABASE IF EXISTS {name} CASCADE")


def test_table_output_dynamic_partition_overwrite(spark, typed_input, tmp_path, database):
    table = f"{database}.kept"
    out = tmp_path / "run"
    summary = run(spark, _opts(typed_input, out, output_table=table))
    assert (summary["output_records"], summary["rejected_records"]) == (3, 1)
    assert (summary["output_format"], summary["output_table"]) == ("parquet", table)
    assert (out / "_summary.json").is_file() and (out / "_rejects").is_dir()
    assert not list(out.glob("file_name=*"))  # the rows are in the table, not under OUT
    partitions = [c.name for c in spark.catalog.listColumns(table) if c.isPartition]
    assert partitions == ["file_name"]
    first = _rows(spark.table(table))
    assert sorted(first) == [1, 3, 4] and first[4]["meta"]["tags"] == ["x", "4"]

    # Re-run: a.jsonl keeps nothing (its partition is dropped), sub/b.jsonl is replaced; another run's input
    # (c.jsonl) is not touched by a run that does not read it.
    other = tmp_path / "other"
    write_jsonl(other / "c.jsonl", [_record(7, "seventh long text")])
    run(spark, _opts(other, tmp_path / "run-other", output_table=table))
    write_jsonl(typed_input / "a.jsonl", [_record(1, "tiny")])
    write_jsonl(typed_input / "sub" / "b.jsonl", [_record(6, "new long text")])
    run(spark, _opts(typed_input, out, output_table=table))
    assert sorted(_rows(spark.table(table))) == [6, 7]
    parts = {r[0] for r in spark.sql(f"SHOW PARTITIONS {table}").collect()}
    assert parts == {"file_name=c.jsonl", "file_name=sub%2Fb.jsonl"}


def test_a_table_that_cannot_take_the_rows_is_refused_before_classifying(spark, typed_input, tmp_path, database):
    table = f"{database}.other_shape"
    spark.sql(f"CREATE TABLE {table} (id INT, text STRING, file_name STRING) USING parquet PARTITIONED BY (file_name)")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"does not match this run's columns .*'length_pred'"):
        run(spark, _opts(typed_input, out, output_table=table))
    assert spark.table(table).count() == 0
    assert not (out / "_RUNNING.json").exists() and not (out / "_summary.json").exists()  # OUT as it was
