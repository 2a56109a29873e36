"""What a run prints: the job's own lines, not warnings or Spark's chatter that say nothing about the job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLES

pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess run: this checkout's code importable by the driver and Spark's workers."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1", **extra}


def _pandas_major() -> int:
    import pandas

    return int(pandas.__version__.split(".")[0])


@pytest.mark.skipif(_pandas_major() < 3, reason="pyspark warns about pandas >= 3 only")
def test_command_prints_no_pandas_future_warning(deberta_dir, tmp_path: Path):
    res = subprocess.run(
        [sys.executable, "-m", "sparkcurate.cli", "classify", "--input", str(SAMPLES), "--output",
         str(tmp_path / "out"), "--classifier", f"domain={deberta_dir}", "--no-report"],
        capture_output=True, text=True, timeout=600, cwd=REPO, env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    warned = [line for line in res.stderr.splitlines() if "FutureWarning" in line or "pandas >= 3" in line]
    assert not warned, warned
    assert "input records" in res.stderr  # the job's own summary line is still there
