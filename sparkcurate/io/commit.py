"""Making a run's output current, and only when everything was classified and counted: the ``_RUNNING.json``
marker around the window in which OUT is replaced, the leftovers of an interrupted run, ``OUT/_rejects``
(staged, then swapped in), the removal of stale outputs, and ``OUT/_summary.json`` last.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from sparkcurate.io.sinks import get_sink

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

    from sparkcurate.io.fs import HadoopFS
    from sparkcurate.io.listing import InputListing
    from sparkcurate.io.sinks import Sink

log = logging.getLogger(__name__)

RUNNING_MARKER = "_RUNNING.json"
SUMMARY_FILE = "_summary.json"
REJECTS_DIR = "_rejects"


class OutputCommit:
    """One run's hold on OUT. ``start`` writes ``_RUNNING.json`` (after cleaning what an unfinished earlier run
    left); ``touch`` says the output is about to change; ``failed`` undoes the marker when nothing was touched
    (the earlier output is intact) and says which state OUT is in; ``finish`` writes the summary and removes the
    marker."""

    def __init__(self, spark: "SparkSession", output: str):
        from sparkcurate.io.fs import HadoopFS

        self.output = output
        self.fs: "HadoopFS" = HadoopFS(spark, output)
        self.run_id = uuid.uuid4().hex[:12]
        self.previous: dict | None = self.fs.read_json(RUNNING_MARKER)
        self.existed = self.fs.exists("")  # a run that fails before writing removes the directory it created
        self.touched = False

    @classmethod
    def start(cls, spark: "SparkSession", output: str, command: str | None, started: float) -> "OutputCommit":
        commit = cls(spark, output)
        if commit.previous:
            log.warning("the previous run into %s (%s, started %s) did not finish: its output may be partial; "
                        "this run replaces it", output, commit.previous.get("run_id"),
                        commit.previous.get("started_at"))
            clean_leftovers(commit.fs)
        started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
        commit.fs.write_json(RUNNING_MARKER, {"run_id": commit.run_id, "started_at": started_at, "command": command})
        return commit

    def touch(self) -> None:
        self.touched = True

    def failed(self, explained: bool = False) -> None:
        """``explained``: the failure is reported as one line of its own that says nothing was written."""
        if not self.touched:
            _restore_marker(self.fs, self.previous)
            if not self.existed:
                _remove_if_empty(self.fs)
            if not explained:
                log.error("the run failed before writing anything: %s keeps its earlier content", self.output)
        else:
            log.error("the run failed while replacing the output: %s/%s marks it as unfinished", self.output,
                      RUNNING_MARKER)

    def finish(self, summary: dict[str, Any]) -> None:
        self.fs.write_json(SUMMARY_FILE, summary)
        self.fs.delete(RUNNING_MARKER)


def _restore_marker(fs, previous: dict | None) -> None:
    """Undo this run's marker: the output is as it was, including an earlier run's unfinished state."""
    try:
        if previous:
            fs.write_json(RUNNING_MARKER, previous)
        else:
            fs.delete(RUNNING_MARKER)
    except Exception as exc:  # never hide the real failure
        log.warning("could not restore %s: %s", RUNNING_MARKER, exc)


def _remove_if_empty(fs) -> None:
    """Remove the output directory this run created (for its marker) when nothing else is in it."""
    try:
        if fs.exists("") and not fs.list(""):
            fs.delete("")
    except Exception as exc:  # never hide the real failure
        log.warning("could not remove the empty output directory %s: %s", fs.root, exc)


def clean_leftovers(fs) -> None:
    """Staging folders an interrupted run left (ours and Spark's): hidden from readers, but they take space."""
    for name, is_dir in fs.list():
        if is_dir and (name in ("_staging", "_temporary") or name.startswith(".spark-staging")):
            log.info("removing %s left by the unfinished run", name)
            fs.delete(name)


def write_rejects(spark: "SparkSession", rejected: "DataFrame", output: str, run_id: str) -> None:
    """``OUT/_rejects/``: one JSON line per rejected record (``spark.outcome.rejected_rows``). Written to a
    staging folder, then swapped in, so a failed run keeps the old."""
    from sparkcurate.io.fs import HadoopFS

    fs = HadoopFS(spark, output)
    staging = f"_staging/rejects-{run_id}"
    rejected.write.mode("overwrite").json(f"{output.rstrip('/')}/{staging}")
    fs.delete(REJECTS_DIR)
    fs.rename(staging, REJECTS_DIR)
    if not fs.list("_staging"):
        fs.delete("_staging")


def prune_stale_outputs(spark: "SparkSession", opts: Any, listing: "InputListing", counts: Any,
                        sink: "Sink | None" = None) -> None:
    """Remove the earlier output of input files that keep nothing this time (every record filtered out or
    rejected; in attribute mode, files with no record): Spark writes no partition for them, so the old one would
    otherwise survive a re-run. ``opts``: the run's ``pipeline.JobOptions``; ``counts``: its
    ``report.summary.Counts`` (neither imported: both sit above this module); ``sink``: where the output goes
    (says how an input's output is removed; by default the one ``opts.output_format`` names)."""
    every = getattr(opts, "output_mode", "records") == "attributes"  # attribute files: a row for every record
    kept = {fname for fname, status, _reason, n in counts.by_status_file if (every or status == "kept") and n > 0}
    sink = sink or get_sink(opts.output_format)
    stale = [f.file_name for f in listing.files if f.file_name not in kept]
    if stale:
        sink.remove_outputs(spark, opts.output, opts.layout, opts.file_name_column, stale, opts.compression)
