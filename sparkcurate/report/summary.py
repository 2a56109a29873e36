"""What a run did: the counts, taken in one scan of the very rows that were written, and ``OUT/_summary.json``
(records in and out, per file and label, confidence histograms, speed, what ran where, versions).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable

from sparkcurate.io.sources.base import REASON_COLUMN
from sparkcurate.report.progress import docs_per_s
from sparkcurate.spark.outcome import STATUS_COLUMN

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

    from sparkcurate.io.listing import InputListing

log = logging.getLogger(__name__)

HISTOGRAM_BINS = 20


@dataclass
class Counts:
    """What the rows of one run hold, counted in one scan (``count_rows``)."""

    by_status_file: list[tuple[str, str, str | None, int]]  # (file, status, reason, n)
    labels: dict[str, list[tuple[str, str | None, str, int]]]  # classifier -> (file, label, status, n)
    histograms: dict[str, list[int]]
    # classifier -> file -> histogram (the unit records keep each file's, so a resumed run can add them up)
    file_histograms: dict[str, dict[str, list[int]]] = field(default_factory=dict)


def count_rows(rows: "DataFrame", classifiers, file_name_column: str) -> Counts:
    """Counts from the persisted rows, in one Spark job of one stage: per file and status/reason, per label, and
    confidence histograms.

    Why one job: each action over the persisted rows is a full read of them (text included), so separate
    ``groupBy().collect()`` calls cost 1 + 2 x classifiers passes; measured on the GPU machine, those extra passes
    took a fifth of a one-GPU run. Why no shuffle: a ``GROUPING SETS`` aggregate (one scan) still ends in a
    shuffle, which adaptive execution runs as jobs of their own after the classify stage (two small jobs, ~3 s
    of a fresh application, issue 23). Here each task counts its partition's few small columns in its Python
    worker (``_partial_counts``: one Arrow group-by per set of columns) and the driver adds the partitions'
    counts up. Exact under retries: ``collect`` keeps one successful attempt's result per partition."""
    from functools import partial

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
        sets += [("labels", c.name, ("f", f"l{i}", "s")), ("hist", c.name, ("f", f"b{i}"))]
    names = list(columns)
    kinds = {gid: (kind, name) for gid, (kind, name, _cols) in enumerate(sets)}
    schema = ", ".join(f"{n} {'int' if n.startswith('b') else 'string'}" for n in names) + ", gid int, n long"
    selected = rows.select(*[expr.alias(n) for n, expr in columns.items()])
    partials = selected.mapInArrow(partial(_partial_counts, names, [cols for _, _, cols in sets]), schema)
    return _counts_from_sets(_add_partials(partials.collect(), names), kinds, classifiers)


def _partial_counts(names: list[str], sets: list[tuple[str, ...]], batches):
    """Runs in a task: rows per distinct value of each set of columns (nulls a value of their own, as in
    GROUP BY), over the whole partition; the other columns null, ``gid`` the set's index."""
    import pyarrow as pa

    def grouped(table: "pa.Table", cols: tuple[str, ...], agg: tuple, out: str) -> "pa.Table":
        # By name: where pyarrow puts the keys among the aggregates changed between versions.
        result = table.group_by(list(cols)).aggregate([agg])
        return pa.table({**{c: result.column(c) for c in cols}, "n": result.column(out).cast(pa.int64())})

    parts: list[list[pa.Table]] = [[] for _ in sets]
    schema = None
    for batch in batches:
        schema = batch.schema  # the column types Spark sends (and takes back: large strings where it uses them)
        table = pa.Table.from_batches([batch])
        for i, cols in enumerate(sets):
            parts[i].append(grouped(table, cols, ([], "count_all"), "count_all"))
    for i, cols in enumerate(sets):
        if not parts[i]:
            continue
        total = grouped(pa.concat_tables(parts[i]), cols, ("n", "sum"), "n_sum")
        arrays = [total.column(n) if n in cols else pa.nulls(total.num_rows, schema.field(n).type) for n in names]
        arrays += [pa.array([i] * total.num_rows, pa.int32()), total.column("n")]
        yield from pa.Table.from_arrays(arrays, names=[*names, "gid", "n"]).to_batches()


def _add_partials(result, names: list[str]) -> list[dict[str, Any]]:
    """The partitions' counts added up: one row per set and value."""
    totals: dict[tuple, int] = {}
    for r in result:
        key = (r["gid"], *(r[n] for n in names))
        totals[key] = totals.get(key, 0) + int(r["n"])
    return [{"gid": key[0], **dict(zip(names, key[1:])), "n": n} for key, n in totals.items()]


def _counts_from_sets(result, gid_of: dict[int, tuple[str, str | None]], classifiers) -> Counts:
    """Sort the counted rows (one per set of columns and value, ``gid``: the set) into the three kinds of counts."""
    by_status: list[tuple[str, str, str | None, int]] = []
    labels: dict[str, list] = {c.name: [] for c in classifiers}
    hists: dict[str, list[int]] = {c.name: [0] * HISTOGRAM_BINS for c in classifiers}
    file_hists: dict[str, dict[str, list[int]]] = {c.name: {} for c in classifiers}
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
                file_hists[name].setdefault(r["f"], [0] * HISTOGRAM_BINS)[b] += int(r["n"])
    return Counts(by_status, labels, hists, file_hists)


def unit_counts(counts: Counts, file_names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``counts`` split by input file, as plain JSON values (the unit records, ``io.units``): per file its
    ``status`` rows ([status, reason, n]), ``labels`` (classifier -> [label, status, n]) and ``hist``
    (classifier -> bins). Every name of ``file_names`` has an entry (an empty file's holds nothing)."""
    out: dict[str, dict[str, Any]] = {n: {"status": [], "labels": {}, "hist": {}} for n in file_names}

    def entry(name: str) -> dict[str, Any]:
        return out.setdefault(name, {"status": [], "labels": {}, "hist": {}})

    for fname, status, reason, n in counts.by_status_file:
        entry(fname)["status"].append([status, reason, n])
    for cname, rows in counts.labels.items():
        for fname, label, status, n in rows:
            entry(fname)["labels"].setdefault(cname, []).append([label, status, n])
    for cname, per_file in counts.file_histograms.items():
        for fname, hist in per_file.items():
            entry(fname)["hist"][cname] = list(hist)
    return out


def counts_of_units(units: dict[str, dict[str, Any]], classifiers) -> Counts:
    """The run's ``Counts`` from every unit's counts (``unit_counts``; reused units' from their records)."""
    by_status: list[tuple[str, str, str | None, int]] = []
    labels: dict[str, list] = {c.name: [] for c in classifiers}
    hists: dict[str, list[int]] = {c.name: [0] * HISTOGRAM_BINS for c in classifiers}
    file_hists: dict[str, dict[str, list[int]]] = {c.name: {} for c in classifiers}
    for fname in sorted(units):
        entry = units[fname]
        by_status.extend((fname, s, r, int(n)) for s, r, n in entry.get("status", []))
        for cname, rows in entry.get("labels", {}).items():
            labels.setdefault(cname, []).extend((fname, label, s, int(n)) for label, s, n in rows)
        for cname, hist in entry.get("hist", {}).items():
            total = hists.setdefault(cname, [0] * HISTOGRAM_BINS)
            for b, n in enumerate(hist[:HISTOGRAM_BINS]):
                total[b] += int(n)
            file_hists.setdefault(cname, {})[fname] = list(hist)
    return Counts(by_status, labels, hists, file_hists)


def build_summary(spark: "SparkSession", opts: Any, counts: Counts, models: list[dict], listing: "InputListing",
                  started: float, elapsed: float, task_devices: dict[str, int] | None = None) -> dict[str, Any]:
    """The body of ``OUT/_summary.json`` for a run that succeeded (``opts``: its ``pipeline.JobOptions``)."""
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
        "output_format": opts.output_format,
        "output_table": getattr(opts, "output_table", None),  # where the kept rows went, when not under output
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
        "docs_per_s": docs_per_s(classified, elapsed),  # whole run; classify_docs_per_s: the classify phase
        "devices": sorted(task_devices or {}),
        "task_devices": dict(sorted((task_devices or {}).items())),
        "spark": _spark_facts(spark),
        "models": [{"classifier": m["classifier"], "model": m["model"], "revision": m["revision"],
                    "fingerprint": m["fingerprint"]} for m in models],
        "versions": versions(),
        "rapids": _rapids(spark, started),
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


def _rapids(spark, started: float) -> dict[str, Any]:
    """The RAPIDS check, plus which operators of this run's queries (those started since ``started``) ran on the
    GPU and which on the CPU, read from their executed plans."""
    try:
        from sparkcurate.spark.rapids import detect_rapids, executed_operators
    except ImportError:
        return {"enabled": None}
    try:
        return {**detect_rapids(spark), **executed_operators(spark, started)}
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


def task_stats_summary(stats: dict[str, float]) -> dict[str, float]:
    """The classify tasks' time, summed over tasks (``_max``: the slowest one), rounded for the summary.

    Retried or speculative task attempts add to these sums: they measure work done, not records."""
    return {key: round(value, 3) if isinstance(value, float) else value for key, value in sorted(stats.items())}


def classified_count(counts: Counts) -> int:
    """Records the model classified (kept + filtered; rejects never reach it)."""
    return sum(n for _fname, status, _reason, n in counts.by_status_file if status != "rejected")


def rejected_count(counts: Counts) -> int:
    """Records rejected before the model (no text, malformed line, ...)."""
    return sum(n for _fname, status, _reason, n in counts.by_status_file if status == "rejected")


def write_report(output: str) -> None:
    """``OUT/_report/index.html`` from the summary just written, so the Python call and the command give the same
    outputs. The report is written with local file operations: an output on another file system (S3, HDFS, ...)
    gets none (``sparkcurate report`` on a local copy builds it). The data is written by then: a report problem is
    a warning, never a failed job."""
    from sparkcurate.io.fs import local_path
    from sparkcurate.report import build_report

    local = local_path(output)
    if local is None:
        log.info("no report for %s: the report is built on local outputs only (`sparkcurate report` on a local "
                 "copy of the output builds it)", output)
        return
    try:
        log.info("report: %s", build_report(local))
    except Exception as exc:
        log.warning("could not build the report: %s", exc)
