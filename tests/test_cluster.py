"""spark-submit of jobs/classify.py on local-cluster with fake GPUs: GPU-scheduled tasks, each using the address
it was given, and the same output as the command run in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparkcurate.cli import main
from tests.conftest import REPO, SAMPLES

pytestmark = pytest.mark.slow


def _spark_home() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent)


def _rows(spark, out: Path) -> dict[str, dict]:
    return {r["id"]: r.asDict(recursive=True) for r in spark.read.json(str(out)).collect()}


def test_spark_submit_local_cluster_with_gpu_scheduling(spark, deberta_dir, tmp_path):
    args = ["--input", str(SAMPLES), "--output", None, "--classifier", f"domain={deberta_dir}",
            "--prob-column", "domain_prob", "--quiet"]
    local_out = tmp_path / "in-process"
    assert main(["classify", *[str(local_out) if a is None else a for a in args]]) == 0

    out = tmp_path / "submitted"
    discovery = str(REPO / "conf" / "fakeGpusResources.sh")
    gpu_conf = {
        "spark.worker.resource.gpu.amount": "2",
        "spark.worker.resource.gpu.discoveryScript": discovery,
        "spark.executor.resource.gpu.amount": "1",
        "spark.executor.resource.gpu.discoveryScript": discovery,
        "spark.task.resource.gpu.amount": "1",
        "spark.executorEnv.SPARKCURATE_FAKE_GPUS": "2",
        "spark.driver.host": "127.0.0.1",
    }
    cmd = [os.path.join(_spark_home(), "bin", "spark-submit"), "--master", "local-cluster[2,1,1024]"]
    for key, value in gpu_conf.items():
        cmd += ["--conf", f"{key}={value}"]
    cmd += [str(REPO / "jobs" / "classify.py"), *[str(out) if a is None else a for a in args]]
    env = {**os.environ, "SPARK_HOME": _spark_home(), "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1", "SPARKCURATE_FAKE_GPUS": "2"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr[-4000:]

    summary = json.loads((out / "_summary.json").read_text())
    assert summary["spark"]["master"] == "local-cluster[2,1,1024]"  # spark-submit's master, not one of ours
    assert summary["spark"]["task_gpu_amount"] == "1"
    devices = summary["task_devices"]
    assert devices and all("GPU address" in k for k in devices), devices  # every task was given a GPU
    assert {k.split("GPU address ")[1].rstrip(")") for k in devices} <= {"0", "1"}
    assert summary["task_stats"]["docs"] == summary["input_records"] == 31  # accumulated across executors
    assert summary["input_splits"]["slots"] == 2  # two executors with one GPU each: the input cut for both

    api_out = tmp_path / "python-api"
    from sparkcurate.classifiers import DomainClassifier
    from sparkcurate.pipeline import JobOptions, run

    run(spark, JobOptions(input=str(SAMPLES), output=str(api_out), classifiers=[
        DomainClassifier(model=str(deberta_dir), prob_column="domain_prob")]))

    got, want, api = _rows(spark, out), _rows(spark, local_out), _rows(spark, api_out)
    assert set(got) == set(want) == set(api) and len(got) == 28
    for key, row in want.items():
        assert api[key]["domain_pred"] == row["domain_pred"] and api[key]["domain_prob"] == row["domain_prob"]
        assert got[key]["domain_pred"] == row["domain_pred"] and got[key]["file_name"] == row["file_name"]
        assert max(abs(a - b) for a, b in zip(got[key]["domain_prob"], row["domain_prob"])) < 1e-5
