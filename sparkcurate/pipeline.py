"""The whole job as one story: list -> plan -> read -> classify -> count -> commit -> summary.

Every input record ends in exactly one place: the output (kept), the filtered count (classified, not kept) or
``OUT/_rejects`` (with a reason); ``OUT/_summary.json`` says how many of each, and the numbers are counted from
the very rows that were written. The classified rows are persisted once, so the model runs once per record
even though the output, the rejects and the counts are three Spark actions.

Who does each step: ``io.sources`` (list and read one input format), ``spark.planning`` (cut the input into
tasks), ``spark.stage`` and ``spark.outcome`` (classify; kept, filtered or rejected), ``report.summary`` (count
and summarise), ``io.sinks`` (write one output format), ``io.commit`` (make the output current) and
``io.failures`` (say which input file Spark could not read).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from sparkcurate.engine.kernels.usage import split_task_counts
from sparkcurate.io.commit import OutputCommit, prune_stale_outputs, run_outputs, write_rejects
from sparkcurate.io.failures import check_no_vanished_files
from sparkcurate.io.fs import data_bytes
from sparkcurate.io.listing import check_distinct_outputs, check_listing_outside, check_paths_apart
from sparkcurate.io.sinks import get_sink
from sparkcurate.io.sources import get_source
from sparkcurate.io.sources.base import UsageError
from sparkcurate.report.progress import ProgressReporter
from sparkcurate.report.summary import build_summary, classified_count, count_rows, task_stats_summary, write_report
from sparkcurate.spark.attributes import attribute_key, attribute_rows
from sparkcurate.spark.outcome import classified_rows, output_rows, rejected_rows, without_line_copies
from sparkcurate.spark.planning import DEFAULT_WAVES, plan_for_session, planned_splits
from sparkcurate.spark.resources import check_resources, explain_device_failure
from sparkcurate.spark.stage import device_accumulator, stats_accumulator

if TYPE_CHECKING:  # pragma: no cover
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    from sparkcurate.classifiers.base import DistributedDataClassifier

log = logging.getLogger(__name__)


@dataclass
class JobOptions:
    """What ``sparkcurate classify`` was asked to do (plain values)."""

    input: str
    output: str
    classifiers: Sequence["DistributedDataClassifier"]
    layout: str = "partitioned"
    file_name_column: str = "file_name"
    schema: str | None = None
    sampling_ratio: float = 1.0
    compression: str | None = None
    quiet: bool = False
    progress_interval_s: float = 10.0
    # Classify tasks per task slot (GPU): the input is cut so every slot gets this many equal tasks
    # (sparkcurate.spark.planning); 0 keeps Spark's own splitting.
    waves: int = DEFAULT_WAVES
    command: str | None = None
    # Build OUT/_report/index.html after the summary (the command's --no-report turns it off).
    report: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    # Names in sparkcurate.io.sources.SOURCES / sparkcurate.io.sinks.SINKS.
    input_format: str = "jsonl"
    output_format: str = "jsonl"
    # A catalog table for the kept rows ([catalog.]db.tbl; output_format parquet or delta); `output` still holds
    # the run's summary, rejects and report.
    output_table: str | None = None
    # JSONL in and out: "exact" writes each kept line as it was read, predictions appended; "reserialize" writes
    # the parsed record (docs/formats.md).
    jsonl_mode: str = "reserialize"
    # "records": the kept records with their predictions; "attributes": a key and the predictions of every record.
    output_mode: str = "records"
    # The attribute files' key when every record has it, unique within its file (else the record's position).
    id_field: str | None = "id"


def run(spark: "SparkSession", opts: JobOptions) -> dict[str, Any]:
    """Run the job and return the summary (also written to ``OUT/_summary.json``).

    Order matters for exactly-once output: every record is read and classified, and counted, *before* the output
    directory is touched, so a bad model, a corrupt or vanished input file or a dead executor fails the run with
    the earlier output intact. ``_RUNNING.json`` locks the output for the run (a second run refuses while this
    one is alive); a run that finds a dead run's marker says so (log and summary) and cleans the leftovers.
    Afterwards OUT holds exactly this run's output: earlier outputs it did not produce are removed
    (``_manifest.json`` lists what sparkcurate wrote; an OUT holding anything else is refused).
    """
    started = time.time()
    check_modes(opts)
    if opts.input_format != "table":  # a table's location is checked once listed (_check_listing)
        check_paths_apart(opts.input, opts.output)  # before anything is read or written
    models = [c.preflight_info or c.preflight() for c in opts.classifiers]  # fails in seconds, before any data
    # A job no executor can run, or device=cuda without CUDA, fails here: not after a silent wait or retries.
    check_resources(spark, [c.device for c in opts.classifiers])
    source, sink, attributes = _source_and_sink(opts)
    commit = OutputCommit.start(spark, opts.output, opts.command, started)
    laps, meters = Laps(), TaskMeters(spark.sparkContext)
    splits = contextlib.ExitStack()  # Spark's split settings, put back however the run ends
    plan = listing = None
    try:
        text_field = _common_text_field(opts.classifiers)
        listing = source.list_files(spark, opts.input)
        _check_listing(spark, opts, listing, sink, commit.ignores_case())
        plan = plan_for_session(spark, [(f.size, source.splittable(f)) for f in listing.files], opts.waves)
        splits.enter_context(planned_splits(spark, plan))
        df = source.read(spark, listing, text_field, opts.file_name_column, opts.schema, opts.sampling_ratio)
        laps("list_and_infer_schema")
        rows = classified_rows(df, opts.classifiers, meters.docs, meters.devices, meters.stats)
        rows = without_line_copies(rows, [text_field], attributes).persist(_disk_level())
        try:
            if not attributes:
                sink.check_target(output_rows(rows, opts.classifiers), opts.file_name_column)  # before classifying
            with ProgressReporter(spark.sparkContext, meters.docs, None, opts.progress_interval_s, opts.quiet,
                                  log) as progress:
                counts = count_rows(rows, opts.classifiers, opts.file_name_column)  # classifies every record
                progress.set_done(classified_count(counts))
            laps("read_classify_count")
            check_no_vanished_files(spark, listing, counts)
            key = attribute_key(rows, opts.id_field, opts.file_name_column) if attributes else None
            written = (attribute_rows(rows, opts.classifiers, opts.file_name_column, key) if attributes
                       else output_rows(rows, opts.classifiers))
            outputs = run_outputs(spark, opts, counts, sink)
            commit.touch(outputs)
            sink.write(written, opts.output, opts.layout, opts.file_name_column, opts.compression)
            laps("write_output")
            commit.prune(spark, outputs, sink)
            prune_stale_outputs(spark, opts, listing, counts, sink)
            write_rejects(spark, rejected_rows(rows, opts.classifiers, opts.file_name_column), opts.output,
                          commit.run_id)
            laps("write_rejects")
        finally:
            rows.unpersist()
    except BaseException as exc:
        explained = _explain(exc, source, spark, listing)
        # A UsageError (a field that clashes with the job's columns) is the command's one line of its own.
        commit.failed(explained is not None or isinstance(exc, UsageError))
        if explained is not None:
            raise explained from exc
        raise
    finally:
        splits.close()
    try:
        summary = build_summary(spark, opts, counts, models, listing, started, time.time() - started,
                                meters.devices.value)
        summary.update(previous_run_unfinished=commit.previous or None, pruned_outputs=commit.pruned[:1000],
                       timings_s=laps.timings, input_splits=plan.as_dict() if plan is not None else None,
                       **meters.summary(progress), **_output_facts(spark, opts, source, sink, key))
        commit.finish(summary)
    except BaseException:
        commit.failed()
        raise
    _report_and_release(opts, commit)
    return summary


def _report_and_release(opts: JobOptions, commit: OutputCommit) -> None:
    """The report, then the output's lock dropped: the lock covers the report (a second run would rewrite it)."""
    try:
        if opts.report:
            write_report(opts.output)
    finally:
        commit.release()


def _check_listing(spark: "SparkSession", opts: JobOptions, listing, sink, ignores_case: bool) -> None:
    """Refusals that need the listing, before anything is read: a table input whose location overlaps the output,
    an input file that is (through a link) inside the output, two inputs whose outputs would meet."""
    if opts.input_format == "table" and listing.root:
        check_paths_apart(listing.root, opts.output)
    check_listing_outside(listing, opts.output)
    check_distinct_outputs(listing, lambda name: sink.target(spark, opts.layout, opts.file_name_column, name,
                                                             opts.compression), opts.layout, ignores_case)


def _source_and_sink(opts: JobOptions):
    """The run's source and sink, set for its modes (a line source for exact JSONL and attribute files), and
    whether it writes attribute files."""
    source, sink = get_source(opts.input_format), get_sink(opts.output_format, opts.output_table)
    sink.check(opts.layout, opts.compression)
    attributes = opts.output_mode == "attributes"
    source.keep_lines = attributes or (opts.jsonl_mode == "exact" and sink.name == "jsonl")
    source.record_positions = attributes
    source.key_fields = (opts.id_field,) if attributes and opts.id_field else ()
    return source, sink, attributes


def _output_facts(spark: "SparkSession", opts: JobOptions, source, sink, key: str | None) -> dict[str, Any]:
    """The summary's facts about what was written: mode, JSONL mode, bytes, and the attribute files' key."""
    attributes = opts.output_mode == "attributes"
    return {"output_mode": opts.output_mode,
            "jsonl_mode": opts.jsonl_mode if source.name == sink.name == "jsonl" and not attributes else None,
            "output_bytes": None if opts.output_table else data_bytes(spark, opts.output),
            "attribute_key": [opts.file_name_column, key] if attributes else None}


def check_modes(opts: JobOptions) -> None:
    """A ``UsageError`` for modes that do not exist or do not go together, before anything runs."""
    if opts.jsonl_mode not in ("exact", "reserialize"):
        raise UsageError(f"jsonl_mode must be 'exact' or 'reserialize', got {opts.jsonl_mode!r}")
    if opts.output_mode not in ("records", "attributes"):
        raise UsageError(f"output_mode must be 'records' or 'attributes', got {opts.output_mode!r}")
    if opts.output_mode == "attributes" and any(c.filter_by for c in opts.classifiers):
        raise UsageError("--filter-by does not apply to attribute files: every record gets its attribute row "
                         "(filter on the predictions when you join)")
    if opts.output_mode == "attributes" and opts.output_table:
        raise UsageError("attribute files are written under --output, not to an --output-table")


class Laps:
    """Where the time went, for the summary (and for tuning): seconds since the previous lap, by step name."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._clock, 3)
        self._clock = now


class TaskMeters:
    """What the classify tasks report to the driver: documents done (for the progress line), the device each
    task ran on, and the tasks' time (both for the summary)."""

    def __init__(self, sc: "SparkContext") -> None:
        self.docs = sc.accumulator(0)
        self.devices = device_accumulator(sc)
        self.stats = stats_accumulator(sc)

    def summary(self, progress: ProgressReporter) -> dict[str, Any]:
        """The summary's task figures: time by kind, the kernels each model ran (tasks per value), and the
        classify phase as its closing console line reported it (README: "The summary's figures")."""
        kernels, stats = split_task_counts(self.stats.value)
        return {"task_stats": task_stats_summary(stats), "kernels": kernels,
                "classify_s": round(progress.final_elapsed_s, 3), "classify_docs_per_s": progress.final_rate}


def _explain(exc: BaseException, source, spark: "SparkSession", listing) -> Exception | None:
    """The one-line error for a failure the job can explain (a task without its device, an input file Spark
    could not read), or None."""
    if not isinstance(exc, Exception):
        return None
    return explain_device_failure(exc) or source.explain_failure(exc, spark, listing)


def _common_text_field(classifiers: Sequence["DistributedDataClassifier"]) -> str:
    fields = {c.text_field for c in classifiers}
    if len(fields) != 1:
        raise ValueError(f"all classifiers in one pass must read the same text field, got {sorted(fields)}")
    return fields.pop()


def _disk_level():
    from pyspark import StorageLevel

    return StorageLevel.DISK_ONLY
