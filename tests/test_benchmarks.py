"""A CPU smoke of the benchmark harness: it runs and writes results in the committed format. Never timed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _run(module: str, args: list[str], tmp_path) -> dict:
    res = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=900,
                         cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


@pytest.mark.slow
def test_gpu_stage_smoke(tmp_path):
    doc = _run("benchmarks.gpu_stage", ["--smoke", "--out-dir", str(tmp_path)], tmp_path)
    assert {"device", "date", "command", "results"} <= set(doc)
    names = {r["name"] for r in doc["results"]}
    assert {"sparkcurate_gpu_stage", "sorted_bf16_baseline"} <= names
    assert all(r.get("docs_per_s") is None or r["docs_per_s"] > 0 for r in doc["results"])


@pytest.mark.slow
def test_spark_e2e_smoke(tmp_path):
    doc = _run("benchmarks.spark_e2e", ["--smoke", "--results", str(tmp_path)], tmp_path)
    results = {r["name"]: r for r in doc["results"]}
    assert results["sparkcurate_spark_e2e"]["docs"] == 200 and results["sparkcurate_spark_e2e"]["docs_per_s"] > 0
    assert results["predict_batch_udf_fp32"]["docs"] == 100
