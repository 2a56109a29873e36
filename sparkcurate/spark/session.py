"""The SparkSession: reuse the one that exists (notebook, spark-submit), else start a local one with sane defaults.

Rules:
- A running session (Databricks notebook, ``pyspark`` shell) is used as it is; ``--conf`` values are applied to it
  where Spark allows runtime changes.
- Under spark-submit the master comes from spark-submit: we never set one.
- Started from plain Python with no ``--master``: ``local[*]`` on loopback.
- Spark's own log at WARN (its INFO lines would drown the job's progress lines), unless the user chose a level
  (``spark.log.level``) or a log4j2 configuration of their own; a running session's logging is left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Iterator, Mapping

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
SPARK_LOG_LEVEL = "WARN"
LOG_LEVEL_CONF = "spark.log.level"  # Spark >= 3.5: the driver's log level, set at start (overrides log4j)
# Where Spark's built-in log4j2 profiles live (log4j2-defaults.properties, Spark 4's JSON-layout variant): a
# configuration loaded from anywhere else is the user's.
SPARK_LOG4J_PROFILES = "org/apache/spark/log4j2"
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
    if under_spark_submit() and _submitted_log_setting(conf) is None:
        # The driver JVM runs already, logging at INFO; spark.log.level takes effect as the SparkContext starts.
        builder = builder.config(LOG_LEVEL_CONF, SPARK_LOG_LEVEL)
    session = builder.getOrCreate()
    if not under_spark_submit():
        quiet_spark_log(session)
    warm_sql(session)
    return session


def warm_sql(session: "SparkSession") -> threading.Thread:
    """Plan, never run, a one-row ``mapInArrow`` query on a daemon thread of a session this process just started.

    Why: a fresh application's first DataFrame starts the SQL session state (catalog, analyzer, planner: the
    JVM loads their classes), its first Python-UDF plan imports pandas on the driver and its first execution
    generates and compiles code: ~2.4 s on the H100 machine before the executor probe's job could even be
    submitted (benchmarks/NOTES.md). The query is taken as far as its RDD (``toRdd``: the code generated). Done
    here, it runs while the executors launch and the models' pre-flight works. No Spark job is run: the
    executors' task slots stay free. A failure (a session stopped meanwhile) is logged at debug and changes
    nothing."""

    def plan() -> None:
        try:
            probe_like = session.range(0, 1, 1, 1).mapInArrow(_batches_as_they_are, "id long")
            probe_like._jdf.queryExecution().toRdd()  # planned and its code generated: an RDD, not a job
        except Exception as exc:  # noqa: BLE001 - a warm-up only; the job's own queries say what is wrong
            log.debug("planning the SQL warm-up query: %s", exc)

    thread = threading.Thread(target=plan, name="sparkcurate-sql-warm-up", daemon=True)
    thread.start()
    return thread


def _batches_as_they_are(batches):
    """The warm-up query's function (planned, never called)."""
    return batches


class SessionStart:
    """``get_session`` started in a background thread, so the driver's own start-up work (the models' pre-flight,
    which imports torch and transformers) runs while the JVM, the application and its executors come up.

    Why: in a fresh application those are sequential fixed costs of seconds each (benchmarks/NOTES.md, "Fixed
    costs of a fresh application"). Only a session this process starts is started in the background: a running
    one (notebook, test) is taken as it is by ``result``, in the calling thread (the JVM's active session is
    per thread)."""

    def __init__(self, master: str | None, conf: Mapping[str, str] | None = None) -> None:
        from sparkcurate.spark.background import Background

        self.master, self.conf = master, dict(conf or {})
        self._start: Background[SparkSession] | None = None
        if not _session_running():
            self._start = Background(get_session, self.master, self.conf, name="sparkcurate-session-start")

    def result(self) -> "SparkSession":
        """The session, once started (a start that failed raises its error here)."""
        if self._start is None:
            return get_session(self.master, self.conf)
        session = self._start.result()
        # The JVM's active session is per thread: made this thread's too, so what looks for the active session
        # here (stopping_own_session, SparkSession.getActiveSession) finds the one started in the background.
        try:
            session._jvm.SparkSession.setActiveSession(session._jsparkSession)
        except Exception as exc:  # a session without a JVM handle (Spark Connect) has no per-thread state here
            log.debug("could not make the session active in this thread: %s", exc)
        return session

    def discard(self) -> None:
        """The job will not run (a check failed meanwhile): stop the session this started, once it is up, so the
        application ends cleanly instead of at the JVM's exit."""
        if self._start is None:
            return
        try:
            session = self._start.result()
        except BaseException:  # noqa: BLE001 - no session came up: nothing to stop (the outcome is decided)
            return
        try:
            session.stop()
        except Exception as exc:  # the command's outcome is decided already
            log.debug("stopping Spark: %s", exc)


def _session_running() -> bool:
    """Whether this process has a SparkContext already (a notebook's, a test's, an earlier job's)."""
    from pyspark import SparkContext

    return SparkContext._active_spark_context is not None


@contextlib.contextmanager
def stopping_own_session() -> Iterator[None]:
    """Stop, on leaving, the Spark session started inside (when none was running on entry), so the application
    ends cleanly: a local-cluster left to the JVM's exit logs shutdown errors after the job's last line. A session
    that was running already (a notebook's, a test's) is left alone."""
    from pyspark.sql import SparkSession

    running = SparkSession.getActiveSession()
    try:
        yield
    finally:
        session = SparkSession.getActiveSession() if running is None else None
        if session is not None:
            try:
                session.stop()
            except Exception as exc:  # the job's outcome is decided already
                log.debug("stopping Spark: %s", exc)


def users_log_setting(conf: Mapping[str, str], log4j_location: str | None) -> str | None:
    """How the user chose Spark's log level (a ``spark.log.level`` value or their own log4j2 configuration file),
    or None when Spark runs on its built-in defaults and sparkcurate may quiet it."""
    if conf.get(LOG_LEVEL_CONF):
        return f"{LOG_LEVEL_CONF}={conf[LOG_LEVEL_CONF]}"
    if log4j_location and SPARK_LOG4J_PROFILES not in log4j_location:
        return f"log4j2 configuration {log4j_location}"
    return None


def log4j_config_location(jvm) -> str | None:
    """Where the driver JVM's log4j2 configuration came from: None for log4j's built-in default, "(unknown)" when
    it cannot be read (then the user's logging is left alone)."""
    try:
        source = jvm.org.apache.logging.log4j.LogManager.getContext(False).getConfiguration().getConfigurationSource()
        location = source.getLocation()
    except Exception as exc:  # another logging backend, or no JVM handle: leave the level alone
        log.debug("could not read the log4j2 configuration: %s", exc)
        return "(unknown)"
    return str(location) if location else None


def _submitted_log_setting(conf: Mapping[str, str]) -> str | None:
    """``users_log_setting`` under spark-submit, before the session starts: spark-submit's settings are the
    JVM's system properties, its log4j2 configuration is loaded already."""
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()
    submitted = dict(SparkConf().getAll())
    return users_log_setting({**submitted, **conf}, log4j_config_location(SparkContext._jvm))


def quiet_spark_log(session: "SparkSession") -> None:
    """Spark's driver log to WARN for a session we started, unless the user chose the level or a log4j2 file."""
    sc = session.sparkContext
    chosen = users_log_setting(dict(sc.getConf().getAll()), log4j_config_location(sc._jvm))
    if chosen is None:
        sc.setLogLevel(SPARK_LOG_LEVEL)
    else:
        log.debug("Spark's log level is the user's (%s)", chosen)


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
