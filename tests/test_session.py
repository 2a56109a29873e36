"""The session's start: the SQL warm-up query is planned on a thread and never run as a job."""

from __future__ import annotations

import logging


def test_sql_warm_up_plans_without_running_a_job(spark):
    from sparkcurate.spark.session import warm_sql

    tracker = spark.sparkContext.statusTracker()
    jobs_before = set(tracker.getJobIdsForGroup(None))
    thread = warm_sql(spark)
    thread.join(120)
    assert not thread.is_alive()
    assert set(tracker.getJobIdsForGroup(None)) == jobs_before  # planned only: the task slots stay free


def test_sql_warm_up_failure_is_only_logged(caplog):
    from sparkcurate.spark.session import warm_sql

    class Stopped:
        def range(self, *args):
            raise RuntimeError("SparkContext was shut down")

    with caplog.at_level(logging.DEBUG, logger="sparkcurate.spark.session"):
        thread = warm_sql(Stopped())
        thread.join(10)
    assert not thread.is_alive()
    assert "SparkContext was shut down" in caplog.text
