"""Progress line: pure formatting, and the reporter driven by fakes (no Spark, fake clock)."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import pytest

from sparkcurate.report.progress import (
    ProgressReporter,
    format_duration,
    format_final,
    format_progress,
    task_progress,
)

LOG_NAME = "test.progress"


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (44.6, "45s"), (80, "1m20s"), (3599, "59m59s"),
                                           (7500, "2h05m"), (-3, "0s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_format_progress_with_tasks_and_no_total():
    line = format_progress(12345, 15.2, tasks_done=4, tasks_total=10)
    assert line == "classify: 12,345 docs done (40% of tasks, 4/10), 812 docs/s"


def test_format_progress_with_total_gives_eta():
    # 12,000 docs in 15 s = 800 docs/s; 64,000 left -> 80 s.
    line = format_progress(12000, 15.0, total=76000)
    assert line == "classify: 12,000/76,000 docs done (15%), 800 docs/s, ~1m20s left"


def test_format_progress_before_first_task_and_overshoot():
    assert format_progress(0, 3.0, total=100, tasks_done=0, tasks_total=8, name="quality") == (
        "quality: 0/100 docs done (0%) (0% of tasks, 0/8), waiting for the first tasks to finish")
    # Retried tasks can double-count accumulator updates: never over 100% or a negative ETA.
    assert format_progress(120, 2.0, total=100) == "classify: 120/100 docs done (100%), 60 docs/s, finishing"
    assert format_progress(5, 2.0) == "classify: 5 docs done, 2.5 docs/s"


def test_format_final():
    assert format_final(1000, 125.0) == "classify: finished, 1,000 docs in 2m05s, 8.0 docs/s"
    assert format_final(0, 3.0, failed=True) == "classify: stopped, 0 docs in 3s"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTracker:
    """Mimics pyspark.StatusTracker: stage 2 vanishes between listing and lookup."""

    def __init__(self, stages: dict[int, tuple[int, int]]) -> None:
        self.stages = stages

    def getActiveStageIds(self):
        return list(self.stages) + [2]

    def getStageInfo(self, stage_id):
        if stage_id not in self.stages:
            return None
        done, total = self.stages[stage_id]
        return SimpleNamespace(numCompletedTasks=done, numTasks=total)


class FakeSc:
    def __init__(self, tracker) -> None:
        self.tracker = tracker

    def statusTracker(self):
        if isinstance(self.tracker, Exception):
            raise self.tracker
        return self.tracker


def test_task_progress_sums_active_stages_and_skips_finished():
    assert task_progress(FakeTracker({0: (3, 10), 1: (1, 6)})) == (4, 16)
    assert task_progress(FakeTracker({})) is None


def test_reporter_ticks_deterministically(caplog):
    clock, counter = FakeClock(), SimpleNamespace(value=0)
    tracker = FakeTracker({0: (0, 10)})
    log = logging.getLogger(LOG_NAME)
    caplog.set_level(logging.INFO, logger=LOG_NAME)
    with ProgressReporter(FakeSc(tracker), counter, total=10000, interval_s=3600, log=log, clock=clock) as rep:
        clock.now += 5
        assert rep.tick() == ("classify: 0/10,000 docs done (0%) (0% of tasks, 0/10), "
                              "waiting for the first tasks to finish")
        clock.now += 5
        counter.value, tracker.stages[0] = 4000, (4, 10)
        assert rep.tick() == "classify: 4,000/10,000 docs done (40%) (40% of tasks, 4/10), 400 docs/s, ~15s left"
        counter.value = 10000
    messages = [r.getMessage() for r in caplog.records if r.name == LOG_NAME]
    assert messages[-1] == "classify: finished, 10,000 docs in 10s, 1,000 docs/s"
    assert len(messages) == 3 and all(r.levelno == logging.INFO for r in caplog.records if r.name == LOG_NAME)


def test_reporter_survives_status_tracker_errors(caplog):
    counter = SimpleNamespace(value=50)
    clock = FakeClock()
    rep = ProgressReporter(FakeSc(RuntimeError("SparkContext stopped")), counter, interval_s=3600,
                           log=logging.getLogger(LOG_NAME), clock=clock)
    with rep:
        clock.now += 10
        assert rep.tick() == "classify: 50 docs done, 5.0 docs/s"
    rep_no_sc = ProgressReporter(None, counter, interval_s=3600, quiet=True, clock=clock)
    with rep_no_sc:
        clock.now += 5
        assert rep_no_sc.tick() == "classify: 50 docs done, 10 docs/s"


def test_quiet_logs_only_final_line_at_debug(caplog):
    caplog.set_level(logging.DEBUG, logger=LOG_NAME)
    clock = FakeClock()
    rep = ProgressReporter(None, SimpleNamespace(value=7), interval_s=0.01, quiet=True,
                           log=logging.getLogger(LOG_NAME), clock=clock)
    with rep:
        assert rep._thread is None  # no background thread at all
        rep.tick()
        clock.now += 2
    records = [r for r in caplog.records if r.name == LOG_NAME]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.DEBUG, "classify: finished, 7 docs in 2s, 3.5 docs/s")]


def test_background_thread_logs_and_stops(caplog):
    caplog.set_level(logging.INFO, logger=LOG_NAME)
    ticked = threading.Event()

    class Counter:
        @property
        def value(self):
            ticked.set()
            return 3

    rep = ProgressReporter(None, Counter(), interval_s=0.01, log=logging.getLogger(LOG_NAME))
    with rep:
        thread = rep._thread
        assert thread is not None and thread.daemon
        assert ticked.wait(timeout=10), "progress thread never ticked"
        deadline = time.monotonic() + 10
        while rep.last_line is None and time.monotonic() < deadline:
            time.sleep(0.01)
    assert not thread.is_alive()
    messages = [r.getMessage() for r in caplog.records if r.name == LOG_NAME]
    assert any(m.startswith("classify: 3 docs done") for m in messages[:-1])
    assert messages[-1].startswith("classify: finished, 3 docs in ")


def test_exception_in_block_is_reported_as_stopped_and_propagates(caplog):
    caplog.set_level(logging.INFO, logger=LOG_NAME)
    with pytest.raises(ValueError, match="boom"):
        with ProgressReporter(None, SimpleNamespace(value=1), interval_s=3600, log=logging.getLogger(LOG_NAME)):
            raise ValueError("boom")
    assert caplog.records[-1].getMessage().startswith("classify: stopped, 1 docs in ")


def test_bad_arguments():
    with pytest.raises(ValueError, match="interval_s"):
        ProgressReporter(None, SimpleNamespace(value=0), interval_s=0)
    with pytest.raises(ValueError, match="total"):
        ProgressReporter(None, SimpleNamespace(value=0), total=-1)


@pytest.mark.slow
def test_reporter_against_real_spark(caplog, spark):
    """The real StatusTracker and LongAccumulator APIs match what the reporter reads."""
    sc = spark.sparkContext
    counter = sc.accumulator(0)

    def work(rows):
        n = 0
        for _ in rows:
            time.sleep(0.003)
            n += 1
        counter.add(n)
        yield n

    caplog.set_level(logging.INFO, logger=LOG_NAME)
    with ProgressReporter(sc, counter, total=2000, interval_s=0.2, log=logging.getLogger(LOG_NAME)) as rep:
        assert sum(sc.parallelize(range(2000), 8).mapPartitions(work).collect()) == 2000
        assert rep.line().startswith("classify: 2,000/2,000 docs done (100%)")
    messages = [r.getMessage() for r in caplog.records if r.name == LOG_NAME]
    assert any("of tasks" in m for m in messages[:-1]), messages
    assert messages[-1].startswith("classify: finished, 2,000 docs in ")
