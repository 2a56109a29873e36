"""Delta Lake for real: the command writes a Delta table at OUT (``--output-format delta``) and a Delta catalog
table (``--output-table``), re-runs replace only the partitions they rewrite, and Delta's own log says so; it
reads a Delta table (``--input-format delta``) and a Delta catalog table (``--input-table``) into both.

Delta needs its jars in the JVM and two static session settings, so the job runs in its own Python process (one
session for the whole scenario, the command's ``main`` called once per run) with ``spark.jars`` from
``SPARKCURATE_DELTA_JARS`` (``scripts/fetch-jars.sh`` prints it). Without it the test is skipped, unless
``SPARKCURATE_REQUIRE_DELTA=1`` (CI) makes that a failure. Delta releases follow Spark's: CI runs this under
pyspark 3.5 with delta-spark 3.3 (.ci/run); no Delta release supports pyspark 4.3 yet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, write_jsonl

SCHEMA = "id INT, text STRING, meta STRUCT<source: STRING, depth: SMALLINT>"
DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def _record(i: int, text: str | None) -> dict:
    out: dict[str, Any] = {"id": i, "meta": {"source": "web", "depth": i}}
    if text is not None:
        out["text"] = text
    return out


def _delta_jars() -> str:
    jars = os.environ.get("SPARKCURATE_DELTA_JARS", "")
    if not jars:
        why = "Delta Lake's jars are not given (SPARKCURATE_DELTA_JARS; scripts/fetch-jars.sh prints them)"
        if os.environ.get("SPARKCURATE_REQUIRE_DELTA") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return jars


# ---------------------------------------------------------------------------------------------------------------
# The scenario, run in the child process: returns what it saw, the test asserts
# ---------------------------------------------------------------------------------------------------------------


def _classify(*args: str, schema: str | None = SCHEMA) -> dict:
    """One ``sparkcurate classify`` through the command's own ``main``; returns the run's summary."""
    from sparkcurate.cli import EXIT_OK, main

    out = args[args.index("--output") + 1]
    code = main(["classify", "--classifier", "length", "--filter-by", "long", "--quiet", "--no-report",
                 *(["--schema", schema] if schema else []), *args])
    assert code == EXIT_OK, f"sparkcurate classify {args} exited {code}"
    return json.loads(Path(out, "_summary.json").read_text())


def _history(spark, table: str) -> list[dict]:
    rows = spark.sql(f"DESCRIBE HISTORY {table}").orderBy("version").collect()
    return [{"version": r["version"], "operation": r["operation"],
             "parameters": dict(r["operationParameters"] or {}),
             "metrics": dict(r["operationMetrics"] or {})} for r in rows]


def _ids(df) -> list[list]:
    return sorted([r["id"], r["file_name"]] for r in df.select("id", "file_name").collect())


def log_partitions(table_dir: str) -> list[dict[str, list[str]]]:
    """Per Delta commit (version order), the partitions (file_name values) whose files it added and removed,
    read from the table's own ``_delta_log``."""
    from urllib.parse import urlparse

    log_dir = Path(urlparse(table_dir).path if table_dir.startswith("file:") else table_dir) / "_delta_log"
    commits = []
    for path in sorted(log_dir.glob("*.json")):
        seen: dict[str, set[str]] = {"add": set(), "remove": set()}
        for line in path.read_text().splitlines():
            action = json.loads(line)
            for kind in seen:
                if kind in action:
                    seen[kind].add(action[kind]["partitionValues"]["file_name"])
        commits.append({k: sorted(v) for k, v in seen.items()})
    return commits


def delta_scenario(work: str, jars: str) -> dict:
    """Every run of the test, in one JVM; the observations as plain data."""
    from sparkcurate.classifiers import registry
    from tests.test_bad_input import LengthClassifier

    registry.REGISTRY["length"] = LengthClassifier  # a rule, no model: this process only
    root = Path(work)
    conf = {"spark.jars": jars, "spark.sql.warehouse.dir": str(root / "warehouse"),
            "spark.sql.shuffle.partitions": "2", "spark.ui.enabled": "false", **DELTA_CONF}
    # The session is started here, as a notebook or spark-submit would: the command then uses it and leaves it
    # running, so the in-memory catalog keeps its tables from one run to the next.
    from sparkcurate.spark.session import get_session

    spark = get_session("local[2]", conf)
    seen: dict[str, Any] = {}

    # Delta table at OUT: first run, an identical re-run, another input into the same table, then a re-run
    # where a.jsonl keeps nothing and sub/b.jsonl changes.
    src, other, out = root / "in", root / "other", root / "out"
    write_jsonl(src / "a.jsonl", [_record(1, "a long text"), _record(2, "tiny"), _record(3, "another long one")])
    write_jsonl(src / "sub" / "b.jsonl", [_record(4, "long enough"), _record(5, None)])
    write_jsonl(other / "c.jsonl", [_record(7, "seventh long text")])
    seen["summary"] = _classify("--input", str(src), "--output", str(out), "--output-format", "delta")
    path_table = f"delta.`{out}`"
    seen["first"] = _ids(spark.read.format("delta").load(str(out)))
    seen["types"] = {f.name: f.dataType.simpleString() for f in spark.read.format("delta").load(str(out)).schema}
    _classify("--input", str(src), "--output", str(out), "--output-format", "delta")
    seen["rerun"] = _ids(spark.read.format("delta").load(str(out)))
    _classify("--input", str(other), "--output", str(out), "--output-format", "delta")
    seen["with_other"] = _ids(spark.read.format("delta").load(str(out)))
    write_jsonl(src / "a.jsonl", [_record(1, "tiny")])
    write_jsonl(src / "sub" / "b.jsonl", [_record(6, "new long text")])
    seen["changed_summary"] = _classify("--input", str(src), "--output", str(out), "--output-format", "delta")
    seen["changed"] = _ids(spark.read.format("delta").load(str(out)))
    seen["history"] = _history(spark, path_table)
    seen["out_entries"] = sorted(p.name for p in out.iterdir())

    # A Delta catalog table in the session's warehouse: created, then re-run where b.jsonl keeps nothing.
    tsrc = root / "tin"
    write_jsonl(tsrc / "a.jsonl", [_record(1, "a long text"), _record(2, "tiny")])
    write_jsonl(tsrc / "b.jsonl", [_record(4, "long enough")])
    table_args = ["--output-table", "default.kept", "--output-format", "delta"]
    seen["table_summary"] = _classify("--input", str(tsrc), "--output", str(root / "run"), *table_args)
    seen["table_first"] = _ids(spark.table("default.kept"))
    write_jsonl(tsrc / "b.jsonl", [_record(4, "tiny")])
    _classify("--input", str(tsrc), "--output", str(root / "run"), *table_args)
    seen["table_changed"] = _ids(spark.table("default.kept"))
    seen["table_history"] = _history(spark, "default.kept")
    seen["table_provider"] = [r[1] for r in spark.sql("DESCRIBE TABLE EXTENDED default.kept").collect()
                              if r[0] == "Provider"]
    seen["table_location"] = spark.sql("DESCRIBE DETAIL default.kept").first()["location"]
    seen["out"] = str(out)

    # Delta in: a Delta table (typed columns, two data files) classified into a Delta table, twice; then the same
    # table registered in the catalog, read with --input-table into another catalog table.
    docs = root / "docs"
    rows = [_record(10, "a long text"), _record(11, "tiny"), _record(12, None), _record(13, "long again")]
    (spark.createDataFrame(rows, SCHEMA).repartition(2, "id").write.format("delta").save(str(docs)))
    read_args = ["--input", str(docs), "--input-format", "delta", "--output-format", "delta"]
    seen["delta_in_summary"] = _classify(*read_args, "--output", str(root / "from-delta"), schema=None)
    seen["delta_in"] = _ids(spark.read.format("delta").load(str(root / "from-delta")))
    seen["delta_in_types"] = {f.name: f.dataType.simpleString()
                              for f in spark.read.format("delta").load(str(root / "from-delta")).schema}
    _classify(*read_args, "--output", str(root / "from-delta"), schema=None)
    seen["delta_in_rerun"] = _ids(spark.read.format("delta").load(str(root / "from-delta")))
    seen["delta_in_history"] = [h["operation"] for h in _history(spark, f"delta.`{root / 'from-delta'}`")]
    spark.sql(f"CREATE TABLE default.docs USING delta LOCATION '{docs}'")
    seen["table_in_summary"] = _classify("--input-table", "default.docs", "--output", str(root / "run-docs"),
                                         "--output-table", "default.docs_kept", "--output-format", "delta",
                                         schema=None)
    seen["table_in"] = sorted(r["id"] for r in spark.table("default.docs_kept").collect())
    spark.stop()
    return seen


@pytest.fixture(scope="module")
def delta_run(tmp_path_factory) -> dict:
    jars = _delta_jars()
    work = tmp_path_factory.mktemp("delta")
    code = ("import json, sys; from tests.test_delta import delta_scenario; "
            "print('SEEN ' + json.dumps(delta_scenario(sys.argv[1], sys.argv[2])))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, str(work), jars], capture_output=True, text=True,
                          timeout=900, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-6000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("SEEN ")][-1]
    return {**json.loads(line[len("SEEN "):]), "work": str(work)}


@pytest.mark.slow
def test_delta_output_counts_and_types(delta_run):
    s = delta_run["summary"]
    assert (s["input_records"], s["output_records"], s["filtered_records"], s["rejected_records"]) == (5, 3, 1, 1)
    assert s["rejected_by_reason"] == {"text_missing": 1}
    assert delta_run["first"] == [[1, "a.jsonl"], [3, "a.jsonl"], [4, "sub/b.jsonl"]]
    assert delta_run["types"]["id"] == "int" and delta_run["types"]["meta"] == "struct<source:string,depth:smallint>"
    # The run's own files sit beside the Delta log.
    assert {"_delta_log", "_rejects", "_summary.json"} <= set(delta_run["out_entries"])
    assert "_RUNNING.json" not in delta_run["out_entries"]


@pytest.mark.slow
def test_delta_reruns_hold_exactly_their_inputs(delta_run):
    assert delta_run["rerun"] == delta_run["first"]  # idempotent
    # OUT holds exactly what its last summary counts (docs/reliability.md): another input into the same OUT
    # replaces the inputs the previous run held and this one does not read.
    assert delta_run["with_other"] == [[7, "c.jsonl"]]
    # a.jsonl keeps nothing (and was already dropped); sub/b.jsonl is written again; c.jsonl (not read) goes.
    assert delta_run["changed"] == [[6, "sub/b.jsonl"]]
    history = delta_run["history"]
    # The identical re-run reused every unit (resume: same files, same options): it committed nothing.
    assert [h["operation"] for h in history] == ["WRITE", "WRITE", "DELETE", "WRITE", "DELETE"]
    # the summary records the table's version after the run (readers of the latest version saw one per group)
    assert delta_run["summary"]["table_version"] == 0
    assert delta_run["changed_summary"]["table_version"] == history[-1]["version"] == 4
    assert all(history[i]["parameters"]["mode"] == "Overwrite" for i in (0, 1, 3))
    # Delta's log: each write replaced the partitions it wrote, and only those; each DELETE dropped the inputs the
    # previous run held and this one did not.
    both = ["a.jsonl", "sub/b.jsonl"]
    assert log_partitions(delta_run["out"]) == [
        {"add": both, "remove": []},                      # first run (the identical re-run: nothing to commit)
        {"add": ["c.jsonl"], "remove": []},               # another input: its partition written ...
        {"add": [], "remove": both},                      # ... then the earlier inputs' rows deleted
        {"add": ["sub/b.jsonl"], "remove": []},           # changed: b written (a keeps nothing) ...
        {"add": [], "remove": ["c.jsonl"]},               # ... and c's rows deleted
    ]


@pytest.mark.slow
def test_delta_catalog_table(delta_run):
    s = delta_run["table_summary"]
    assert (s["input_records"], s["output_records"], s["filtered_records"]) == (3, 2, 1)
    assert delta_run["table_provider"] == ["delta"]
    assert delta_run["table_location"].endswith("/warehouse/kept")  # the warehouse under the test's folder
    assert delta_run["table_first"] == [[1, "a.jsonl"], [4, "b.jsonl"]]
    assert delta_run["table_changed"] == [[1, "a.jsonl"]]
    ops = [h["operation"] for h in delta_run["table_history"]]
    assert ops[0] in ("CREATE TABLE AS SELECT", "CREATE OR REPLACE TABLE AS SELECT")
    # The re-run: a.jsonl is unchanged (its unit reused, not rewritten); b.jsonl now keeps nothing: its rows deleted.
    assert ops[1:] == ["DELETE"]
    assert s["table_version"] == 0
    assert log_partitions(delta_run["table_location"]) == [
        {"add": ["a.jsonl", "b.jsonl"], "remove": []},
        {"add": [], "remove": ["b.jsonl"]},
    ]


@pytest.mark.slow
def test_delta_input_classified_into_delta_and_tables(delta_run):
    s = delta_run["delta_in_summary"]
    assert (s["input_records"], s["output_records"], s["filtered_records"], s["rejected_records"]) == (4, 2, 1, 1)
    assert s["rejected_by_reason"] == {"text_missing": 1}
    ids = delta_run["delta_in"]
    assert sorted(i for i, _ in ids) == [10, 13]
    # file_name: the Delta table's data file each record came from (two files: the table was written in two)
    assert all(name.endswith(".parquet") for _, name in ids) and s["input_files"] == 2
    assert delta_run["delta_in_types"]["id"] == "int"  # Delta's own column types, through to the output
    assert delta_run["delta_in_types"]["meta"] == "struct<source:string,depth:smallint>"
    assert delta_run["delta_in_rerun"] == ids  # idempotent
    assert delta_run["delta_in_history"] == ["WRITE", "WRITE"]
    t = delta_run["table_in_summary"]
    assert (t["input_records"], t["output_records"], t["rejected_records"]) == (4, 2, 1)
    assert delta_run["table_in"] == [10, 13]
