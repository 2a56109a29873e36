"""Who owns the output directory (issue 25, classes 6 and 7): one run at a time (``_RUNNING.json`` is a lock that
a dead run cannot keep), and after a run OUT holds exactly what its summary counts (``_manifest.json``: earlier
outputs this run did not produce are removed; files sparkcurate did not write are never counted or deleted)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sparkcurate.io import commit as commit_mod
from sparkcurate.io.commit import RUNNING_MARKER, OutputBusy, OutputCommit, OutputNotOurs, host_key
from sparkcurate.io.sinks import SINKS
from sparkcurate.io.sinks.jsonl import JsonlSink
from sparkcurate.pipeline import JobOptions, run
from tests.test_bad_input import LengthClassifier

REPO = Path(__file__).resolve().parent.parent


def _input(root: Path, names=("a", "b", "c"), per_file: int = 5) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / f"{name}.jsonl").write_text("".join(
            json.dumps({"id": f"{name}{i}", "text": f"text number {i} of {name}"}) + "\n" for i in range(per_file)))
    return root


def _run(spark, inp: Path, out: Path, **kw):
    return run(spark, JobOptions(input=str(inp), output=str(out), classifiers=[LengthClassifier()], quiet=True,
                                 report=False, **kw))


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# --- class 6: two runs into one output -----------------------------------------------------------------------------


def _marker(out: Path, **fields) -> dict:
    body = {"run_id": "other-run", "state": "running", "started_at": _iso(time.time() - 60), "command": "x",
            **fields}
    (out / RUNNING_MARKER).write_text(json.dumps(body))
    return body


@pytest.fixture()
def done_output(spark, tmp_path):
    inp, out = _input(tmp_path / "in"), tmp_path / "out"
    _run(spark, inp, out)
    return inp, out


@pytest.mark.parametrize("who", ["live process on this host", "fresh heartbeat from another host"])
def test_a_live_run_holds_the_output_and_a_second_run_refuses_touching_nothing(spark, done_output, who):
    inp, out = done_output
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        if who.startswith("live"):
            marker = _marker(out, host=socket.gethostname(), host_key=host_key(), pid=sleeper.pid,
                             heartbeat_at=_iso(time.time() - 3600))  # alive whatever its heartbeat says
        else:
            marker = _marker(out, host="elsewhere", host_key="elsewhere|x|y", pid=1, heartbeat_at=_iso(time.time()))
        before = _snapshot(out)
        # before the fix: the second run called the first "unfinished", cleaned its staging and wrote over it
        with pytest.raises(OutputBusy, match="other-run") as err:
            _run(spark, inp, out)
        assert "started" in str(err.value) and marker["started_at"] in str(err.value)
        assert _snapshot(out) == before
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_command_exits_6_with_one_line_naming_the_other_run(spark, done_output, deberta_dir, caplog):
    from sparkcurate.cli import EXIT_BUSY, main

    inp, out = done_output
    _marker(out, host="node-7", host_key="node-7|x|y", pid=4242, heartbeat_at=_iso(time.time()))
    before = _snapshot(out)
    code = main(["classify", "--input", str(inp), "--output", str(out), "--classifier", "domain", "--model",
                 str(deberta_dir), "--device", "cpu", "--quiet"])
    assert code == EXIT_BUSY == 6
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(lines) == 1 and "other-run on node-7 (pid 4242)" in lines[0] and "started" in lines[0]
    assert _snapshot(out) == before


@pytest.mark.parametrize("who", ["dead process on this host", "stale heartbeat from another host", "failed run",
                                 "older version's marker"])
def test_a_dead_runs_marker_is_taken_over_with_a_warning(spark, done_output, who, caplog):
    inp, out = done_output
    if who.startswith("dead"):
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        marker = _marker(out, host=socket.gethostname(), host_key=host_key(), pid=gone.pid,
                         heartbeat_at=_iso(time.time()))
    elif who.startswith("stale"):
        marker = _marker(out, host="elsewhere", host_key="elsewhere|x|y", pid=1,
                         heartbeat_at=_iso(time.time() - commit_mod.LOCK_STALE_S - 60))
    elif who.startswith("failed"):
        marker = _marker(out, host="elsewhere", host_key="elsewhere|x|y", pid=1, heartbeat_at=_iso(time.time()),
                         state="failed")
    else:  # no host, pid or heartbeat: judged by the file's age
        marker = _marker(out)
        old = time.time() - commit_mod.LOCK_STALE_S - 60
        os.utime(out / RUNNING_MARKER, (old, old))
    (out / "_staging").mkdir()  # what the dead run left
    summary = _run(spark, inp, out)
    assert summary["previous_run_unfinished"]["run_id"] == marker["run_id"]
    assert "other-run" in caplog.text and "dead" in caplog.text
    assert not (out / RUNNING_MARKER).exists() and not (out / "_staging").exists()
    assert summary["output_records"] == spark.read.json(str(out)).count() == 15


def test_the_running_job_refreshes_its_heartbeat_and_gives_the_lock_back(spark, tmp_path, monkeypatch):
    monkeypatch.setattr(commit_mod, "LOCK_HEARTBEAT_S", 0.2)
    out = tmp_path / "out"
    held = OutputCommit.start(spark, str(out), "first", time.time())
    try:
        first = json.loads((out / RUNNING_MARKER).read_text())
        assert first["pid"] == os.getpid() and first["run_id"] == held.run_id
        with pytest.raises(OutputBusy, match="in progress in this process"):
            OutputCommit.start(spark, str(out), "second", time.time())
        time.sleep(1.5)
        assert json.loads((out / RUNNING_MARKER).read_text())["heartbeat_at"] > first["heartbeat_at"]
    finally:
        held.release()
    assert not (out / RUNNING_MARKER).exists()
    OutputCommit.start(spark, str(out), "third", time.time()).release()


@dataclass
class NappingClassifier(LengthClassifier):
    """Signals that classification started (a flag file), then takes a few seconds."""

    flag: str = ""
    seconds: float = 3.0

    def postprocess(self, outputs):
        Path(self.flag).write_text("started")
        time.sleep(self.seconds)
        return super().postprocess(outputs)


SCRIPT = """
import json, sys
from tests.test_output_ownership import NappingClassifier
from sparkcurate.spark.session import get_session
from sparkcurate.pipeline import JobOptions, run
inp, out, flag = sys.argv[1:4]
spark = get_session("local[2]", {"spark.ui.enabled": "false"})
s = run(spark, JobOptions(input=inp, output=out, classifiers=[NappingClassifier(flag=flag)], quiet=True))
print("SUMMARY " + json.dumps({k: s[k] for k in ("input_records", "output_records")}))
spark.stop()
"""


@pytest.mark.slow
def test_two_real_runs_at_once_the_second_refuses_and_the_first_completes(spark, tmp_path):
    inp, out = _input(tmp_path / "in"), tmp_path / "out"
    _run(spark, inp, out)
    flag = tmp_path / "started.flag"
    first = subprocess.Popen([sys.executable, "-c", SCRIPT, str(inp), str(out), str(flag)], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not flag.exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.5)
        assert flag.exists(), "the first run never started classifying"
        during = _snapshot(out)
        with pytest.raises(OutputBusy, match="running"):
            _run(spark, inp, out)
        assert _snapshot(out) == during  # nothing of the first run touched
        stdout, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, stderr[-3000:]
    summary = json.loads([ln for ln in stdout.splitlines() if ln.startswith("SUMMARY ")][-1][len("SUMMARY "):])
    assert summary["output_records"] == spark.read.json(str(out)).count() == 15
    assert not (out / RUNNING_MARKER).exists()


# --- class 7: OUT holds exactly what the summary counts ------------------------------------------------------------


@pytest.mark.parametrize("layout", ["partitioned", "mirror"])
def test_removed_input_loses_its_output_on_the_next_run(spark, tmp_path, layout):
    inp, out = _input(tmp_path / "in"), tmp_path / "out"
    assert _run(spark, inp, out, layout=layout)["output_records"] == spark.read.json(str(out)).count() == 15
    (inp / "b.jsonl").unlink()
    summary = _run(spark, inp, out, layout=layout)
    # before the fix: 15 rows read back while the summary said 10
    assert summary["output_records"] == spark.read.json(str(out)).count() == 10
    assert summary["pruned_outputs"] == ["file_name=b.jsonl" if layout == "partitioned" else "b.jsonl"]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["complete"] and len(manifest["entries"]) == 2


def test_switching_layout_removes_the_other_layouts_files(spark, tmp_path):
    inp, out = _input(tmp_path / "in"), tmp_path / "out"
    for layout in ("partitioned", "mirror", "partitioned", "mirror"):
        summary = _run(spark, inp, out, layout=layout)
        # before the fix: both layouts' files side by side, 30 rows read back for 15
        assert summary["output_records"] == spark.read.json(str(out)).count() == 15
        visible = {p.name for p in out.iterdir() if not p.name.startswith(("_", "."))}
        assert visible == ({"file_name=a.jsonl", "file_name=b.jsonl", "file_name=c.jsonl"} if layout == "partitioned"
                           else {"a.jsonl", "b.jsonl", "c.jsonl"})


def test_nested_mirror_output_is_pruned_with_its_empty_folders(spark, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _input(inp / "x" / "y", names=("deep",))
    _input(inp, names=("top",))
    assert _run(spark, inp, out, layout="mirror")["output_records"] == 10
    (inp / "x" / "y" / "deep.jsonl").unlink()
    assert _run(spark, inp, out, layout="mirror")["output_records"] == 5
    assert not (out / "x").exists() and (out / "top.jsonl").exists()


def test_an_output_holding_files_sparkcurate_did_not_write_is_refused(spark, tmp_path):
    inp, out = _input(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "data").mkdir()
    (out / "data" / "other.json").write_text('{"text": "not from sparkcurate"}\n')
    (out / ".hidden").write_text("readers skip it")
    before = _snapshot(out)
    with pytest.raises(OutputNotOurs, match="notes.txt"):
        _run(spark, inp, out)
    assert _snapshot(out) == before
    # a file dropped beside sparkcurate's own output later is refused as well, and never deleted
    out2 = tmp_path / "out2"
    _run(spark, inp, out2)
    (out2 / "stray.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(OutputNotOurs, match="stray.jsonl"):
        _run(spark, inp, out2)
    assert (out2 / "stray.jsonl").exists()


def test_an_output_of_an_older_version_is_adopted(spark, tmp_path):
    inp, out = _input(tmp_path / "in"), tmp_path / "out"
    _run(spark, inp, out)
    (out / "_manifest.json").unlink()  # as an older sparkcurate left it
    (inp / "a.jsonl").unlink()
    summary = _run(spark, inp, out)
    assert summary["output_records"] == spark.read.json(str(out)).count() == 10
    assert summary["pruned_outputs"] == ["file_name=a.jsonl"]


class RecordingTableSink(JsonlSink):
    """A sink that removes an input's output itself (as Delta's DELETE or a table's DROP PARTITION do): the job
    must ask it, never delete its folders by path."""

    name = "recording-table"
    removed: list[list[str]] = []

    def remove_outputs(self, spark, out, layout, file_name_column, file_names, compression):
        RecordingTableSink.removed.append(sorted(file_names))


def test_a_sink_that_removes_by_name_is_asked_and_keeps_its_folders(spark, tmp_path, monkeypatch):
    monkeypatch.setitem(SINKS, RecordingTableSink.name, RecordingTableSink)
    monkeypatch.setattr(RecordingTableSink, "removed", [])
    inp, out = _input(tmp_path / "in"), tmp_path / "out"
    _run(spark, inp, out, output_format="recording-table")
    (inp / "b.jsonl").unlink()
    summary = _run(spark, inp, out, output_format="recording-table")
    assert RecordingTableSink.removed == [["b.jsonl"]] and summary["pruned_outputs"] == ["b.jsonl"]
    assert (out / "file_name=b.jsonl").is_dir()  # the table's own folder: its log decides, not a path delete
    manifest = json.loads((out / "_manifest.json").read_text())
    assert "file_name=b.jsonl" in manifest["entries"] and manifest["file_names"] == ["a.jsonl", "c.jsonl"]
    _run(spark, inp, out, output_format="recording-table")  # its folders are never called foreign


def test_a_run_whose_lock_was_taken_over_stops_before_touching_and_leaves_the_new_marker(spark, tmp_path):
    from sparkcurate.io.commit import RunOutputs

    out = tmp_path / "out"
    stalled = OutputCommit.start(spark, str(out), "stalled", time.time())
    try:
        taker = _marker(out, host="elsewhere", host_key="elsewhere|x|y", pid=1, heartbeat_at=_iso(time.time()))
        with pytest.raises(OutputBusy, match="no longer names this run"):
            stalled.touch(RunOutputs({"file_name=a.jsonl"}, {"a.jsonl"}, {"format": "jsonl"}))
        stalled.failed()
        assert json.loads((out / RUNNING_MARKER).read_text()) == taker
        assert not (out / "_manifest.json").exists()
    finally:
        stalled.release()
    assert json.loads((out / RUNNING_MARKER).read_text()) == taker
