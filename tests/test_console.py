"""What a run prints: the job's own lines, not warnings or Spark's chatter that say nothing about the job."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLES

# A Spark log line as log4j2's default pattern writes it: "26/12/05 20:19:25 INFO SparkContext: ...".
SPARK_INFO_LINE = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d INFO ", re.MULTILINE)


def _env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess run: this checkout's code importable by the driver and Spark's workers."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1", **extra}


def _pandas_major() -> int:
    import pandas

    return int(pandas.__version__.split(".")[0])


@pytest.mark.slow
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


def _spark_home() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent)


@pytest.mark.slow
def test_spark_submit_shows_the_jobs_lines_not_sparks_info(deberta_dir, tmp_path: Path):
    """Under spark-submit the driver JVM starts with Spark's INFO default (hundreds of lines); the job quiets it."""
    cmd = [os.path.join(_spark_home(), "bin", "spark-submit"), "--master", "local[2]",
           "--conf", "spark.driver.host=127.0.0.1", str(REPO / "jobs" / "classify.py"),
           "--input", str(SAMPLES), "--output", str(tmp_path / "out"), "--classifier", f"domain={deberta_dir}",
           "--no-report"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO,
                         env=_env(SPARK_HOME=_spark_home()))
    printed = res.stdout + res.stderr  # spark-submit passes the Python driver's stderr on through its stdout
    assert res.returncode == 0, printed[-3000:]
    info = SPARK_INFO_LINE.findall(printed)
    # Spark 4 logs its version, OS and Java lines before spark.log.level takes effect: those three at most.
    assert len(info) <= 3, printed[:3000]
    assert "sparkcurate.pipeline: classify: finished" in printed  # the job's progress lines stay
    assert "31 input records: 28 written" in printed


def test_users_log_choice_wins():
    from sparkcurate.spark.session import users_log_setting

    default = "jar:file:/x/spark-common-utils.jar!/org/apache/spark/log4j2-defaults.properties"
    assert users_log_setting({}, default) is None
    assert users_log_setting({}, None) is None  # log4j's own default: nobody chose anything
    assert users_log_setting({"spark.log.level": "INFO"}, default) == "spark.log.level=INFO"
    assert users_log_setting({}, "/etc/spark/conf/log4j2.properties") == \
        "log4j2 configuration /etc/spark/conf/log4j2.properties"
    assert users_log_setting({}, "(unknown)") is not None  # cannot tell: leave it alone


def test_session_we_start_logs_at_warn_with_sparks_default_profile(spark):
    from sparkcurate.spark.session import SPARK_LOG4J_PROFILES, log4j_config_location

    assert SPARK_LOG4J_PROFILES in (log4j_config_location(spark.sparkContext._jvm) or "")
    root = spark.sparkContext._jvm.org.apache.logging.log4j.LogManager.getRootLogger()
    assert root.getLevel().toString() == "WARN"
