"""Faults of docs/reliability.md: retried tasks, killed Python workers and executors, a killed driver, failed
re-runs over good output, GPU out-of-memory, models that fail to load, a task without its GPU, worker reuse off,
and determinism across partitioning and Arrow batch sizes. Each checks exactly-once output and an honest summary.

Faults are injected by test classifiers that misbehave on a task's first attempt (``TaskContext.attemptNumber``),
so production code has no test hooks. Runs that need another Spark master run in a subprocess.
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

import numpy as np
import pytest

from sparkcurate.classifiers import DomainClassifier
from sparkcurate.models.loading import ModelArtifactError
from sparkcurate.pipeline import JobOptions, run
from tests.test_bad_input import LengthClassifier

REPO = Path(__file__).resolve().parent.parent


def _first_attempt_of_partition_0() -> bool:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return ctx is not None and ctx.attemptNumber() == 0 and ctx.partitionId() == 0


@dataclass
class FlakyClassifier(LengthClassifier):
    """Raises while loading on the first attempt of partition 0."""

    def load_engine(self, device: str):
        if _first_attempt_of_partition_0():
            raise RuntimeError("injected failure on the first attempt")
        return super().load_engine(device)


@dataclass
class WorkerKiller(LengthClassifier):
    """Kills its own Python worker mid-batch on the first attempt of partition 0."""

    def postprocess(self, outputs):
        if _first_attempt_of_partition_0():
            os.kill(os.getpid(), signal.SIGKILL)
        return super().postprocess(outputs)


@dataclass
class ExecutorKiller(LengthClassifier):
    """Kills the executor JVM (the parent of the Python daemon that forked this worker) on the first attempt."""

    def postprocess(self, outputs):
        if _first_attempt_of_partition_0():
            daemon = os.getppid()
            with open(f"/proc/{daemon}/stat") as fh:
                jvm = int(fh.read().rsplit(")", 1)[1].split()[1])
            os.kill(jvm, signal.SIGKILL)
            time.sleep(30)
        return super().postprocess(outputs)


@dataclass
class BrokenOnExecutors(LengthClassifier):
    """Passes the driver's pre-flight, fails to load on every executor (a node that sees another checkpoint)."""

    def load_engine(self, device: str):
        raise ModelArtifactError("injected: model.safetensors is truncated on this executor")


@dataclass
class SleepyClassifier(LengthClassifier):
    """Signals that classification started (a flag file), then takes a long time."""

    flag: str = ""

    def postprocess(self, outputs):
        Path(self.flag).write_text("started")
        time.sleep(120)
        return super().postprocess(outputs)


@dataclass
class OOMDomainClassifier(DomainClassifier):
    """The real model, whose forward raises torch.OutOfMemoryError on more than two documents at once."""

    name: ClassVar[str] = "domain"

    def load_engine(self, device: str):
        import torch

        engine = super().load_engine(device)
        forward = engine.model.forward

        def limited(ids, *args, **kwargs):
            if ids.shape[0] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")
            return forward(ids, *args, **kwargs)

        engine.model.forward = limited
        return engine


# ---------------------------------------------------------------------------------------------------------------


def _input(root: Path, files: int = 3, per_file: int = 20) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        with open(root / f"f{f}.jsonl", "w") as fh:
            for i in range(per_file):
                fh.write(json.dumps({"id": f"{f}-{i}", "text": "x" * (i % 9 + 1)}) + "\n")
    return root


def _ids(out: Path) -> list[str]:
    return sorted(json.loads(line)["id"] for p in out.glob("file_name=*/*.json")
                  for line in p.read_text().split("\n") if line)


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()
            if not p.name.startswith(".")}


SCRIPT = """
import json, sys
import tests.test_faults as m
from sparkcurate.spark.session import get_session
from sparkcurate.pipeline import JobOptions, run
master, cls, inp, out, conf, kwargs = sys.argv[1:7]
spark = get_session(master, json.loads(conf))
s = run(spark, JobOptions(input=inp, output=out, classifiers=[getattr(m, cls)(**json.loads(kwargs))], quiet=True))
print("SUMMARY " + json.dumps({k: s[k] for k in ("input_records", "output_records", "filtered_records",
                                                 "rejected_records", "previous_run_unfinished")}))
spark.stop()
"""


def _script(master: str, cls: str, inp: Path, out: Path, conf: dict | None = None, kwargs: dict | None = None,
            env: dict | None = None, timeout: int = 300) -> tuple[dict, str]:
    """Run the job in a fresh process (its own SparkContext); its summary and its log."""
    proc = subprocess.run([sys.executable, "-c", SCRIPT, master, cls, str(inp), str(out), json.dumps(conf or {}),
                           json.dumps(kwargs or {})], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("SUMMARY ")][-1]
    return json.loads(line[len("SUMMARY "):]), proc.stderr


# --- retries, killed workers, worker reuse off: one local[2,2] session in a subprocess ---------------------------


@pytest.mark.slow
@pytest.mark.parametrize("cls", ["FlakyClassifier", "WorkerKiller"])
def test_retried_task_gives_exactly_once_output_with_worker_reuse_off(tmp_path, cls):
    inp = _input(tmp_path / "in")
    out = tmp_path / "out"
    conf = {"spark.python.worker.reuse": "false", "spark.ui.enabled": "false",
            "spark.sql.execution.arrow.maxRecordsPerBatch": "7"}
    summary, log = _script("local[2,2]", cls, inp, out, conf)
    evidence = {"FlakyClassifier": "injected failure on the first attempt", "WorkerKiller": "Lost task"}[cls]
    assert evidence in log  # the fault happened, and the retry made up for it
    assert summary["input_records"] == summary["output_records"] == 60
    assert _ids(out) == sorted(f"{f}-{i}" for f in range(3) for i in range(20))


@pytest.mark.slow
def test_executor_killed_in_local_cluster(tmp_path):
    import pyspark

    inp = _input(tmp_path / "in")
    out = tmp_path / "out"
    summary, log = _script("local-cluster[2,1,1024]", "ExecutorKiller", inp, out, {"spark.ui.enabled": "false"},
                           env={"SPARK_HOME": os.path.dirname(pyspark.__file__)}, timeout=420)
    assert "Lost executor" in log or "ExecutorLostFailure" in log or "Executor lost" in log, log[-3000:]
    assert summary["input_records"] == summary["output_records"] == 60
    assert _ids(out) == sorted(f"{f}-{i}" for f in range(3) for i in range(20))


# --- the driver killed mid-job ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_driver_killed_mid_job_keeps_old_output_and_next_run_says_so(spark, tmp_path):
    inp = _input(tmp_path / "in")
    out = tmp_path / "out"
    run(spark, JobOptions(input=str(inp), output=str(out), classifiers=[LengthClassifier()]))
    good = _snapshot(out)
    flag = tmp_path / "started.flag"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, "local[2]", "SleepyClassifier", str(inp), str(out),
                             json.dumps({"spark.ui.enabled": "false"}), json.dumps({"flag": str(flag)})],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not flag.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert flag.exists(), "the job never started classifying"
        assert (out / "_RUNNING.json").exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started (its own session)
        proc.wait(timeout=60)
    marker = json.loads((out / "_RUNNING.json").read_text())
    after_kill = _snapshot(out)
    assert {k: v for k, v in after_kill.items() if k != "_RUNNING.json"} == good  # old output, and says so
    summary = run(spark, JobOptions(input=str(inp), output=str(out), classifiers=[LengthClassifier()]))
    assert summary["previous_run_unfinished"]["run_id"] == marker["run_id"]
    assert not (out / "_RUNNING.json").exists()
    assert summary["output_records"] == 60 and len(_ids(out)) == 60


# --- a failed re-run over good output --------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["partitioned", "mirror"])
def test_failed_rerun_leaves_earlier_output_intact(spark, tmp_path, layout):
    inp = _input(tmp_path / "in")
    out = tmp_path / "out"
    run(spark, JobOptions(input=str(inp), output=str(out), layout=layout, classifiers=[LengthClassifier()]))
    good = _snapshot(out)
    with pytest.raises(Exception, match="injected: model.safetensors is truncated"):
        run(spark, JobOptions(input=str(inp), output=str(out), layout=layout, classifiers=[BrokenOnExecutors()]))
    assert _snapshot(out) == good


def test_rerun_where_a_file_now_keeps_nothing_drops_its_old_output(spark, tmp_path):
    inp = _input(tmp_path / "in")
    out = tmp_path / "out"
    run(spark, JobOptions(input=str(inp), output=str(out), classifiers=[LengthClassifier()]))
    (inp / "f1.jsonl").write_text('{"id": "only", "text": ""}\n')
    summary = run(spark, JobOptions(input=str(inp), output=str(out), classifiers=[LengthClassifier()]))
    assert summary["output_records"] == len(_ids(out)) == 40
    assert not (out / "file_name=f1.jsonl").exists()


# --- GPU out-of-memory, model load failure, no GPU --------------------------------------------------------------


def test_out_of_memory_through_spark_gives_the_same_predictions(spark, deberta_dir, tmp_path, sample_texts):
    inp = tmp_path / "in"
    inp.mkdir()
    with open(inp / "d.jsonl", "w") as fh:
        for i, t in enumerate(sample_texts[:12]):
            fh.write(json.dumps({"id": f"d{i}", "text": t}) + "\n")

    def probs(clf, out):
        run(spark, JobOptions(input=str(inp), output=str(out), classifiers=[clf]))
        rows = [json.loads(line) for p in out.glob("file_name=*/*.json") for line in p.read_text().splitlines()]
        return {r["id"]: r["p"] for r in rows}

    plain = probs(DomainClassifier(model=str(deberta_dir), device="cpu", prob_column="p"), tmp_path / "a")
    split = probs(OOMDomainClassifier(model=str(deberta_dir), device="cpu", prob_column="p"), tmp_path / "b")
    assert set(plain) == set(split) and len(plain) == 12
    for k in plain:
        np.testing.assert_allclose(split[k], plain[k], atol=1e-5)


def test_model_that_fails_to_load_exits_3_in_seconds(deberta_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(deberta_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    inp = _input(tmp_path / "in")
    out = tmp_path / "out"
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "sparkcurate.cli", "classify", "--input", str(inp), "--output",
                           str(out), "--classifier", "domain", "--model", str(broken), "--device", "cpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    elapsed = time.time() - start
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "model check failed" in proc.stderr and "safetensors" in proc.stderr
    assert elapsed < 30 and not out.exists()  # before Spark started, before any data was read


def test_task_without_a_gpu_when_one_is_required(spark, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    inp = _input(tmp_path / "in")
    out = tmp_path / "out"
    with pytest.raises(Exception, match="--device cuda, but this machine has no usable CUDA"):
        run(spark, JobOptions(input=str(inp), output=str(out), classifiers=[LengthClassifier(device="cuda")]))
    assert not out.exists()  # refused before anything was written


# --- determinism ---------------------------------------------------------------------------------------------------


def test_same_predictions_whatever_partitioning_and_arrow_batch(spark, deberta_dir, sample_texts, tmp_path):
    from sparkcurate.io.sources.jsonl import read_jsonl

    inp = tmp_path / "in"
    inp.mkdir()
    with open(inp / "d.jsonl", "w") as fh:
        for i, t in enumerate(sample_texts[:24]):
            fh.write(json.dumps({"id": f"d{i}", "text": t}) + "\n")
    clf = DomainClassifier(model=str(deberta_dir), device="cpu", prob_column="p")
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key)
    results = []
    try:
        for parts, batch in [(1, "1000"), (3, "1"), (2, "5")]:
            spark.conf.set(key, batch)
            rows = clf(read_jsonl(spark, str(inp)).repartition(parts)).collect()
            results.append({r["id"]: (r["domain_pred"], np.array(r["p"])) for r in rows})
    finally:
        spark.conf.set(key, before)
    base = results[0]
    assert len(base) == 24
    for other in results[1:]:
        assert set(other) == set(base)
        for k in base:
            assert other[k][0] == base[k][0]
            np.testing.assert_allclose(other[k][1], base[k][1], atol=1e-5)
