"""A long job commits as it goes and a re-run resumes (issue "A job of many hours"): the input's files are units,
done in commit groups; a re-run of the same command reuses the units committed with the same input and options,
and its output is, record for record, the output of one clean run.

The interrupted run is simulated with the test-only hook ``JobOptions.stop_after_groups`` (the run stops between
two commit groups as a killed driver would: its marker says failed, its committed groups stay).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from sparkcurate.groups import StoppedForTest
from sparkcurate.io.commit import RUNNING_MARKER
from sparkcurate.io.units import UNITS_DIR, commit_groups, unit_key
from sparkcurate.pipeline import JobOptions, run
from sparkcurate.report.progress import format_progress, units_left_s
from tests.test_bad_input import LengthClassifier

FILES = {
    "a.jsonl": ['{"id": 1, "text": "short"}', '{"id": 2, "text": "a longer text"}', "{not json"],
    "b.jsonl": ['{"id": 3, "text": "tiny"}', '{"id": 4, "text": "long enough text", "extra": true}'],
    "sub/c.jsonl": ['{"id": 5, "text": ""}', '{"id": 6, "text": "another long one"}', '{"id": 7, "text": "ab"}'],
    "d.jsonl": ['{"id": 8, "text": "one more long text"}'],
    "e.jsonl": [],  # an empty file is a unit too
}


def _write(root: Path, files: dict[str, list[str]]) -> Path:
    for name, lines in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in lines))
    return root


def _run(spark, inp: Path, out: Path, **kw):
    kw.setdefault("commit_every_bytes", 1)  # one unit per group
    classifiers = kw.pop("classifiers", None) or [LengthClassifier(device="cpu")]
    return run(spark, JobOptions(input=str(inp), output=str(out), classifiers=classifiers, quiet=True,
                                 report=False, **kw))


def _lines(folder: Path, pattern: str) -> list[dict]:
    return [json.loads(line) for p in sorted(folder.glob(pattern)) for line in p.read_text().splitlines() if line]


def _output(out: Path) -> list[str]:
    """Every output record with its partition's file name, as sorted canonical JSON."""
    rows = []
    for part in out.glob("file_name=*/part-*.json"):
        for line in part.read_text().splitlines():
            rows.append(json.dumps({**json.loads(line), "file_name": part.parent.name}, sort_keys=True))
    return sorted(rows)


def _rejects(out: Path) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in _lines(out / "_rejects", "*.json"))


def _counted(summary: dict) -> dict:
    keys = ("input_records", "output_records", "filtered_records", "rejected_records", "rejected_by_reason",
            "by_label", "by_file", "prob_histograms", "input_files")
    return {k: summary[k] for k in keys}


def _records_of(summary: dict, *names: str) -> int:
    return sum(summary["by_file"][n]["input"] for n in names)


def _same_as_clean(spark, tmp_path: Path, inp: Path, out: Path, summary: dict, **kw) -> None:
    """``out`` holds what one clean run of the same input gives, record for record, and counts it the same."""
    clean_out = tmp_path / f"clean-{time.time_ns()}"
    clean = _run(spark, inp, clean_out, commit_every_bytes=0, **kw)
    assert _output(out) == _output(clean_out) and _output(out)
    assert _rejects(out) == _rejects(clean_out)
    assert _counted(summary) == _counted(clean)
    assert summary["output_records"] == spark.read.json(str(out)).count()


@pytest.fixture()
def inp(tmp_path):
    return _write(tmp_path / "in", FILES)


def test_a_run_stopped_between_groups_resumes_to_the_output_of_one_clean_run(spark, tmp_path, inp):
    out = tmp_path / "out"
    with pytest.raises(StoppedForTest):
        _run(spark, inp, out, stop_after_groups=2)
    assert json.loads((out / RUNNING_MARKER).read_text())["state"] == "failed"
    assert len(list((out / UNITS_DIR).glob("*-g*.json"))) == 2  # two groups committed, one record each
    summary = _run(spark, inp, out)
    # a.jsonl and b.jsonl were committed; d, e, sub/c were not (listing order: a, b, d, e, sub/c; the empty e
    # fills no group's budget: it goes with sub/c)
    assert summary["units"] == {"total": 5, "reused": 2, "redone": 0, "new": 3, "removed": 0, "groups": 2}
    assert summary["previous_run_unfinished"]["state"] == "failed"
    # the reused units were not classified again: the stage saw only the records of d and sub/c
    assert summary["task_stats"]["docs"] == _records_of(summary, "d.jsonl", "sub/c.jsonl") == 4
    _same_as_clean(spark, tmp_path, inp, out, summary)
    assert [p.name for p in (out / UNITS_DIR).iterdir() if not p.name.startswith(".")][0].endswith("-index.json")
    again = _run(spark, inp, out)  # nothing to do: every unit reused, the same counts
    assert again["units"]["reused"] == 5 and again["units"]["groups"] == 0
    assert _counted(again) == _counted(summary) and _output(out) and "task_stats" in again


def test_a_changed_an_added_and_a_removed_file_redo_add_and_remove_exactly_their_units(spark, tmp_path, inp):
    out = tmp_path / "out"
    _run(spark, inp, out)
    (inp / "b.jsonl").write_text('{"id": 3, "text": "tiny"}\n{"id": 40, "text": "changed", "extra": false}\n'
                                 '{"id": 41, "text": ""}\n')  # the same fields: the read schema stays
    (inp / "f.jsonl").write_text('{"id": 9, "text": "a new file here"}\n')
    (inp / "sub" / "c.jsonl").unlink()
    summary = _run(spark, inp, out)
    assert summary["units"] == {"total": 5, "reused": 3, "redone": 1, "new": 1, "removed": 1, "groups": 2}
    assert summary["task_stats"]["docs"] == _records_of(summary, "b.jsonl", "f.jsonl") == 4
    assert not (out / "file_name=sub%2Fc.jsonl").exists() and not list(out.glob("file_name=sub*"))
    assert not list((out / "_rejects").glob(f"part-{unit_key('sub/c.jsonl')}-*"))
    _same_as_clean(spark, tmp_path, inp, out, summary)


def test_restart_and_a_changed_option_redo_every_unit(spark, tmp_path, inp):
    out = tmp_path / "out"
    _run(spark, inp, out)
    restarted = _run(spark, inp, out, restart=True)
    assert restarted["units"] == {"total": 5, "reused": 0, "redone": 5, "new": 0, "removed": 0, "groups": 4}
    filtered = [LengthClassifier(device="cpu", filter_by=["long"])]
    changed = _run(spark, inp, out, classifiers=filtered)
    assert changed["units"]["reused"] == 0 and changed["units"]["redone"] == 5
    assert changed["filtered_records"] == 3  # "short", "tiny" and "ab" are not long
    _same_as_clean(spark, tmp_path, inp, out, changed, classifiers=filtered)
    mirror = _run(spark, inp, out, layout="mirror")  # another layout: every unit again, the other layout's gone
    assert mirror["units"]["redone"] == 5 and not list(out.glob("file_name=*"))


def test_each_group_is_its_own_job_and_persists_only_its_rows(spark, tmp_path, inp, monkeypatch):
    """Bounded local disk: the classified rows of one group at a time are persisted (and unpersisted before the
    next group's are)."""
    DataFrame = type(spark.range(1))  # the session's class (pyspark 4: the classic DataFrame subclass)
    persisted: list[int] = []
    live: list[DataFrame] = []
    real_persist, real_unpersist = DataFrame.persist, DataFrame.unpersist

    def persist(self, *args, **kwargs):
        live.append(self)
        persisted.append(len(live))
        return real_persist(self, *args, **kwargs)

    def unpersist(self, *args, **kwargs):
        if self in live:
            live.remove(self)
        return real_unpersist(self, *args, **kwargs)

    monkeypatch.setattr(DataFrame, "persist", persist)
    monkeypatch.setattr(DataFrame, "unpersist", unpersist)
    summary = _run(spark, inp, tmp_path / "out")
    monkeypatch.undo()
    assert summary["units"]["groups"] == 4  # a, b, d, then e (empty) with sub/c
    assert len(persisted) == 4 and max(persisted) == 1 and not live


def test_the_default_group_size_comes_from_the_plan(spark, tmp_path, inp):
    from sparkcurate.spark.planning import GROUP_TASKS_PER_SLOT, commit_group_bytes

    assert commit_group_bytes(spark, 2) == 2 * GROUP_TASKS_PER_SLOT * 128 * 2**20
    summary = _run(spark, inp, tmp_path / "out", commit_every_bytes=None)
    assert summary["units"]["groups"] == 1  # a small input is one group


def test_commit_groups_cut_by_bytes_in_order():
    from sparkcurate.io.listing import InputFile

    files = [InputFile(f"/x/{n}", n, size) for n, size in [("a", 5), ("b", 5), ("c", 30), ("d", 1), ("e", 0)]]
    assert [[f.file_name for f in g] for g in commit_groups(files, 10)] == [["a", "b"], ["c"], ["d", "e"]]
    assert len(commit_groups(files, 0)) == 1 and commit_groups([], 10) == []


def test_progress_line_shows_units_and_time_left():
    line = format_progress(100, 10.0, units=(3, 10), units_left_s=90.0)
    assert "units 3/10 done (~1m30s left)" in line
    assert units_left_s(10.0, 100, 900) == 90.0 and units_left_s(10.0, 0, 900) is None


def test_commit_every_bytes_takes_sizes():
    import argparse

    from sparkcurate.cli import byte_size

    assert byte_size("4g") == 4 * 2**30 and byte_size("500m") == 500 * 2**20 and byte_size("0") == 0
    with pytest.raises(argparse.ArgumentTypeError):
        byte_size("lots")


def test_a_record_is_never_half_written(spark, tmp_path):
    """A record is written to a temporary name and renamed: a left temporary file is not a record."""
    from sparkcurate.io.fs import HadoopFS
    from sparkcurate.io.units import UnitStore

    store = UnitStore(HadoopFS(spark, str(tmp_path)))
    store.commit("run1", 0, {"a": {"fingerprint": "f", "identity": {}, "counts": {}}})
    (tmp_path / UNITS_DIR / "00000000000000000009-run2-g00000.json.tmp").write_text('{"units": {"b": {')
    assert set(store.read()) == {"a"}
    store.compact("run3", {"b": {"fingerprint": "f"}})
    assert set(store.read()) == {"b"} and len(os.listdir(tmp_path / UNITS_DIR)) >= 1


def test_the_report_shows_the_units(tmp_path):
    from sparkcurate.report import charts as charts_mod
    from sparkcurate.report.html import render_html

    units = {"total": 10, "reused": 6, "redone": 1, "new": 3, "removed": 2, "groups": 2}
    page = render_html({"output": "OUT", "units": units}, charts_mod.ChartWriter(tmp_path))
    assert "Input units" in page and "reused from an earlier run" in page
    assert render_html({"output": "OUT"}, charts_mod.ChartWriter(tmp_path)).count("Input units") == 0


def test_a_group_without_rejects_writes_none_and_drops_its_units_earlier_rejects(spark, tmp_path, monkeypatch):
    """A group whose counts say nothing was rejected runs no rejects write (a Spark job that would stage nothing,
    issue 23), yet a redone unit's earlier rejects are still removed."""
    from pyspark.sql.readwriter import DataFrameWriter

    staged: list[str] = []
    json_write = DataFrameWriter.json

    def recording(self, path, *args, **kwargs):
        staged.append(str(path))
        return json_write(self, path, *args, **kwargs)

    monkeypatch.setattr(DataFrameWriter, "json", recording)
    inp = _write(tmp_path / "in", {"a.jsonl": ['{"id": 1, "text": "short"}', "{not json"]})
    out = tmp_path / "out"
    first = _run(spark, inp, out)
    assert first["rejected_records"] == 1 and list((out / "_rejects").glob(f"part-{unit_key('a.jsonl')}-*"))
    assert sum("_staging/rejects-" in p for p in staged) == 1
    _write(inp, {"a.jsonl": ['{"id": 1, "text": "short"}', '{"id": 2, "text": "now a record"}']})
    staged.clear()
    second = _run(spark, inp, out)
    assert second["rejected_records"] == 0 and second["units"]["redone"] == 1
    assert not any("_staging/rejects-" in p for p in staged) and staged  # the output was written, no rejects
    assert (out / "_rejects").is_dir() and not [p for p in (out / "_rejects").iterdir() if not p.name.startswith(".")]
