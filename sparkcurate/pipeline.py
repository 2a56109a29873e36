"""The whole job: read -> classify -> filter -> write -> summary. One function, no Spark tricks.

Every input record ends in exactly one place: the output (kept), the filtered count (classified, not kept) or
``OUT/_rejects`` (with a reason); ``OUT/_summary.json`` says how many of each, and the numbers are counted from
the very rows that were written. The classified rows are persisted once, so the model runs once per record
even though the output, the rejects and the counts are three Spark actions.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Sequence

from sparkcurate.io.read import CORRUPT_COLUMN, REASON_COLUMN, list_input_files, read_jsonl_checked
from sparkcurate.io.write import COMPRESSED_SUFFIXES, write_jsonl
from sparkcurate.spark.planning import DEFAULT_WAVES, plan_for_session, planned_splits, splittable
from sparkcurate.spark.stage import device_accumulator, stats_accumulator

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

    from sparkcurate.classifiers.base import DistributedDataClassifier

log = logging.getLogger(__name__)

STATUS_COLUMN = "_sparkcurate_status"
RUNNING_MARKER = "_RUNNING.json"
SUMMARY_FILE = "_summary.json"
REJECTS_DIR = "_rejects"
HISTOGRAM_BINS = 20


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
    extra: dict[str, Any] = field(default_factory=dict)


def run(spark: "SparkSession", opts: JobOptions) -> dict[str, Any]:
    """Run the job and return the summary (also written to ``OUT/_summary.json``).

    Order matters for exactly-once output: every record is read and classified, and counted, *before* the output
    directory is touched, so a bad model, a corrupt or vanished input file or a dead executor fails the run with
    the earlier output intact. ``_RUNNING.json`` marks the window in which the output is being replaced; a run
    that finds one says so (log and summary) and cleans the leftovers.
    """
    from sparkcurate.io.fs import HadoopFS

    started = time.time()
    run_id = uuid.uuid4().hex[:12]
    # Fails in seconds, before any data is read (the command has usually done it already).
    models = [c.preflight_info or c.preflight() for c in opts.classifiers]
    from sparkcurate.spark.resources import check_resources

    # A job no executor can run, or device=cuda without CUDA, fails here: not after a silent wait or retries.
    check_resources(spark, [c.device for c in opts.classifiers])
    fs = HadoopFS(spark, opts.output)
    existed = fs.exists("")  # a run that fails before writing removes the directory it created
    previous = fs.read_json(RUNNING_MARKER)
    if previous:
        log.warning("the previous run into %s (%s, started %s) did not finish: its output may be partial; this "
                    "run replaces it", opts.output, previous.get("run_id"), previous.get("started_at"))
        clean_leftovers(fs)
    fs.write_json(RUNNING_MARKER, {"run_id": run_id, "started_at": _iso(started), "command": opts.command})
    touched = False
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:  # where the time went, for the summary (and for tuning)
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    splits = contextlib.ExitStack()  # Spark's split settings, put back however the run ends
    plan = None
    listing = None
    try:
        text_field = _common_text_field(opts.classifiers)
        listing = list_input_files(spark, opts.input)
        plan = plan_for_session(spark, [(f.size, splittable(f.file_name)) for f in listing.files], opts.waves)
        splits.enter_context(planned_splits(spark, plan))
        df, listing = read_jsonl_checked(spark, opts.input, text_field, opts.schema, opts.file_name_column,
                                         opts.sampling_ratio, listing)
        lap("list_and_infer_schema")
        counter = spark.sparkContext.accumulator(0)
        device_log = device_accumulator(spark.sparkContext)
        task_stats = stats_accumulator(spark.sparkContext)
        rows = classified_rows(df, opts.classifiers, counter, device_log, task_stats).persist(_disk_level())
        try:
            from sparkcurate.report.progress import ProgressReporter

            with ProgressReporter(spark.sparkContext, counter, None, opts.progress_interval_s, opts.quiet, log):
                counts = count_rows(rows, opts.classifiers, opts.file_name_column)  # classifies every record
            lap("read_classify_count")
            check_no_vanished_files(spark, listing, counts)
            touched = True
            write_jsonl(output_rows(rows, opts.classifiers), opts.output, opts.layout, opts.file_name_column,
                        opts.compression)
            lap("write_output")
            prune_stale_outputs(spark, opts, listing, counts)
            write_rejects(spark, rows, opts, run_id)
            lap("write_rejects")
        finally:
            rows.unpersist()
    except BaseException as exc:
        if not touched:
            _restore_marker(fs, previous)
            if not existed:
                _remove_if_empty(fs)
        explained = explain_failure(exc, spark, listing) if isinstance(exc, Exception) else None
        if touched:
            log.error("the run failed while replacing the output: %s/%s marks it as unfinished", opts.output,
                      RUNNING_MARKER)
        elif explained is None:  # an explained failure is one line of its own that says nothing was written
            log.error("the run failed before writing anything: %s keeps its earlier content", opts.output)
        if explained is not None:
            raise explained from exc
        raise
    finally:
        splits.close()
    elapsed = time.time() - started
    summary = build_summary(spark, opts, counts, models, listing, started, elapsed, device_log.value)
    summary["previous_run_unfinished"] = previous or None
    summary["timings_s"] = timings
    summary["task_stats"] = task_stats_summary(task_stats.value)
    summary["input_splits"] = plan.as_dict() if plan is not None else None
    fs.write_json(SUMMARY_FILE, summary)
    fs.delete(RUNNING_MARKER)
    return summary


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


_READ_FAILURE = re.compile(r"(?:reading file|File|Path does not exist:) (\S+?)\.? (?:does not exist|SQLSTATE)"
                           r"|Path does not exist: (\S+?)\.?$"  # Spark 3.5: no SQLSTATE after the path
                           r"|reading file (\S+)", re.MULTILINE)
_TRUNCATED = ("EOF", "end of input stream", "GZIP", "ZipException", "Truncated", "ZstdIOException",
              "Unknown frame descriptor", "incorrect header check")
# A Hadoop codec in the failure: Spark 3.5 reports a file it could not decompress this way, without its path.
_CODEC_FAILURE = ("org.apache.hadoop.io.compress", "zStandard")
_NO_ZSTD = "native zStandard library not available"
_DEVICE_FAILURE = re.compile(r"DeviceError: ([^\n]+)")  # sparkcurate.spark.devices.DeviceError, raised in a task


def explain_failure(exc: Exception, spark: "SparkSession | None" = None, listing=None) -> Exception | None:
    """An ``InputError`` naming the file when Spark failed reading an input file (truncated or corrupt
    compressed data, a file deleted mid-run, a codec this Hadoop lacks); a ``ResourceUnavailable`` when a task
    could not use the device it was asked to (``DeviceError``); None for any other failure.

    Spark 4 names the file (``FAILED_READ_FILE``, ``PATH_NOT_FOUND``); Spark 3.5 does not for codec failures, so
    with ``spark`` and the run's ``listing`` the compressed inputs are checked on the driver to find it."""
    text = str(exc)
    device = _DEVICE_FAILURE.search(text)
    if device:
        from sparkcurate.spark.resources import ResourceUnavailable

        return ResourceUnavailable(f"a classify task could not use its device: {device.group(1).strip()}; "
                                   "nothing was written")
    if any(key in text for key in ("FAILED_READ_FILE", "FileNotFoundException", "PATH_NOT_FOUND")):
        match = _READ_FAILURE.search(text)
        name = next((g for g in match.groups() if g), None) if match else None
        return _input_error(name.rstrip(".") if name else "(see the Spark error)", _why(text), text)
    if spark is not None and listing is not None and any(key in text for key in _CODEC_FAILURE):
        return _explain_codec_failure(spark, listing, text)
    return None


def _explain_codec_failure(spark: "SparkSession", listing, text: str) -> Exception | None:
    """Spark 3.5's path-less codec failure: find the file by decompressing the compressed inputs on the driver."""
    from sparkcurate.io.read import PROBE_MAX_BYTES, InputError, find_undecodable_file

    compressed = [f for f in listing.files if f.file_name.endswith(COMPRESSED_SUFFIXES)]
    if not compressed:
        return None
    log.info("Spark did not name the file it could not decompress: checking the %d compressed input(s)",
             len(compressed))
    unchecked = f"checking them all would read more than {PROBE_MAX_BYTES // 2**30} GiB on the driver"
    try:
        bad, complete = find_undecodable_file(spark, compressed)
    except Exception as probe_exc:  # never hide the real failure (e.g. no JVM handle under Spark Connect)
        log.warning("could not check the compressed inputs: %s", probe_exc)
        bad, complete, unchecked = None, False, f"checking them failed ({type(probe_exc).__name__})"
    if bad is not None:
        return _input_error(bad.path, _why(f"{bad.error}\n{text}"), f"{text}\nCaused by: {bad.error}")
    if complete:  # every compressed input decompresses: the failure was something else
        return None
    return InputError(f"one of the {len(compressed)} compressed input files could not be decompressed "
                      f"({_why(text)}); this Spark does not say which and {unchecked} (test them with e.g. "
                      f"`gzip -t`); nothing was written (Spark: {_first_line(text)})")


def _why(text: str) -> str:
    if any(key in text for key in ("FILE_NOT_EXIST", "FileNotFoundException", "PATH_NOT_FOUND")):
        return "it was deleted or moved while the job ran"
    if _NO_ZSTD in text:
        return ("this Spark's Hadoop cannot decompress zstd (its libhadoop has no native zstd); decompress the "
                ".zst files first, or run where Hadoop has native zstd (Spark 4 reads them as they are)")
    if any(key in text for key in _TRUNCATED):
        return "it is truncated or not valid compressed data"
    return "Spark could not read it"


def _first_line(text: str) -> str:
    """The line of a Spark error that says what failed, plus its first ``Caused by``."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = next((ln for ln in lines if "FAILED_READ_FILE" in ln or "PATH_NOT_FOUND" in ln),
                 lines[0] if lines else "")[:300]
    cause = next((ln for ln in lines if ln.startswith("Caused by:")), "")
    return f"{first}; {cause[:200]}" if cause else first


def _input_error(name: str, why: str, text: str) -> Exception:
    from sparkcurate.io.read import InputError

    return InputError(f"input file {name}: {why}; nothing was written (Spark: {_first_line(text)})")


def check_no_vanished_files(spark, listing, counts: "Counts") -> None:
    """A listed, non-empty file that produced no record and no longer exists was deleted between listing and
    reading: fail rather than report a run that silently skipped it."""
    from sparkcurate.io.fs import HadoopFS
    from sparkcurate.io.read import InputError

    seen = {fname for fname, _status, _reason, _n in counts.by_status_file}
    for f in listing.files:
        if f.size > 0 and f.file_name not in seen and not HadoopFS(spark, f.path).exists(""):
            raise InputError(f"input file {f.path} was deleted or moved after it was listed; nothing was written")


def prune_stale_outputs(spark, opts: JobOptions, listing, counts: "Counts") -> None:
    """Remove the earlier output of input files that keep nothing this time (every record filtered out or
    rejected): Spark writes no partition for them, so the old one would otherwise survive a re-run."""
    from sparkcurate.io.fs import HadoopFS
    from sparkcurate.io.write import partition_dir_name, safe_relative_path

    kept = {fname for fname, status, _reason, n in counts.by_status_file if status == "kept" and n > 0}
    fs = HadoopFS(spark, opts.output)
    ext = {"gzip": ".gz", "bzip2": ".bz2", "deflate": ".deflate"}.get(opts.compression or "", "")
    for f in listing.files:
        if f.file_name in kept:
            continue
        if opts.layout == "partitioned":
            target = partition_dir_name(spark, opts.file_name_column, f.file_name)
        else:
            target = safe_relative_path(f.file_name) + ext
        if fs.exists(target):
            log.info("removing %s: %s keeps no record this time", target, f.file_name)
            fs.delete(target)


def _common_text_field(classifiers: Sequence["DistributedDataClassifier"]) -> str:
    fields = {c.text_field for c in classifiers}
    if len(fields) != 1:
        raise ValueError(f"all classifiers in one pass must read the same text field, got {sorted(fields)}")
    return fields.pop()


def _disk_level():
    from pyspark import StorageLevel

    return StorageLevel.DISK_ONLY


def task_stats_summary(stats: dict[str, float]) -> dict[str, float]:
    """The classify tasks' time, summed over tasks (``_max``: the slowest one), rounded for the summary.

    Retried or speculative task attempts add to these sums: they measure work done, not records."""
    return {key: round(value, 3) if isinstance(value, float) else value for key, value in sorted(stats.items())}


def classified_rows(df: "DataFrame", classifiers: Sequence["DistributedDataClassifier"], counter=None,
                    device_log=None, task_stats=None) -> "DataFrame":
    """Every record with its predictions (null for rejects) and a status: kept, filtered or rejected."""
    from pyspark.sql import functions as F

    from sparkcurate.spark.stage import classify_dataframe, filter_expression

    out = classify_dataframe(df, classifiers, counter, skip_column=REASON_COLUMN, device_log=device_log,
                             task_stats=task_stats)
    keep = filter_expression(classifiers)
    status = (F.when(F.col(REASON_COLUMN).isNotNull(), F.lit("rejected"))
              .when(F.coalesce(keep, F.lit(False)) if keep is not None else F.lit(True), F.lit("kept"))
              .otherwise(F.lit("filtered")))
    return out.withColumn(STATUS_COLUMN, status)


def internal_columns(df: "DataFrame") -> list[str]:
    from sparkcurate.spark.stage import CONFIDENCE_PREFIX

    return [c for c in df.columns
            if c in (STATUS_COLUMN, REASON_COLUMN, CORRUPT_COLUMN) or c.startswith(CONFIDENCE_PREFIX)]


def output_rows(rows: "DataFrame", classifiers) -> "DataFrame":
    from pyspark.sql import functions as F

    kept = rows.filter(F.col(STATUS_COLUMN) == "kept")
    return kept.drop(*internal_columns(rows))


def write_rejects(spark: "SparkSession", rows: "DataFrame", opts: JobOptions, run_id: str) -> None:
    """``OUT/_rejects/``: one JSON line per rejected record with ``reason``, ``file_name`` and the original line
    (malformed input) or record. Written to a staging folder, then swapped in, so a failed run keeps the old."""
    from pyspark.sql import functions as F

    from sparkcurate.io.fs import HadoopFS

    rejected = rows.filter(F.col(STATUS_COLUMN) == "rejected")
    data_cols = [c for c in rows.columns
                 if c not in internal_columns(rows) and c != opts.file_name_column
                 and c not in _output_column_names(opts.classifiers)]
    record = F.when(F.col(CORRUPT_COLUMN).isNull(), F.struct(*[F.col(c) for c in data_cols]))
    out = rejected.select(
        F.col(REASON_COLUMN).alias("reason"),
        F.col(opts.file_name_column).alias("file_name"),
        F.col(CORRUPT_COLUMN).alias("line"),
        record.alias("record"),
    )
    fs = HadoopFS(spark, opts.output)
    staging = f"_staging/rejects-{run_id}"
    out.write.mode("overwrite").json(f"{opts.output.rstrip('/')}/{staging}")
    fs.delete(REJECTS_DIR)
    fs.rename(staging, REJECTS_DIR)
    if not fs.list("_staging"):
        fs.delete("_staging")


def _output_column_names(classifiers) -> set[str]:
    from sparkcurate.spark.stage import output_fields

    return {name for name, _ in output_fields(classifiers)}


@dataclass
class Counts:
    by_status_file: list[tuple[str, str, str | None, int]]  # (file, status, reason, n)
    labels: dict[str, list[tuple[str, str | None, str, int]]]  # classifier -> (file, label, status, n)
    histograms: dict[str, list[int]]


def count_rows(rows: "DataFrame", classifiers, file_name_column: str) -> Counts:
    """Counts from the persisted rows, in one Spark job: per file and status/reason, per label, and confidence
    histograms.

    Why one job: each action over the persisted rows is a full read of them (text included), so separate
    ``groupBy().collect()`` calls cost 1 + 2 x classifiers passes; measured on the GPU machine, those extra passes
    took a fifth of a one-GPU run. ``GROUPING SETS`` computes every count from a single scan; ``grouping_id``
    says which set each result row belongs to.
    """
    from pyspark.sql import functions as F

    from sparkcurate.spark.stage import confidence_column

    status = F.col(STATUS_COLUMN)
    columns = {"f": F.col(file_name_column), "s": status, "r": F.col(REASON_COLUMN)}
    sets: list[tuple[str, str | None, tuple[str, ...]]] = [("status", None, ("f", "s", "r"))]
    for i, c in enumerate(classifiers):
        conf = F.col(confidence_column(c))
        bucket = F.least(F.floor(conf * HISTOGRAM_BINS), F.lit(HISTOGRAM_BINS - 1)).cast("int")
        columns[f"l{i}"] = F.col(c.pred_column).cast("string")
        columns[f"b{i}"] = F.when((status != "rejected") & conf.isNotNull(), bucket)
        sets += [("labels", c.name, ("f", f"l{i}", "s")), ("hist", c.name, (f"b{i}",))]
    names = list(columns)
    gid_of = {sum(1 << (len(names) - 1 - j) for j, n in enumerate(names) if n not in cols): (kind, name)
              for kind, name, cols in sets}
    view = f"sparkcurate_counts_{uuid.uuid4().hex}"
    rows.select(*[expr.alias(n) for n, expr in columns.items()]).createOrReplaceTempView(view)
    spark = rows.sparkSession
    try:
        result = spark.sql(
            f"SELECT {', '.join(names)}, grouping_id({', '.join(names)}) AS gid, count(1) AS n FROM {view} "
            f"GROUP BY GROUPING SETS ({', '.join('(' + ', '.join(cols) + ')' for _, _, cols in sets)})").collect()
    finally:
        spark.catalog.dropTempView(view)
    return _counts_from_sets(result, gid_of, classifiers)


def _counts_from_sets(result, gid_of: dict[int, tuple[str, str | None]], classifiers) -> Counts:
    """Sort the rows of the GROUPING SETS query back into the three kinds of counts."""
    by_status: list[tuple[str, str, str | None, int]] = []
    labels: dict[str, list] = {c.name: [] for c in classifiers}
    hists: dict[str, list[int]] = {c.name: [0] * HISTOGRAM_BINS for c in classifiers}
    index = {c.name: i for i, c in enumerate(classifiers)}
    for r in result:
        kind, name = gid_of[r["gid"]]
        if kind == "status":
            by_status.append((r["f"], r["s"], r["r"], int(r["n"])))
        elif kind == "labels":
            if r["s"] != "rejected":  # labels of classified rows only
                labels[name].append((r["f"], r[f"l{index[name]}"], r["s"], int(r["n"])))
        else:
            b = r[f"b{index[name]}"]
            if b is not None and 0 <= b < HISTOGRAM_BINS:
                hists[name][b] += int(r["n"])
    return Counts(by_status, labels, hists)


def build_summary(spark, opts: JobOptions, counts: Counts, models: list[dict], listing, started: float,
                  elapsed: float, task_devices: dict[str, int] | None = None) -> dict[str, Any]:
    totals = {"kept": 0, "filtered": 0, "rejected": 0}
    reasons: dict[str, int] = {}
    by_file: dict[str, dict[str, Any]] = {
        f.file_name: {"input": 0, "output": 0, "filtered": 0, "rejected": 0, "labels": {}} for f in listing.files
    }
    for fname, status, reason, n in counts.by_status_file:
        totals[status] += n
        entry = by_file.setdefault(fname, {"input": 0, "output": 0, "filtered": 0, "rejected": 0, "labels": {}})
        entry["input"] += n
        entry[{"kept": "output", "filtered": "filtered", "rejected": "rejected"}[status]] += n
        if reason:
            reasons[reason] = reasons.get(reason, 0) + n
    by_label: dict[str, dict[str, int]] = {}
    for cname, rows in counts.labels.items():
        agg = by_label.setdefault(cname, {})
        for fname, label, _status, n in rows:
            key = label if label is not None else "(none)"
            agg[key] = agg.get(key, 0) + n
            file_labels = by_file[fname]["labels"].setdefault(cname, {})
            file_labels[key] = file_labels.get(key, 0) + n
    total_in = sum(totals.values())
    classified = totals["kept"] + totals["filtered"]
    return {
        "status": "succeeded",
        "started_at": _iso(started),
        "finished_at": _iso(started + elapsed),
        "elapsed_s": round(elapsed, 3),
        "input": opts.input,
        "output": opts.output,
        "command": opts.command,
        "layout": opts.layout,
        "input_files": len(listing.files),
        "input_bytes": listing.total_bytes,
        "empty_files": sorted(f.file_name for f in listing.files if f.size == 0),
        "ignored_files": [{"file": name, "why": why} for name, why in listing.ignored[:1000]],
        "ignored_files_count": len(listing.ignored),
        "input_records": total_in,
        "output_records": totals["kept"],
        "filtered_records": totals["filtered"],
        "rejected_records": totals["rejected"],
        "rejected_by_reason": dict(sorted(reasons.items())),
        "classifiers": [_classifier_entry(c) for c in opts.classifiers],
        "by_label": by_label,
        "by_file": by_file,
        "prob_histograms": {
            name: {"column": f"{name} top probability",
                   "edges": [round(i / HISTOGRAM_BINS, 4) for i in range(HISTOGRAM_BINS + 1)], "counts": hist}
            for name, hist in counts.histograms.items()
        },
        "docs_per_s": round(classified / elapsed, 2) if elapsed > 0 else None,
        "devices": sorted(task_devices or {}),
        "task_devices": dict(sorted((task_devices or {}).items())),
        "spark": _spark_facts(spark),
        "models": [{"classifier": m["classifier"], "model": m["model"], "revision": m["revision"],
                    "fingerprint": m["fingerprint"]} for m in models],
        "versions": versions(),
        "rapids": _rapids(spark),
        **opts.extra,
    }


def _classifier_entry(c) -> dict[str, Any]:
    return {"name": c.name, "model": c.model, "revision": c.revision, "pred_column": c.pred_column,
            "prob_column": c.prob_column, "filter_by": c.filter_by, "device": c.device,
            "max_chars": c.max_chars, "max_tokens": c.max_tokens}


def _spark_facts(spark) -> dict[str, Any]:
    conf = spark.sparkContext.getConf()
    return {"version": spark.version, "master": spark.sparkContext.master,
            "task_gpu_amount": conf.get("spark.task.resource.gpu.amount", None),
            "executor_gpu_amount": conf.get("spark.executor.resource.gpu.amount", None)}


def _rapids(spark) -> dict[str, Any]:
    try:
        from sparkcurate.spark.rapids import detect_rapids
    except ImportError:
        return {"enabled": None}
    try:
        return detect_rapids(spark)
    except Exception as exc:  # never fail a finished job over a report detail
        return {"enabled": None, "error": str(exc)}


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("sparkcurate", "pyspark", "torch", "transformers", "tokenizers", "pyarrow", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

