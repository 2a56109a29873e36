"""Driver-side progress line for a running Spark job: documents done, docs/s, time left.

Spark's console stage bar counts tasks, not documents, and says nothing about speed. Here a
daemon thread on the driver wakes every ``interval_s`` and logs one line built from

* a ``LongAccumulator``-like ``counter`` (``.value``) that tasks add their finished
  documents to. Accumulators only reach the driver when a task *completes*, so the count
  moves in steps of one partition;
* ``sc.statusTracker()``: completed / total tasks of the active stages, so there is visible
  progress before the first task has finished and the counter has moved.

With ``total`` known (e.g. the input record count), the time left is
``(total - done) / rate``. Accumulator updates from retried tasks can be counted twice, so
``done`` may overshoot; percentages are capped at 100 and the line stays an estimate.

Reading the tracker goes through py4j, which is thread-safe; any error while reading is
logged at DEBUG and never reaches the job.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

logger = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """Short human duration: ``45s``, ``1m20s``, ``2h05m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def docs_per_s(done: int, seconds: float) -> float | None:
    """Documents per second, rounded the one way every figure shows it: to 0.1 below 10 docs/s, to a whole
    number above. The console lines, ``_summary.json`` and the report all show this value, so a run's numbers
    agree wherever they are read. None when nothing was done or no time passed."""
    if done <= 0 or seconds <= 0:
        return None
    rate = done / seconds
    return round(rate, 1) if rate < 10 else float(round(rate))


def rate_text(rate: float) -> str:
    """``rate`` (from :func:`docs_per_s`) as the console shows it: ``2.1 docs/s``, ``1,234 docs/s``."""
    return f"{rate:,.1f} docs/s" if rate < 10 else f"{rate:,.0f} docs/s"


def format_progress(
    done: int,
    elapsed_s: float,
    total: int | None = None,
    tasks_done: int | None = None,
    tasks_total: int | None = None,
    *,
    name: str = "classify",
    units: tuple[int, int] | None = None,
    units_left_s: float | None = None,
) -> str:
    """One progress line, e.g. ``classify: 12,345 docs done (40% of tasks), 812 docs/s, ~1m20s left``.

    Pure (no Spark, no clock) so it can be tested exactly. ``total`` adds a document
    percentage and the time left; ``tasks_*`` come from Spark's status tracker. ``units``
    (done, total input units: reused ones count as done) adds ``units 3/10`` and, with
    ``units_left_s`` (the job's estimate from the bytes of the units left), the time left for the
    whole input.
    """
    done = max(0, int(done))
    if total is not None and total > 0:
        head = f"{done:,}/{total:,} docs done ({min(100, 100 * done // total)}%)"
    else:
        head = f"{done:,} docs done"
    if tasks_total:
        tasks_done = max(0, min(tasks_done or 0, tasks_total))
        head += f" ({100 * tasks_done // tasks_total}% of tasks, {tasks_done:,}/{tasks_total:,})"
    parts = [f"{name}: {head}"]
    if units is not None:
        parts.append(f"units {max(0, units[0]):,}/{units[1]:,} done"
                     + (f" (~{format_duration(units_left_s)} left)" if units_left_s is not None else ""))
    if done == 0 or elapsed_s <= 0:
        parts.append("waiting for the first tasks to finish")
        return ", ".join(parts)
    parts.append(rate_text(docs_per_s(done, elapsed_s)))
    if total is not None and total > 0:
        left = max(0, total - done) * elapsed_s / done
        parts.append(f"~{format_duration(left)} left" if left > 0 else "finishing")
    return ", ".join(parts)


def units_left_s(elapsed_s: float, bytes_done: int, bytes_left: int) -> float | None:
    """Time left for the units not done yet, from this run's pace so far (seconds per input byte of the units it
    committed): None until a unit is committed. Reused units cost nothing, so they are in neither figure."""
    if bytes_done <= 0 or elapsed_s <= 0:
        return None
    return max(0, bytes_left) * elapsed_s / bytes_done


def format_final(done: int, elapsed_s: float, *, name: str = "classify", failed: bool = False) -> str:
    """The closing line, logged when the ``with`` block ends; its rate is :func:`docs_per_s` of the same
    numbers (``classify_docs_per_s`` in ``_summary.json``)."""
    verb = "stopped" if failed else "finished"
    rate_value = docs_per_s(done, elapsed_s)
    rate = f", {rate_text(rate_value)}" if rate_value is not None else ""
    return f"{name}: {verb}, {max(0, int(done)):,} docs in {format_duration(elapsed_s)}{rate}"


def task_progress(status_tracker: Any) -> tuple[int, int] | None:
    """(completed, total) tasks over the active stages, or None when no stage is active.

    A stage can finish between listing ids and asking for its info (``None``); it is skipped.
    """
    done = total = 0
    for stage_id in status_tracker.getActiveStageIds():
        info = status_tracker.getStageInfo(stage_id)
        if info is None:
            continue
        done += int(info.numCompletedTasks)
        total += int(info.numTasks)
    return (done, total) if total else None


class ProgressReporter:
    """Context manager that logs a progress line every ``interval_s`` while a job runs.

    ``with ProgressReporter(sc, counter, total=n): df.write...`` — ``sc`` may be None (no
    task counts). ``quiet=True`` starts no thread and only logs the final line at DEBUG.
    ``clock`` is injectable so tests can drive ``tick()`` deterministically without Spark.
    """

    def __init__(
        self,
        sc: Any,
        counter: Any,
        total: int | None = None,
        interval_s: float = 5.0,
        quiet: bool = False,
        log: logging.Logger | None = None,
        *,
        name: str = "classify",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        if total is not None and total < 0:
            raise ValueError(f"total must be None or >= 0, got {total}")
        self.sc = sc
        self.counter = counter
        self.total = total
        self.interval_s = interval_s
        self.quiet = quiet
        self.log = log or logger
        self.name = name
        self._clock = clock
        self._start: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_line: str | None = None
        self._exact_done: int | None = None
        # Input units done / in all, and the time left for the rest (``set_units``), when the job commits units.
        self.units: tuple[int, int] | None = None
        self.units_left_s: float | None = None
        # What the closing line reported (set when the block ends): documents, seconds, docs/s.
        self.final_done: int | None = None
        self.final_elapsed_s: float | None = None
        self.final_rate: float | None = None

    # ---- reading the job's state ---------------------------------------------------------

    def _done(self) -> int:
        value = self.counter.value
        return int(value) if value is not None else 0

    def _tasks(self) -> tuple[int, int] | None:
        if self.sc is None:
            return None
        try:
            return task_progress(self.sc.statusTracker())
        except Exception:  # the context may be stopping; progress must never break the job
            self.log.debug("could not read Spark task progress", exc_info=True)
            return None

    def set_done(self, done: int) -> None:
        """The exact number of documents done, for the closing line, once the caller has counted them: the
        counter is a live estimate (a retried task adds its documents again)."""
        self._exact_done = int(done)

    def set_units(self, done: int, total: int, left_s: float | None = None) -> None:
        """Units done (reused ones included) out of ``total``, and the estimated time left for the rest."""
        self.units, self.units_left_s = (int(done), int(total)), left_s

    def elapsed_s(self) -> float:
        return 0.0 if self._start is None else max(0.0, self._clock() - self._start)

    def line(self) -> str:
        """The current progress line (reads the counter and the status tracker)."""
        tasks = self._tasks()
        return format_progress(self._done(), self.elapsed_s(), self.total,
                               tasks[0] if tasks else None, tasks[1] if tasks else None, name=self.name,
                               units=self.units, units_left_s=self.units_left_s)

    def tick(self) -> str:
        """Compute and log one line (INFO; nothing when quiet); returns it for callers/tests."""
        text = self.line()
        self.last_line = text
        if not self.quiet:
            self.log.info("%s", text)
        return text

    # ---- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:
                self.log.debug("progress tick failed", exc_info=True)

    def __enter__(self) -> "ProgressReporter":
        self._start = self._clock()
        self._stop.clear()
        if not self.quiet:
            self._thread = threading.Thread(target=self._run, name=f"sparkcurate-progress-{self.name}",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, self.interval_s))
            self._thread = None
        done = self._exact_done
        if done is None:
            try:
                done = self._done()
            except Exception:
                self.log.debug("could not read the progress counter", exc_info=True)
                done = 0
        elapsed = self.elapsed_s()
        self.final_done, self.final_elapsed_s, self.final_rate = done, elapsed, docs_per_s(done, elapsed)
        text = format_final(done, elapsed, name=self.name, failed=exc_type is not None)
        self.last_line = text
        self.log.log(logging.DEBUG if self.quiet else logging.INFO, "%s", text)
