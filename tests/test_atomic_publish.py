"""Readers of OUT see the previous complete output or the new complete one, never a mix (issue 22, item 3).

File sinks stage every commit group under ``OUT/_staging/<run id>/g<N>/`` and publish in the final step
(``sparkcurate.io.publish``): staged files moved in, then Spark's file sink log ``OUT/_spark_metadata/<N>.compact``
and the manifest's ``files`` switched to the new set, then the superseded files removed. Checked here: a run
stopped after one group leaves ``spark.read`` and a folder listing on the previous output, record for record; the
resumed run gives one clean run's output; the latest log batch lists exactly the visible files; older batches go;
a driver killed inside the publish step leaves ``spark.read`` on a complete set, and the same command finishes.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from sparkcurate.groups import StoppedForTest
from sparkcurate.io.fs import HadoopFS
from sparkcurate.io.publish import SPARK_LOG_DIR, STAGING_DIR, latest_log_files, log_batches
from tests.test_resume import FILES, _run, _write

FORMATS = [("jsonl", "partitioned"), ("jsonl", "mirror"), ("parquet", "partitioned"), ("parquet", "mirror")]


def _read(spark, out: Path, fmt: str, layout: str = "partitioned") -> list[str]:
    """Every record ``spark.read.<format>(OUT)`` gives, as sorted canonical JSON (the mirror layout's files in
    folders too: ``recursiveFileLookup``, which Spark honours with or without the log)."""
    reader = spark.read.option("recursiveFileLookup", str(layout == "mirror").lower())
    reader = reader.json if fmt == "jsonl" else reader.parquet
    return sorted(json.dumps(r.asDict(recursive=True), sort_keys=True, default=str)
                  for r in reader(str(out)).collect())


def _visible(out: Path) -> list[str]:
    """The data files a tool that lists OUT finds (names starting with ``_`` or ``.`` skipped, as Spark does)."""
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()
                  and not any(part.startswith(("_", ".")) and "=" not in part
                              for part in p.relative_to(out).parts))


def _contents(out: Path) -> dict[str, bytes]:
    return {rel: (out / rel).read_bytes() for rel in _visible(out)}


def _log(spark, out: Path) -> list[str] | None:
    return latest_log_files(HadoopFS(spark, str(out)))


def _manifest(out: Path) -> dict:
    return json.loads((out / "_manifest.json").read_text())


def _change_inputs(inp: Path) -> None:
    """One input changed (the same fields: the read schema stays) and one added, both listed before d.jsonl."""
    (inp / "b.jsonl").write_text('{"id": 3, "text": "tiny"}\n{"id": 40, "text": "changed", "extra": false}\n')
    (inp / "c0.jsonl").write_text('{"id": 9, "text": "a new file here"}\n')


@pytest.mark.parametrize("fmt, layout", FORMATS)
def test_a_run_stopped_mid_way_leaves_readers_on_the_previous_output(spark, tmp_path, fmt, layout):
    inp, out = _write(tmp_path / "in", FILES), tmp_path / "out"
    kw = {"output_format": fmt, "layout": layout}
    first = _run(spark, inp, out, **kw)
    before_rows, before_files = _read(spark, out, fmt, layout), _contents(out)
    assert len(before_rows) == first["output_records"] > 0
    assert _log(spark, out) == sorted(before_files) == _manifest(out)["files"]

    _change_inputs(inp)
    with pytest.raises(StoppedForTest):
        _run(spark, inp, out, stop_after_groups=1, **kw)  # b.jsonl redone and staged, nothing published
    assert _read(spark, out, fmt, layout) == before_rows  # spark.read: the previous output, record for record
    assert _contents(out) == before_files  # a folder listing: the previous files, byte for byte
    assert _log(spark, out) == sorted(before_files) == _manifest(out)["files"]
    assert list((out / STAGING_DIR).rglob("*b.jsonl*"))  # the redone unit waits in staging

    summary = _run(spark, inp, out, **kw)  # resumed: publishes the staged unit, does the rest
    assert summary["units"]["reused"] == 5 and summary["units"]["new"] == 1
    clean_out = tmp_path / "clean"
    clean = _run(spark, inp, clean_out, commit_every_bytes=0, **kw)
    rows = _read(spark, out, fmt, layout)
    assert rows == _read(spark, clean_out, fmt, layout)
    assert summary["output_records"] == clean["output_records"] == len(rows)
    assert _log(spark, out) == _visible(out) == _manifest(out)["files"]  # exactly the visible files
    assert not (out / STAGING_DIR).exists()


def test_a_first_run_stopped_mid_way_shows_nothing(spark, tmp_path):
    inp, out = _write(tmp_path / "in", FILES), tmp_path / "out"
    with pytest.raises(StoppedForTest):
        _run(spark, inp, out, stop_after_groups=2)
    assert _visible(out) == [] and not (out / SPARK_LOG_DIR).exists()
    _run(spark, inp, out)
    assert _log(spark, out) == _visible(out) and _visible(out)


def test_the_log_keeps_two_batches_and_spark_reads_only_the_latest(spark, tmp_path):
    """Several runs, each changing one input: the log holds the last two batches (consecutive ``.compact``
    files), ``spark.read`` gives the latest run's output, and a file dropped beside the output (never
    published) is not read."""
    inp, out = _write(tmp_path / "in", FILES), tmp_path / "out"
    for i in range(4):
        (inp / "d.jsonl").write_text(json.dumps({"id": 8, "text": "x" * (i + 1) * 5}) + "\n")
        _run(spark, inp, out)
    batches = log_batches(HadoopFS(spark, str(out)))
    assert len(batches) == 2 and batches[1] == batches[0] + 1
    assert sorted(p.name for p in (out / SPARK_LOG_DIR).iterdir() if not p.name.startswith(".")) == [
        f"{b}.compact" for b in batches]
    assert _log(spark, out) == _visible(out)
    rows = spark.read.json(str(out)).where("file_name = 'd.jsonl'").collect()
    assert [r["text"] for r in rows] == ["x" * 20]
    stray = next((out / "file_name=d.jsonl").iterdir())
    (stray.parent / "part-99999-stray.json").write_text('{"id": 99, "text": "not published"}\n')
    assert 99 not in [r["id"] for r in spark.read.json(str(out)).collect()]  # the log, not the folder


def test_the_log_is_sparks_own_format(spark, tmp_path):
    """What the publish step writes is the log Spark's own streaming file sink writes: the same fields, a full
    URI per file, read back by Spark (partition values included) for names with spaces and ``%``."""
    inp, out = _write(tmp_path / "in", {"a b%.jsonl": ['{"id": 1, "text": "a long enough text"}']}), tmp_path / "o"
    _run(spark, inp, out)
    batch = (out / SPARK_LOG_DIR / f"{log_batches(HadoopFS(spark, str(out)))[-1]}.compact").read_text()
    lines = batch.split("\n")
    entry = json.loads(lines[1])
    assert lines[0] == "v1" and len(lines) == 2
    assert set(entry) == {"path", "size", "isDir", "modificationTime", "blockReplication", "blockSize", "action"}
    assert entry["path"].startswith("file:/") and "%20" in entry["path"] and entry["action"] == "add"
    assert [r["file_name"] for r in spark.read.json(str(out)).collect()] == ["a b%.jsonl"]


# --- the driver killed inside the publish step (real processes) --------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("point", ["publish_moving", "published"])
def test_driver_killed_while_publishing_leaves_a_complete_set_and_the_same_command_finishes(spark, tmp_path,
                                                                                          point):
    from tests.test_resume_faults import _cli, _clean, _command, _input, _rows, _same_as_clean

    inp, out = _input(tmp_path / "in"), tmp_path / "out"
    code, err = _cli(_command(inp, out))
    assert code == 0, err[-3000:]
    before = _rows(spark, out)
    (inp / "f3.jsonl").unlink()
    _input(inp, names=("f4",))
    with open(inp / "f1.jsonl", "a") as fh:  # f1 changed: redone, its earlier part file superseded
        fh.write(json.dumps({"id": "f1-new", "text": "a new record of f1"}) + "\n")
    code, err = _cli(_command(inp, out), env={"SPARKCURATE_TEST_DIE_AT": point})
    assert code == -signal.SIGKILL, err[-3000:]
    clean = _clean(spark, inp, tmp_path / "clean")
    # right after the kill, spark.read gives a complete set: the previous one while moving, the new one after
    assert _rows(spark, out) == (before if point == "publish_moving" else _rows(spark, clean))

    code, err = _cli(_command(inp, out))
    assert code == 0, err[-3000:]
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["units"]["reused"] == 4 and summary["units"]["removed"] == 1
    _same_as_clean(spark, out, clean)
    assert _log(spark, out) == _visible(out) == _manifest(out)["files"]


def test_staging_that_no_reused_unit_needs_is_removed(spark, tmp_path):
    """``clean_staging``: what an unfinished run staged for units this run reuses stays (to be published); the
    rest goes (units done again, ``--restart``: nothing is reused), and so does the folder once empty."""
    from sparkcurate.io.publish import clean_staging, group_stage

    out = tmp_path / "out"
    kept, other = group_stage("run1", 0), group_stage("run1", 1)
    for rel in (kept, other, group_stage("run2", 0), f"{STAGING_DIR}/rejects-run1-x"):
        (out / rel).mkdir(parents=True)
        (out / rel / "part-0.json").write_text("{}\n")
    fs = HadoopFS(spark, str(out))
    clean_staging(fs, {kept})
    assert sorted(p.relative_to(out).as_posix() for p in (out / STAGING_DIR).rglob("part-0.json")) == [
        f"{kept}/part-0.json"]
    clean_staging(fs, set())  # --restart
    assert not (out / STAGING_DIR).exists()


@pytest.mark.parametrize("whole_folder", [False, True], ids=["file", "partition-folder"])
def test_published_output_deleted_by_hand_is_a_clear_error_naming_restart(spark, tmp_path, whole_folder):
    import shutil

    inp, out = _write(tmp_path / "in", FILES), tmp_path / "out"
    _run(spark, inp, out)
    gone = sorted((out / rel) for rel in _visible(out))[0]
    if whole_folder:
        shutil.rmtree(gone.parent)
    else:
        gone.unlink()
    with pytest.raises(Exception) as info:
        _run(spark, inp, out)  # every unit reused: the publish step finds the hole
    message = str(info.value)
    assert "should hold published output" in message and "--restart" in message and gone.parent.name in message
    summary = _run(spark, inp, out, restart=True)
    assert summary["units"]["reused"] == 0 and list(gone.parent.glob("part-*"))  # the unit written again
    assert _log(spark, out) == _visible(out) == _manifest(out)["files"]
