"""The whole job as one story: list -> plan units -> (per commit group: read -> classify -> count -> write ->
commit the group's units) -> make the run current -> summary.

Every input record ends in exactly one place: the output (kept), the filtered count (classified, not kept) or
``OUT/_rejects`` (with a reason); ``OUT/_summary.json`` says how many of each, and the numbers are counted from
the very rows that were written (a reused unit's from its record, counted when it was written). Within a commit
group the classified rows are persisted once, so the model runs once per record even though the output, the
rejects and the counts are three Spark actions; only one group's rows are persisted at a time.

Who does each step: ``io.sources`` (list and read one input format), ``io.units`` (which units a re-run reuses,
and their records), ``groups`` (one commit group as one Spark job), ``spark.planning`` (cut a group into tasks),
``spark.stage`` and ``spark.outcome`` (classify; kept, filtered or rejected), ``report.summary`` (count and
summarise), ``io.sinks`` (write one output format), ``io.commit`` (the lock, the manifest, making the output
current) and ``io.failures`` (say which input file Spark could not read).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from sparkcurate.engine.kernels.usage import split_task_counts
from sparkcurate.groups import GroupJob, die_if_asked, output_options, plan_dict, unit_targets
from sparkcurate.io.commit import OutputCommit, prune_rejects, run_outputs
from sparkcurate.io.fs import data_bytes
from sparkcurate.io.listing import check_distinct_outputs, check_listing_outside, check_paths_apart
from sparkcurate.io.publish import (SPARK_LOG_DIR, STAGING_DIR, clean_staging, current_files, log_batches,
                                    move_staged, prune_log, staged_intact, superseded_files,
                                    superseded_rejects, unpublished, visible_files, write_spark_log)
from sparkcurate.io.sinks import get_sink
from sparkcurate.io.sources import get_source
from sparkcurate.io.sources.base import UsageError
from sparkcurate.io.units import UnitStore, commit_groups, fingerprint, plan_units, unit_identities
from sparkcurate.report.charts import preload_matplotlib
from sparkcurate.report.progress import ProgressReporter
from sparkcurate.report.summary import build_summary, counts_of_units, task_stats_summary, write_report
from sparkcurate.spark.attributes import attribute_key
from sparkcurate.spark.outcome import classified_rows, output_rows
from sparkcurate.spark.planning import DEFAULT_WAVES, commit_group_bytes
from sparkcurate.spark.resources import ResourceCheck, explain_device_failure
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
    # Commit the output every this many input bytes (a commit group: sparkcurate.groups); None: the plan's
    # default (spark.planning.commit_group_bytes); 0: one group for the whole input.
    commit_every_bytes: int | None = None
    # Redo every unit, even those committed by an earlier run with the same input and options.
    restart: bool = False
    # Test-only: stop (raise groups.StoppedForTest) after this many commit groups, as a killed driver would.
    stop_after_groups: int | None = None


def run(spark: "SparkSession", opts: JobOptions) -> dict[str, Any]:
    """Run the job and return the summary (also written to ``OUT/_summary.json``).

    The input's units (its files) are done in commit groups (``sparkcurate.groups``), each its own Spark job that
    writes and commits its units before the next starts; a re-run of the same command reuses the units committed
    with the same input and options (``--restart`` redoes all). Within a group every record is read, classified
    and counted before OUT is touched, so a bad model, a corrupt or vanished input file or a dead executor fails
    the run with the committed units intact. ``_RUNNING.json`` locks the output for the run (a second run refuses
    while this one is alive); a run that finds a dead run's marker says so (log and summary) and cleans the
    leftovers. Afterwards OUT holds exactly this run's output, reused units' included: earlier outputs it did not
    produce are removed (``_manifest.json`` lists what sparkcurate wrote; an OUT holding anything else is refused).
    """
    started = time.time()
    check_modes(opts)
    if opts.input_format != "table":  # a table's location is checked once listed (_check_listing)
        check_paths_apart(opts.input, opts.output)  # before anything is read or written
    # A job no executor can run, or device=cuda without CUDA, fails here: not after a silent wait or retries. The
    # probe task runs while the models are checked (each takes seconds in a fresh application), and its worker
    # imports what the first classify task needs while the driver lists and plans (spark.resources).
    laps = Laps()
    resources = ResourceCheck(spark, [c.device for c in opts.classifiers],
                              sorted({type(c).__module__ for c in opts.classifiers}))
    try:
        models = [c.preflight_info or c.preflight() for c in opts.classifiers]  # fails in seconds, before any data
    except BaseException:
        resources.cancel()
        raise
    laps("preflight")
    resources.result()
    laps("probe_wait")  # what the executor probe took beyond the pre-flight
    source, sink, attributes = _source_and_sink(opts)
    commit = OutputCommit.start(spark, opts.output, opts.command, started)
    laps("output_lock")
    meters = TaskMeters(spark.sparkContext)
    listing = job = None
    try:
        text_field = _common_text_field(opts.classifiers)
        listing = source.list_files(spark, opts.input)
        _check_listing(spark, opts, listing, sink, commit.ignores_case())
        whole = source.read(spark, listing, text_field, opts.file_name_column, opts.schema, opts.sampling_ratio)
        if not attributes:  # the output can take the rows: checked before classifying (lazy frame)
            sink.check_target(output_rows(classified_rows(whole, opts.classifiers), opts.classifiers),
                              opts.file_name_column)
        key = attribute_key(whole, opts.id_field, opts.file_name_column) if attributes else None
        job = _group_job(spark, opts, source, sink, listing, whole, text_field, attributes, key, models, meters,
                         commit, laps)
        laps("list_and_infer_schema")
        if opts.report:  # its charts' import, while the driver waits for the classify job
            preload_matplotlib()
        # An input that cannot be read in parts (a catalog table, a view without files) is one group, always.
        groups = commit_groups(job.units.todo, _group_bytes(spark, opts)) if job.resumable else [list(listing.files)]
        with ProgressReporter(spark.sparkContext, meters.docs, None, opts.progress_interval_s, opts.quiet,
                              log) as progress:
            records = job.run(groups, progress)
            progress.set_done(job.classified)
        counts = _commit_run(spark, opts, sink, commit, job, records)
        laps("commit")
    except BaseException as exc:
        explained = _explain(exc, source, spark, listing)
        # A UsageError (a field that clashes with the job's columns) is the command's one line of its own.
        commit.failed(explained is not None or isinstance(exc, UsageError))
        if explained is not None:
            raise explained from exc
        raise
    try:
        summary = build_summary(spark, opts, counts, models, listing, started, time.time() - started,
                                meters.devices.value)
        summary.update(previous_run_unfinished=commit.previous or None, pruned_outputs=commit.pruned[:1000],
                       timings_s=laps.timings, input_splits=plan_dict(job.plans),
                       units=job.units.summary(len(listing.files), len(groups)),
                       **meters.summary(progress), **_output_facts(spark, opts, source, sink, key))
        commit.finish(summary)
    except BaseException:
        commit.failed()
        raise
    _report_and_release(opts, commit)
    return summary


def _group_job(spark, opts: JobOptions, source, sink, listing, whole, text_field: str, attributes: bool,
               key: str | None, models: list[dict], meters: "TaskMeters", commit: OutputCommit, laps: "Laps"
               ) -> GroupJob:
    """The run's commit groups' shared state: which units are reused (same input file, same options: their
    records under ``OUT/_units``), which are to do and which are removed."""
    store = UnitStore(commit.fs)
    fp = fingerprint(output_options(opts, models, whole.schema, key))
    records = store.read()
    lost = {n for n, r in records.items() if unpublished(r) and not staged_intact(commit.fs, r)}
    if lost:
        log.warning("%d unit(s) staged by an unfinished run lost their staged files: done again", len(lost))
    units = plan_units(listing, unit_identities(spark, listing), records, fp, opts.restart,
                       source.resumable(listing), lost)
    # What an unfinished run staged and this one does not reuse goes (--restart: all of it).
    clean_staging(commit.fs, {r.get("staged") or "" for r in units.reused.values() if unpublished(r)})
    return GroupJob(spark, opts, source, sink, listing, whole, text_field, attributes, key, meters, commit, store,
                    units, laps, resumable=source.resumable(listing))


def _group_bytes(spark: "SparkSession", opts: JobOptions) -> int:
    """The commit group budget: ``commit_every_bytes`` (0: one group), else the plan's (``commit_group_bytes``)."""
    if opts.commit_every_bytes is not None:
        return max(0, int(opts.commit_every_bytes))
    return commit_group_bytes(spark)


def _commit_run(spark: "SparkSession", opts: JobOptions, sink, commit: OutputCommit, job: GroupJob,
                records: dict[str, dict[str, Any]]):
    """The final step that makes the run current, once every unit is committed: the counts of every unit
    (reused ones from their records); file sinks publish the staged units (``io.publish``: moved in, Spark's
    log and the manifest switched to the new set, superseded files removed), a table's earlier outputs are
    pruned; the rejects of removed units go, the unit records are compacted into one index (published: no
    ``staged``) and the staging folder goes; the summary follows (``commit.finish``)."""
    current = {**job.units.reused, **records}
    counts = counts_of_units({n: r.get("counts") or {} for n, r in current.items()}, opts.classifiers)
    outputs = run_outputs(spark, opts, counts, sink)
    if job.staged:
        publish_run(spark, opts, sink, commit, current, outputs)
    else:
        commit.touch(outputs)
        commit.prune(spark, outputs, sink)
        commit.fs.delete(SPARK_LOG_DIR)  # a file sink's log from before would name files that are gone
    die_if_asked("final_commit")  # test-only (groups.die_if_asked)
    prune_rejects(spark, opts.output, set(current))
    job.store.compact(commit.run_id, {n: {k: v for k, v in r.items() if k != "staged"} for n, r in current.items()})
    commit.fs.delete(STAGING_DIR)
    return counts


def publish_run(spark: "SparkSession", opts: JobOptions, sink, commit: OutputCommit,
                records: dict[str, dict[str, Any]], outputs) -> None:
    """``io.publish``'s steps a, b, c for this run: readers of OUT through ``spark.read`` (or the manifest's
    ``files``) get the previous complete set until the log batch is written, then the new one."""
    fs, layout = commit.fs, opts.layout
    files = current_files(fs, records, unit_targets(spark, sink, opts, outputs.names), layout)
    if not log_batches(fs):  # the first log: the output as a folder listing reads it now (none: empty)
        write_spark_log(fs, visible_files(fs))
    commit.touch(outputs, publishing=True)  # the manifest covers what the moves bring in
    moved, folders = move_staged(fs, records, layout, lambda: die_if_asked("publish_moving"))
    batch = write_spark_log(fs, files)
    commit.published(outputs, files)
    log.info("published %d staged file(s); %s/_spark_metadata batch %d lists the %d current file(s)", moved,
             opts.output, batch, len(files))
    die_if_asked("published")  # test-only: the new set is current, the superseded files not yet removed
    for rel in superseded_files(fs, folders, set(files)) + superseded_rejects(fs, records):
        fs.delete(rel)
    commit.prune(spark, outputs, sink)
    prune_log(fs)


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
    """The summary's facts about what was written: mode, JSONL mode, bytes, the attribute files' key, and a Delta
    table's version after the run (``table_version``; None for files)."""
    attributes = opts.output_mode == "attributes"
    return {"output_mode": opts.output_mode, "table_version": sink.table_version(spark, opts.output),
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
    """Where the time went, for the summary (and for tuning): seconds since the previous lap, by step name (a
    step that every commit group takes is summed over the groups)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(self.timings.get(name, 0.0) + now - self._clock, 3)  # summed over groups
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
