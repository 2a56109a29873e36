"""The faults of the issue "A job of many hours: commit as it goes, resume where it stopped", with real processes:
the driver killed (SIGKILL) before the first commit group is recorded, between groups and during the final commit,
then the same command again; an executor killed mid-run (local-cluster); a task that fails once with speculation
on (on one host Spark runs no speculative copy: see that test); two runs started at once on one output. Each ends
with output, rejects and counts identical, record for record, to one clean run.

Every run is the real command (``sparkcurate.cli.main``: argument parsing, exit codes, the whole job) in its own
process; ``RUNNER`` first registers this module's rule classifiers (no model: seconds, exact floats) under their
names, as a user's plugin would. The driver is killed at an exact point by the test-only hook
``SPARKCURATE_TEST_DIE_AT`` (``sparkcurate.groups.die_if_asked``); executors and tasks misbehave from the test
classifiers, once per run (a flag file), so every fault happens exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from sparkcurate.io.commit import RUNNING_MARKER
from sparkcurate.io.units import UNITS_DIR
from sparkcurate.pipeline import JobOptions, run
from tests.test_bad_input import LengthClassifier, LengthEngine

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
EXIT_BUSY = 6

RUNNER = """
import sys
import tests.test_resume_faults as m
from sparkcurate.cli import main
m.register()
sys.exit(main(sys.argv[1:]))
"""

TRIGGER = "the record that sets the fault off"  # in the third file (third commit group): mid-run


# --- test classifiers (importable on executors: workers start in the repository root) ---------------------------


def _once(flag: str) -> bool:
    """True the first time in this run (across processes): creates ``flag`` atomically."""
    try:
        os.close(os.open(flag, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        return True
    except FileExistsError:
        return False


def _attempt() -> tuple[int, int, int]:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return (ctx.stageId(), ctx.partitionId(), ctx.attemptNumber()) if ctx is not None else (0, 0, 0)


class _FaultEngine(LengthEngine):
    """The length rule, with ``fault(texts)`` called on every batch first."""

    def __init__(self, fault, long_chars: int):
        super().__init__(long_chars)
        self.fault = fault

    def predict_tokenized(self, texts):
        self.fault(list(texts))
        return super().predict_tokenized(texts)


@dataclass
class _FaultClassifier(LengthClassifier):
    flag: str = ""  # a file: the fault happens once per run (created when it does)

    def load_engine(self, device: str):
        super().load_engine(device)
        return _FaultEngine(self.fault, self.long_chars)

    def fault(self, texts: list[str]) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass
class ExecutorKillerOnce(_FaultClassifier):
    """Kills its executor's JVM (the parent of the Python daemon that forked this worker) the first time a batch
    holds ``TRIGGER``: mid-run, in the third commit group."""

    name: ClassVar[str] = "test-executor-killer"

    def fault(self, texts):
        if TRIGGER in texts and _once(self.flag):
            daemon = os.getppid()
            with open(f"/proc/{daemon}/stat") as fh:
                jvm = int(fh.read().rsplit(")", 1)[1].split()[1])
            os.kill(jvm, signal.SIGKILL)
            time.sleep(30)


@dataclass
class FlakyOnce(_FaultClassifier):
    """The batch holding ``TRIGGER`` fails on its first attempt (once per run). Each batch leaves a file named
    ``<stage>-<partition>-<attempt>`` in ``attempts`` (which attempts ran)."""

    name: ClassVar[str] = "test-flaky"
    attempts: str = ""

    def fault(self, texts):
        stage, partition, attempt = _attempt()
        if self.attempts:
            Path(self.attempts, f"{stage}-{partition}-{attempt}").touch()
        if TRIGGER in texts and attempt == 0 and _once(self.flag):
            raise RuntimeError("injected failure on the first attempt")


@dataclass
class GateClassifier(_FaultClassifier):
    """On the batch holding ``TRIGGER``, writes ``flag`` and waits (up to two minutes) for the file ``go``: the
    run holds its output mid-run, with its first groups committed."""

    name: ClassVar[str] = "test-gate"
    go: str = ""

    def fault(self, texts):
        if TRIGGER in texts:
            Path(self.flag).write_text("waiting")
            deadline = time.time() + 120
            while not os.path.exists(self.go) and time.time() < deadline:
                time.sleep(0.2)


def register() -> None:
    """Make the rule classifiers known to the command (``--classifier length`` and the faulty ones)."""
    from sparkcurate.classifiers import registry

    for cls in (LengthClassifier, ExecutorKillerOnce, FlakyOnce, GateClassifier):
        registry.register(cls)


# --- helpers ------------------------------------------------------------------------------------------------------


def _input(root: Path, names=("f0", "f1", "f2", "f3")) -> Path:
    """Four files of 20 records, each with a malformed line and an empty text (rejects); ``TRIGGER`` in f2."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        with open(root / f"{name}.jsonl", "w") as fh:
            for i in range(20):
                text = TRIGGER if (name, i) == ("f2", 7) else "x" * (i % 9 + 1)
                fh.write(json.dumps({"id": f"{name}-{i}", "text": text}) + "\n")
            fh.write("{not json\n" + json.dumps({"id": f"{name}-empty", "text": ""}) + "\n")
    return root


def _command(inp: Path, out: Path, classifier: str = "length", master: str = "local[2]",
             extra: list[str] | None = None) -> list[str]:
    """The command: one input file per commit group (``--commit-every-bytes 1``)."""
    return ["classify", "--input", str(inp), "--output", str(out), "--classifier", classifier, "--master", master,
            "--commit-every-bytes", "1", "--device", "cpu", "--no-report", "--quiet", "--conf",
            "spark.ui.enabled=false", *(extra or [])]


def _cli(args: list[str], env: dict | None = None, timeout: int = 420, wait: bool = True):
    """Run the command in its own process group (so that what a killed driver leaves behind is killed after it);
    (exit code, stderr) once it ends, or the running ``Popen`` with ``wait=False``."""
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, *args], cwd=REPO, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    return _finish(proc, timeout) if wait else proc


def _finish(proc: subprocess.Popen, timeout: int = 420) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the JVM and Python workers of a killed driver
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)
    return proc.returncode, err


def _rows(spark, out: Path) -> list[str]:
    """Every record a reader of OUT gets (``spark.read.json``), as sorted canonical JSON."""
    return sorted(json.dumps(r.asDict(recursive=True), sort_keys=True) for r in spark.read.json(str(out)).collect())


def _rejects(out: Path) -> list[str]:
    return sorted(json.dumps(json.loads(line), sort_keys=True) for p in (out / "_rejects").glob("*.json")
                  for line in p.read_text().splitlines() if line)


def _summary(out: Path) -> dict:
    return json.loads((out / "_summary.json").read_text())


COUNTED = ("input_records", "output_records", "filtered_records", "rejected_records", "rejected_by_reason",
           "by_label", "by_file", "prob_histograms", "input_files")


def _clean(spark, inp: Path, out: Path, classifier: LengthClassifier | None = None) -> Path:
    """One clean run of the same job (in this process, with the same options): ``classifier`` is the command's
    (its fault spent: its flag exists), by default the plain rule."""
    run(spark, JobOptions(input=str(inp), output=str(out), classifiers=[classifier or LengthClassifier(device="cpu")],
                          quiet=True, report=False, commit_every_bytes=1))
    return out


def _same_as_clean(spark, out: Path, clean: Path) -> None:
    assert _rows(spark, out) == _rows(spark, clean) and _rows(spark, out)
    assert _rejects(out) == _rejects(clean) and _rejects(out)
    got, want = _summary(out), _summary(clean)
    assert {k: got[k] for k in COUNTED} == {k: want[k] for k in COUNTED}
    assert got["output_records"] == spark.read.json(str(out)).count()
    assert not (out / RUNNING_MARKER).exists()
    left = [p.name for p in out.iterdir() if p.name in ("_staging", "_temporary") or p.name.startswith(".spark-")]
    assert not left, left  # no staging leftovers of the killed run
    records = [p.name for p in (out / UNITS_DIR).iterdir() if not p.name.startswith(".")]
    assert len(records) == 1 and records[0].endswith("-index.json"), records


def _group_records(out: Path) -> list[str]:
    return sorted(p.name for p in (out / UNITS_DIR).glob("*-g*.json"))


# --- the driver killed ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("point, reused, new, records_left", [
    ("written:1", 0, 4, 0),  # early: the first group's output written, its units not yet recorded
    ("committed:2", 2, 2, 2),  # in the middle: two of four groups committed
])
def test_driver_killed_then_the_same_command_gives_the_output_of_one_clean_run(spark, tmp_path, point, reused,
                                                                               new, records_left):
    inp, out = _input(tmp_path / "in"), tmp_path / "out"
    code, err = _cli(_command(inp, out), env={"SPARKCURATE_TEST_DIE_AT": point})
    assert code == -signal.SIGKILL, err[-3000:]
    marker = json.loads((out / RUNNING_MARKER).read_text())
    assert marker["state"] == "running"  # killed: it could not say so
    assert len(_group_records(out)) == records_left
    # the killed run had written output, staged: nothing of it is visible in OUT (io.publish)
    assert list(out.glob("_staging/*/g00000/file_name=f0.jsonl/part-*"))
    assert not list(out.glob("file_name=*")) and not (out / "_spark_metadata").exists()

    code, err = _cli(_command(inp, out))
    assert code == 0, err[-3000:]
    summary = _summary(out)
    assert summary["units"] == {"total": 4, "reused": reused, "redone": 0, "new": new, "removed": 0,
                                "groups": new}
    assert summary["previous_run_unfinished"]["run_id"] == marker["run_id"]
    clean = _clean(spark, inp, tmp_path / "clean")
    # the reused units were not classified again: this run classified the records of the new ones only
    assert summary["task_stats"]["docs"] == _summary(clean)["task_stats"]["docs"] * new // 4
    _same_as_clean(spark, out, clean)


def test_driver_killed_during_the_final_commit_of_a_run_that_removes_and_adds_a_file(spark, tmp_path):
    """The killed run had published (the new set moved in, Spark's log and the manifest switched, the removed
    file's output pruned) but not yet removed its rejects, its record or the summary: the same command again
    reuses every unit and finishes the final step."""
    inp, out = _input(tmp_path / "in"), tmp_path / "out"
    code, err = _cli(_command(inp, out))
    assert code == 0, err[-3000:]
    (inp / "f3.jsonl").unlink()
    _input(inp, names=("f4",))
    code, err = _cli(_command(inp, out), env={"SPARKCURATE_TEST_DIE_AT": "final_commit"})
    assert code == -signal.SIGKILL, err[-3000:]
    assert (out / RUNNING_MARKER).exists() and not (out / "file_name=f3.jsonl").exists()
    assert json.loads((out / "_manifest.json").read_text())["complete"] is True

    code, err = _cli(_command(inp, out))
    assert code == 0, err[-3000:]
    summary = _summary(out)
    assert summary["units"] == {"total": 4, "reused": 4, "redone": 0, "new": 0, "removed": 1, "groups": 0}
    assert summary["previous_run_unfinished"] is not None
    _same_as_clean(spark, out, _clean(spark, inp, tmp_path / "clean"))


# --- executors and tasks ----------------------------------------------------------------------------------------


def test_executor_killed_mid_run_in_local_cluster_gives_output_exactly_once(spark, tmp_path):
    import pyspark

    inp, out, flag = _input(tmp_path / "in"), tmp_path / "out", tmp_path / "killed.flag"
    code, err = _cli(_command(inp, out, "test-executor-killer", "local-cluster[2,1,1024]",
                              ["--param", f"flag={flag}"]),
                     env={"SPARK_HOME": os.path.dirname(pyspark.__file__)}, timeout=600)
    assert code == 0, err[-3000:]
    assert flag.exists(), "the executor was never killed"
    assert "Lost executor" in err or "ExecutorLostFailure" in err or "Executor lost" in err, err[-3000:]
    assert _summary(out)["units"]["new"] == 4
    _same_as_clean(spark, out, _clean(spark, inp, tmp_path / "clean", ExecutorKillerOnce(device="cpu",
                                                                                             flag=str(flag))))


def test_a_task_that_fails_once_with_speculation_on_gives_output_exactly_once(spark, tmp_path):
    """Speculation on and eager (copies of any task slower than 1.1 times the median). On one host Spark never
    runs a copy beside the original (it places a copy only on another host), so what this checks is that the
    setting changes nothing: the failed task's retry, committed once."""
    inp, out, flag = _input(tmp_path / "in"), tmp_path / "out", tmp_path / "failed.flag"
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    speculation = ["spark.speculation=true", "spark.speculation.interval=100ms", "spark.speculation.quantile=0.1",
                   "spark.speculation.multiplier=1.1", "spark.speculation.minTaskRuntime=200ms"]
    extra = ["--param", f"flag={flag}", "--param", f"attempts={attempts}"]
    for conf in speculation:
        extra += ["--conf", conf]
    code, err = _cli(_command(inp, out, "test-flaky", "local[2,2]", extra))
    assert code == 0, err[-3000:]
    assert flag.exists() and "injected failure on the first attempt" in err  # the fault happened
    assert any(p.name.endswith("-1") for p in attempts.iterdir())  # and its task's second attempt ran
    _same_as_clean(spark, out, _clean(spark, inp, tmp_path / "clean", FlakyOnce(device="cpu", flag=str(flag))))


# --- two runs at once -------------------------------------------------------------------------------------------


def _snapshot(out: Path) -> dict[str, bytes]:
    """OUT's files, the lock's heartbeat aside (the first run rewrites it every 30 s)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != RUNNING_MARKER}


def test_two_runs_at_once_the_second_refuses_and_the_first_completes_untouched(spark, tmp_path):
    inp, out = _input(tmp_path / "in"), tmp_path / "out"
    waiting, go = tmp_path / "waiting.flag", tmp_path / "go.flag"
    args = _command(inp, out, "test-gate", extra=["--param", f"flag={waiting}", "--param", f"go={go}"])
    first = _cli(args, wait=False)
    try:
        deadline = time.time() + 300
        while not waiting.exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.5)
        assert waiting.exists(), "the first run never reached its third group"
        assert len(_group_records(out)) == 2  # two groups committed, the third in flight
        during = _snapshot(out)
        code, err = _cli(args)
        assert code == EXIT_BUSY, err[-3000:]
        assert "another sparkcurate run is writing to" in err and "Nothing was touched" in err
        assert _snapshot(out) == during  # nothing of the first run touched
    finally:
        go.write_text("go")
        code, err = _finish(first)
    assert code == 0, err[-3000:]
    summary = _summary(out)
    assert summary["units"]["new"] == 4 and summary["previous_run_unfinished"] is None
    gate = GateClassifier(device="cpu", flag=str(tmp_path / "clean.flag"), go=str(go))
    _same_as_clean(spark, out, _clean(spark, inp, tmp_path / "clean", gate))
