"""The SparkSession: reuse the one that exists (notebook, spark-submit), else start a local one with sane defaults.

Rules:
- A running session (Databricks notebook, ``pyspark`` shell) is used as it is; ``--conf`` values are applied to it
  where Spark allows runtime changes.
- Under spark-submit the master comes from spark-submit: we never set one.
- Started from plain Python with no ``--master``: ``local[*]`` on loopback.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

# Settings every sparkcurate job wants, unless the user or the platform set them already.
JOB_DEFAULTS: dict[str, str] = {
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.python.worker.reuse": "true",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "4096",
    "spark.sql.execution.arrow.maxBytesPerBatch": str(64 * 2**20),
    "spark.executorEnv.TOKENIZERS_PARALLELISM": "true",
    # Rejects and summaries must be honest: never skip a corrupt or vanished file without failing.
    "spark.sql.files.ignoreCorruptFiles": "false",
    "spark.sql.files.ignoreMissingFiles": "false",
}
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
}


def under_spark_submit() -> bool:
    """spark-submit starts the Python driver with a gateway to its JVM already running."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_session(master: str | None = None, conf: Mapping[str, str] | None = None,
                app_name: str = "sparkcurate") -> "SparkSession":
    from pyspark.sql import SparkSession

    conf = dict(conf or {})
    active = SparkSession.getActiveSession()
    if active is not None:
        if master:
            log.warning("a Spark session is already running (master %s): --master %s is ignored",
                        active.sparkContext.master, master)
        apply_runtime_conf(active, {**JOB_DEFAULTS, **conf}, only_unset=True, explicit=conf)
        return active
    builder = SparkSession.builder.appName(app_name)
    local = False
    if master:
        builder = builder.master(master)
        local = master.startswith("local")
    elif not under_spark_submit():
        builder = builder.master("local[*]")
        local = True
    if local:
        # Workers on this machine use this interpreter (the one that has torch and sparkcurate installed).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        for key, value in LOCAL_DEFAULTS.items():
            builder = builder.config(key, value)
    for key, value in {**JOB_DEFAULTS, **conf}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    if not under_spark_submit():
        session.sparkContext.setLogLevel(os.environ.get("SPARKCURATE_SPARK_LOG_LEVEL", "WARN"))
    return session


def apply_runtime_conf(spark: "SparkSession", conf: Mapping[str, str], only_unset: bool,
                       explicit: Mapping[str, str]) -> None:
    """Set SQL confs on a running session: defaults only where unset, explicit ``--conf`` values always."""
    for key, value in conf.items():
        if only_unset and key not in explicit and spark.conf.get(key, None) is not None:
            continue
        try:
            spark.conf.set(key, value)
        except Exception as exc:  # static confs (e.g. executor settings) cannot change at run time
            if key in explicit:
                log.warning("could not set %s on the running session: %s", key, exc)


def parse_conf(items: list[str] | None) -> dict[str, str]:
    """``key=value`` strings from ``--conf`` into a dict, with a clear error for a malformed one."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--conf takes key=value, got {item!r}")
        out[key.strip()] = value
    return out
