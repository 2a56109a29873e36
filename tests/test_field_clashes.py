"""Input fields named like the job's own columns, and arguments that only the input's schema can refute
(issue 25, classes 3 and 9): a user's field is kept value for value, or the run refuses it by name with exit 2
(one line, nothing written); never a field silently dropped or a Java traceback."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from sparkcurate.cli import EXIT_OK, EXIT_USAGE, main
from tests.conftest import write_jsonl

# Fields whose names the job used (or uses) for its own columns: each must come out as it went in.
LOOKALIKES = {
    "_corrupt_record": ["not a corrupt line", "{broken", "third"],
    "_reject_reason": ["user's own reason", "", "text_missing"],
    "_sparkcurate_status": ["draft", "kept", "rejected"],
    "_source_path": [{"p": "/somewhere/else.jsonl"}, {"p": "x"}, {"p": "y"}],
    "__sparkcurate": [1, 2, 3],  # the namespace itself, without the trailing '_', is an ordinary name
    "reason": ["r", "s", "t"],  # the rejects' own top-level names: user fields live under `record`
    "line": ["l1", "l2", "l3"],
}


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _records_of(folder: Path) -> list[dict]:
    rows = []
    for part in sorted(folder.rglob("*")):
        if part.is_file() and not any(p.startswith(("_", ".")) for p in part.relative_to(folder).parts):
            rows.extend(json.loads(line) for line in part.read_text(encoding="utf-8").splitlines() if line)
    return rows


@pytest.mark.parametrize("layout", ["partitioned", "mirror"])
def test_fields_named_like_internal_columns_survive_value_for_value(spark, deberta_dir, tmp_path, layout):
    """Kept records hold every look-alike field with its value; a rejected one holds them in ``record``. Before
    the fix ``_corrupt_record``, ``_reject_reason``, ``_sparkcurate_status`` and ``_source_path`` were silently
    gone from both (and a record whose own ``_reject_reason`` said "text_missing" was still classified)."""
    texts = ["Stocks and bonds rallied as rates fell.", "The match ended in a late goal.", ""]
    records = [{"id": i, "text": t, **{k: v[i] for k, v in LOOKALIKES.items()}} for i, t in enumerate(texts)]
    write_jsonl(tmp_path / "in" / "a.jsonl", records, raw_lines=["{broken"])
    out = tmp_path / "out"
    code = main(["classify", "--input", str(tmp_path / "in"), "--output", str(out), "--classifier", "domain",
                 "--model", str(deberta_dir), "--device", "cpu", "--quiet", "--no-report", "--layout", layout])
    assert code == EXIT_OK
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["input_records"], summary["output_records"], summary["rejected_records"]) == (4, 2, 2)
    kept = {r["id"]: r for r in _records_of(out)}
    assert sorted(kept) == [0, 1]
    for i in (0, 1):
        assert {k: kept[i].get(k, "MISSING") for k in LOOKALIKES} == {k: v[i] for k, v in LOOKALIKES.items()}
    rejects = _records_of(out / "_rejects")
    [empty] = [r["record"] for r in rejects if r["reason"] == "text_empty"]
    assert {k: empty.get(k, "MISSING") for k in LOOKALIKES} == {k: v[2] for k, v in LOOKALIKES.items()}
    [broken] = [r for r in rejects if r["reason"] == "malformed_json"]
    assert broken["line"] == "{broken"
    assert not any(c.startswith("__sparkcurate_") for r in kept.values() for c in r)  # no internal column leaks


@pytest.mark.parametrize("field, extra, named", [
    ("__sparkcurate_status", [], "__sparkcurate_status"),  # the job's namespace: the status column itself
    ("__SparkCurate_corrupt_record", [], "__SparkCurate_corrupt_record"),  # any case (Spark ignores case)
    ("__sparkcurate_conf_domain", [], "__sparkcurate_conf_domain"),
    ("FILE_NAME", [], "FILE_NAME"),  # the file-name column, in another case (was: Java traceback, exit 1)
    ("src", ["--file-name-column", "src"], "src"),
    ("Domain_Pred", [], "Domain_Pred"),  # the default prediction column (was: exit 1, ValueError traceback)
    ("id", ["--pred-column", "id"], "--pred-column"),  # an existing field as the prediction column
    ("p", ["--prob-column", "p"], "--prob-column"),
])
def test_fields_the_job_would_overwrite_are_refused_by_name(spark, deberta_dir, tmp_path, caplog, field, extra,
                                                            named):
    """Exit 2, one line naming the field (and the option to change), before anything is classified; OUT is not
    created."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": 1, "text": "Stocks rallied.", field: "mine"},
                                              {"id": 2, "text": "A late goal.", "p": 0}])
    out = tmp_path / "out"
    caplog.set_level(logging.INFO)
    code = main(["classify", "--input", str(tmp_path / "in"), "--output", str(out), "--classifier", "domain",
                 "--model", str(deberta_dir), "--device", "cpu", "--quiet", "--no-report", *extra])
    assert code == EXIT_USAGE
    errors = _errors(caplog)
    assert len(errors) == 1 and "\n" not in errors[0] and repr(field) in errors[0] and named in errors[0], errors
    assert not out.exists()


def test_a_schema_naming_a_reserved_field_is_refused(spark, deberta_dir, tmp_path, caplog):
    """The fields of ``--schema`` are the input's fields too: one in the job's namespace is refused."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": "Stocks rallied."}])
    caplog.set_level(logging.INFO)
    code = main(["classify", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--classifier",
                 "domain", "--model", str(deberta_dir), "--device", "cpu", "--quiet", "--no-report",
                 "--schema", "text STRING, __sparkcurate_reject_reason STRING"])
    assert code == EXIT_USAGE
    errors = _errors(caplog)
    assert len(errors) == 1 and "__sparkcurate_reject_reason" in errors[0]
    assert not (tmp_path / "out").exists()


def test_every_internal_column_is_in_the_reserved_namespace():
    """The one rule the checks rely on: every column the job adds for itself starts with ``INTERNAL_PREFIX``."""
    from sparkcurate.io.listing import SOURCE_COLUMN
    from sparkcurate.io.sources.base import CORRUPT_COLUMN, INTERNAL_PREFIX, REASON_COLUMN, clashing_fields
    from sparkcurate.spark.outcome import STATUS_COLUMN
    from sparkcurate.spark.stage import CONFIDENCE_PREFIX

    for name in (CORRUPT_COLUMN, REASON_COLUMN, STATUS_COLUMN, SOURCE_COLUMN, CONFIDENCE_PREFIX):
        assert name.startswith(INTERNAL_PREFIX), name
    fields = ["_corrupt_record", "__SPARKCURATE_x", "File_Name", "text", "__sparkcurate"]
    assert clashing_fields(fields, ["file_name"]) == ["__SPARKCURATE_x", "File_Name"]


# ------------------------------------------------------------------------------------------------------------
# Arguments refuted before any data is read (class 9)
# ------------------------------------------------------------------------------------------------------------

def _no_spark(monkeypatch):
    import sparkcurate.spark.session

    def no_spark(*_args, **_kwargs):
        raise AssertionError("Spark must not start")

    monkeypatch.setattr(sparkcurate.spark.session, "get_session", no_spark)


@pytest.mark.parametrize("text_field", ["a.b", "`a`", "a.b.c", "file_name", "__sparkcurate_text"])
def test_nested_or_reserved_text_field_is_a_usage_error_before_spark(tmp_path, monkeypatch, caplog, text_field):
    """``--text-field a.b`` on nested records once ran into a 200-line Java ArrayIndexOutOfBoundsException: the
    text must be a top-level field, refused in one line before Spark starts."""
    _no_spark(monkeypatch)
    write_jsonl(tmp_path / "in" / "n.jsonl", [{"a": {"b": "nested text"}, "id": 1}])
    code = main(["classify", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--classifier",
                 "zero-shot", "--text-field", text_field])
    assert code == EXIT_USAGE
    errors = _errors(caplog)
    assert len(errors) == 1 and "--text-field" in errors[0] and "\n" not in errors[0]
    assert not (tmp_path / "out").exists()


def test_read_jsonl_refuses_a_nested_text_field(spark, tmp_path):
    """The Python API says the same, in a line, instead of Spark's failure deep in the stage."""
    from sparkcurate.io.sources.base import UsageError
    from sparkcurate.io.sources.jsonl import read_jsonl

    path = write_jsonl(tmp_path / "n.jsonl", [{"a": {"b": "nested text"}}])
    with pytest.raises(UsageError, match="top-level"):
        read_jsonl(spark, str(path), text_field="a.b")


@pytest.mark.parametrize("schema", ["text strin,, g", "a b c", "int", "text STRING,"])
def test_malformed_schema_is_a_usage_error_before_reading(spark, deberta_dir, tmp_path, monkeypatch, caplog,
                                                          schema):
    """A ``--schema`` Spark cannot parse (or that is no list of fields): exit 2, one line (Spark's message spans
    several with a caret diagram), before the job starts: no input read, no OUT."""
    import sparkcurate.pipeline

    def no_run(*_args, **_kwargs):
        raise AssertionError("the job must not start")

    monkeypatch.setattr(sparkcurate.pipeline, "run", no_run)
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": "Stocks rallied."}])
    code = main(["classify", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--classifier",
                 "domain", "--model", str(deberta_dir), "--device", "cpu", "--quiet", "--schema", schema])
    assert code == EXIT_USAGE
    errors = _errors(caplog)
    assert len(errors) == 1 and "--schema" in errors[0] and "\n" not in errors[0], errors
    assert not (tmp_path / "out").exists()


def test_typed_input_columns_are_kept_or_refused_the_same_way(spark, deberta_dir, tmp_path, caplog):
    """A Parquet input goes through the same check: ``_corrupt_record`` and ``_reject_reason`` columns come out
    as they went in; a ``File_Name`` column is refused with exit 2 (it was an ``InputError`` only for the exact
    spelling, and a column called ``_reject_reason`` was refused as if it were the job's)."""
    rows = [(1, "Stocks and bonds rallied.", "mine", "my reason"), (2, "A late goal.", "also mine", "")]
    df = spark.createDataFrame(rows, "id long, text string, _corrupt_record string, _reject_reason string")
    df.coalesce(1).write.parquet(str(tmp_path / "in"))
    common = ["--classifier", "domain", "--model", str(deberta_dir), "--device", "cpu", "--quiet", "--no-report",
              "--input-format", "parquet"]
    out = tmp_path / "out"
    assert main(["classify", "--input", str(tmp_path / "in"), "--output", str(out), *common]) == EXIT_OK
    kept = {r["id"]: (r["_corrupt_record"], r["_reject_reason"]) for r in _records_of(out)}
    assert kept == {1: ("mine", "my reason"), 2: ("also mine", "")}
    df.withColumnRenamed("id", "File_Name").write.parquet(str(tmp_path / "in2"))
    caplog.set_level(logging.INFO)
    assert main(["classify", "--input", str(tmp_path / "in2"), "--output", str(tmp_path / "out2"), *common]) == \
        EXIT_USAGE
    errors = _errors(caplog)
    assert len(errors) == 1 and "'File_Name'" in errors[0]
    assert not (tmp_path / "out2").exists()
