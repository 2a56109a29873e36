"""The job's commit groups: the input units a run has to do, cut into groups, each done as its own Spark job and
committed before the next starts (issue: "A job of many hours: commit as it goes, resume where it stopped").

For each group: read its files (with the whole input's schema) -> classify -> persist *that group's* rows on the
executors' local disks -> count -> write its output and its rejects -> record its units as committed
(``io.units``) -> unpersist. So local disk holds one group at a time, and a driver lost in hour 8 loses at most
the group in flight: the same command again reuses every committed unit. File sinks write a group into its
staging folder (``OUT/_staging/<run>/g<N>``, recorded with its units) and the final step publishes every group at
once (``io.publish``), so readers of OUT never see a mix; a table (Delta at OUT, a catalog table) takes each
group as a transaction of its own (the sink replaces only its inputs' partitions and drops the output of its
inputs that keep nothing now).

Where a run can die, and what the next run finds (the points a fault test aims at):

1. before a group's write: the group's units are not recorded: done again;
2. during a group's write: the same; what it staged is removed (``io.publish.clean_staging``);
3. after the write, before the record: done again;
4. after the record: reused (a file sink's staged output is published by the next run's final step);
5. in the final step (``pipeline``: publish, rejects of removed units, record index, summary): every unit is
   reused; the final step runs again (publishing is idempotent: a file moved already is not moved again).

Test-only: ``SPARKCURATE_TEST_DIE_AT`` (``die_if_asked``) names one of these points, and the driver SIGKILLs itself
there, so tests/test_resume_faults.py and tests/test_atomic_publish.py kill a real command exactly at 1/3
(``written:N``), 4 (``committed:N``) or 5 (``publish_moving``, ``published``, ``final_commit``). Never set it
outside the tests.

Python workers keep their loaded models between the groups' jobs: ``spark.stage`` caches each engine in the
worker process, and Spark reuses Python workers across jobs (``spark.python.worker.reuse``, on by default).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from sparkcurate.io.commit import REJECTS_DIR, prune_stale_outputs, removes_by_name, run_outputs, write_unit_rejects
from sparkcurate.io.failures import check_no_vanished_files
from sparkcurate.io.publish import group_stage, staged_unit_outputs
from sparkcurate.io.sources.base import INTERNAL_PREFIX
from sparkcurate.report.progress import units_left_s
from sparkcurate.report.summary import Counts, classified_count, count_rows, rejected_count, unit_counts
from sparkcurate.spark.attributes import attribute_rows
from sparkcurate.spark.outcome import classified_rows, output_rows, rejected_rows, without_line_copies
from sparkcurate.spark.planning import plan_for_session, planned_splits

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

    from sparkcurate.io.commit import OutputCommit
    from sparkcurate.io.listing import InputFile, InputListing
    from sparkcurate.io.units import UnitPlan, UnitStore
    from sparkcurate.report.progress import ProgressReporter

log = logging.getLogger(__name__)

# Classifier settings that do not change a prediction (how fast, where, from which cache): left out of the
# options fingerprint, so changing them does not redo committed units.
_NOT_OUTPUT = {"batch_size", "token_budget", "device", "packed", "cache_dir", "allow_pickle", "trust_remote_code",
               "preflight_info", "model_fingerprint"}


# Test-only (module docstring): the point at which the driver kills itself; unset, nothing happens.
DIE_AT_ENV = "SPARKCURATE_TEST_DIE_AT"


def die_if_asked(point: str) -> None:
    """Test-only: SIGKILL this driver process (no cleanup, no ``finally``: as a lost machine) when
    ``SPARKCURATE_TEST_DIE_AT`` is ``point``: ``written:N`` (the Nth commit group's output and rejects are
    written, its units not yet recorded), ``committed:N`` (its units recorded), ``publish_moving`` (in the final
    step, once the first staged file is moved in), ``published`` (the Spark log and the manifest name the new
    set; the superseded files not yet removed) or ``final_commit`` (the output published and the earlier outputs
    pruned, before the rejects of removed units, the record index and the summary)."""
    if os.environ.get(DIE_AT_ENV) == point:
        log.warning("%s=%s: the driver kills itself here (test-only)", DIE_AT_ENV, point)
        os.kill(os.getpid(), signal.SIGKILL)


class StoppedForTest(RuntimeError):
    """Raised by the test-only hook ``JobOptions.stop_after_groups``: the run stops as a killed driver would,
    between two commit groups."""


def unit_targets(spark: "SparkSession", sink, opts: Any, names) -> dict[str, str]:
    """Where each unit's output lives under OUT (or under a staging folder), by file name (``Sink.target``)."""
    return {n: sink.target(spark, opts.layout, opts.file_name_column, n, opts.compression) for n in names}


def output_options(opts: Any, models: list[dict], schema: "StructType", key: str | None) -> dict[str, Any]:
    """Everything besides the input file that changes a unit's output (its fingerprint, ``io.units``): the
    classifiers' settings and models (``_NOT_OUTPUT`` left out), the formats, layout, compression and modes, the
    columns, and the schema the records are read with. ``opts``: the run's ``pipeline.JobOptions``."""
    classifiers = []
    for c in opts.classifiers:
        values = {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.name not in _NOT_OUTPUT}
        classifiers.append({"class": f"{type(c).__module__}.{type(c).__qualname__}", **values})
    return {"classifiers": classifiers, "models": models, "input_format": opts.input_format,
            "output_format": opts.output_format, "output_table": opts.output_table, "layout": opts.layout,
            "compression": opts.compression, "jsonl_mode": opts.jsonl_mode, "output_mode": opts.output_mode,
            "attribute_key": key, "file_name_column": opts.file_name_column, "schema": schema.simpleString()}


def group_schema(schema: "StructType", file_name_column: str) -> "StructType":
    """The input's own fields as the whole input was read (``schema`` of the source's DataFrame, less the
    file-name column and the job's columns): every group is read with it, so a group's records have the columns
    the whole input gives them, not only those its own files hold."""
    from pyspark.sql import types as T

    return T.StructType([f for f in schema.fields
                         if f.name != file_name_column and not f.name.startswith(INTERNAL_PREFIX)])


@dataclass
class GroupJob:
    """What every commit group of one run shares (``pipeline.run`` builds it)."""

    spark: "SparkSession"
    opts: Any  # pipeline.JobOptions (above this module)
    source: Any
    sink: Any
    listing: "InputListing"
    whole: "DataFrame"  # the source's DataFrame of the whole listing (read as one group when it is one)
    text_field: str
    attributes: bool
    key: str | None
    meters: Any  # pipeline.TaskMeters
    commit: "OutputCommit"
    store: "UnitStore"
    units: "UnitPlan"
    laps: Any  # pipeline.Laps
    resumable: bool = True  # the source reads any group of its files alone (Source.resumable)
    plans: list[Any] = field(default_factory=list)  # each group's split plan (None where Spark's is kept)
    classified: int = 0  # records classified by this run's groups

    def run(self, groups: list[list["InputFile"]], progress: "ProgressReporter") -> dict[str, dict[str, Any]]:
        """Do and commit every group in order; the new unit records, by file name."""
        total = len(self.listing.files)
        done_units = len(self.units.reused)
        bytes_left = sum(f.size for g in groups for f in g)
        bytes_done, started = 0, time.monotonic()
        progress.set_units(done_units, total)
        records: dict[str, dict[str, Any]] = {}
        for index, files in enumerate(groups):
            records.update(self.run_group(index, files))
            done_units += len(files)
            size = sum(f.size for f in files)
            bytes_done, bytes_left = bytes_done + size, bytes_left - size
            left = units_left_s(time.monotonic() - started, bytes_done, bytes_left)
            progress.set_units(done_units, total, left)
            log.info("commit group %d/%d: %d unit(s) committed; units %d/%d done", index + 1, len(groups),
                     len(files), done_units, total)
            stop = getattr(self.opts, "stop_after_groups", None)
            if stop is not None and index + 1 >= stop and index + 1 < len(groups):
                raise StoppedForTest(f"test hook: stopped after {index + 1} commit group(s)")
        return records

    def run_group(self, index: int, files: list["InputFile"]) -> dict[str, dict[str, Any]]:
        """One group as one Spark job: read, classify, persist, count, write, commit. Returns its records."""
        names = [f.file_name for f in files]
        whole = len(files) == len(self.listing.files)
        sub = self.listing if whole else dataclasses.replace(self.listing, files=list(files), source="", ignored=())
        stage = group_stage(self.commit.run_id, index) if self.staged else None
        if self.resumable and not any(f.size > 0 for f in files):  # empty files hold no record: no Spark job
            counts = Counts([], {c.name: [] for c in self.opts.classifiers}, {})
        else:
            plan = plan_for_session(self.spark, [(f.size, self.source.splittable(f)) for f in files],
                                    self.opts.waves)
            self.plans.append(plan)
            with planned_splits(self.spark, plan):
                counts = self._classify_and_write(sub, whole, stage)
        die_if_asked(f"written:{index + 1}")
        # Every file the counts name (a source read whole may name its records otherwise: a view's, its name).
        committed = {n: {"identity": self.units.identities.get(n), "fingerprint": self.units.fingerprint,
                         "counts": c} for n, c in unit_counts(counts, names).items()}
        if stage is not None:  # where each unit's output waits to be published (io.publish)
            self.commit.begin()
            targets = unit_targets(self.spark, self.sink, self.opts, committed)
            for n, staged in staged_unit_outputs(self.commit.fs, stage, targets, self.opts.layout).items():
                committed[n].update(staged)
        self.store.commit(self.commit.run_id, index, committed)
        die_if_asked(f"committed:{index + 1}")
        return committed

    @property
    def staged(self) -> bool:
        """Whether this run's groups write into staging, published in the final step (file sinks); a table
        (Delta at OUT, a catalog table) commits each group as its own transaction instead."""
        return not removes_by_name(self.sink)

    def _classify_and_write(self, sub: "InputListing", whole: bool, stage: str | None):
        opts, spark = self.opts, self.spark
        df = self.whole if whole else self.source.read(
            spark, sub, self.text_field, opts.file_name_column,
            None if self.source.keep_lines else group_schema(self.whole.schema, opts.file_name_column),
            opts.sampling_ratio)
        rows = classified_rows(df, opts.classifiers, self.meters.docs, self.meters.devices, self.meters.stats)
        rows = without_line_copies(rows, [self.text_field], self.attributes).persist(_disk_level())
        try:
            counts = count_rows(rows, opts.classifiers, opts.file_name_column)  # classifies every record
            self.classified += classified_count(counts)
            self.laps("read_classify_count")
            check_no_vanished_files(spark, sub, counts)
            written = (attribute_rows(rows, opts.classifiers, opts.file_name_column, self.key) if self.attributes
                       else output_rows(rows, opts.classifiers))
            if stage is None:  # a table: this group is one transaction of its own
                self.commit.touch(run_outputs(spark, opts, counts, self.sink))
                self.sink.write(written, opts.output, opts.layout, opts.file_name_column, opts.compression)
                prune_stale_outputs(spark, opts, sub, counts, self.sink)
            else:  # files: staged, published in the final step (io.publish)
                self.commit.begin()
                self.sink.write(written, f"{opts.output.rstrip('/')}/{stage}", opts.layout, opts.file_name_column,
                                opts.compression)
            self.laps("write_output")
            write_unit_rejects(spark, rejected_rows(rows, opts.classifiers, opts.file_name_column), opts.output,
                               self.commit.run_id, [f.file_name for f in sub.files],
                               REJECTS_DIR if stage is None else f"{stage}/{REJECTS_DIR}",
                               none_rejected=rejected_count(counts) == 0)
            self.laps("write_rejects")
        finally:
            rows.unpersist()
        return counts


def plan_dict(plans: Sequence[Any]) -> dict[str, Any] | None:
    """The summary's ``input_splits``: the first group's split plan (the whole input's when it is one group)."""
    first = next((p for p in plans if p is not None), None)
    return first.as_dict() if first is not None else None


def _disk_level():
    from pyspark import StorageLevel

    return StorageLevel.DISK_ONLY
