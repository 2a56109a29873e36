"""The formats and RAPIDS rows of ``benchmarks/spark_e2e.py --formats`` (issue 20's table, issue 21's plugin on
and off): what each row runs, each row as its own Spark application (a child process), and the checks on what
the rows wrote.

Rows (``FORMATS``), all on the same synthetic documents (the JSONL files, and a Parquet copy of them written by
pyarrow, file for file):

* ``jsonl_reserialize``: JSONL in, JSONL out, records re-serialized (today's default path), schema passed;
* ``jsonl_exact``: JSONL in, each kept line written back byte for byte with the predictions appended;
* ``parquet``: Parquet in, Parquet out;
* ``attributes``: JSONL in, attribute files out (the key and the predictions of every record).

With the RAPIDS Accelerator (``--rapids-jar PATH`` or ``on-classpath``), the rows of ``--rapids-formats`` again
with the plugin on, once per memory variant (``--rapids-variants``, names parsed by ``rapids_variant_conf``):
``pool-NONE`` (no pool), ``pool-ASYNC-0.3`` (the ASYNC pool capped at 0.3 of the card:
``allocFraction`` = ``maxAllocFraction``), and either with ``+python-gpu`` (``spark.rapids.sql.python.gpu.enabled``:
the plugin schedules the Python hand-off on the GPU; its Python-side RMM pool stays off, PyTorch allocates).
Each plugin row's output is compared with the plugin-off row of its format: same records, same labels,
probabilities within ``PROB_TOLERANCE``; its summary's ``rapids.gpu_operators`` / ``cpu_operators`` are kept.
Without a GPU the plugin runs in explainOnly mode (it plans, the CPU runs everything): that checks the harness
and the comparison, not the GPU.

Every application is fresh (a child process: ``python -m benchmarks.spark_e2e --variant SPEC.json``), so each row
pays its executor's model load, as a production job does; the JVM start and executor launch are not in the
job's seconds (``app_seconds`` has them). Where ``nvidia-smi`` exists, the card's peak memory use during each
application is sampled once a second (``gpu_memory_peak_mib``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("benchmarks.spark_formats")
REPO = Path(__file__).resolve().parent.parent

#: Row name -> the job's options (``JobOptions`` fields) and which copy of the documents it reads.
FORMATS: dict[str, dict[str, Any]] = {
    "jsonl_reserialize": {"data": "jsonl", "input_format": "jsonl", "output_format": "jsonl",
                          "jsonl_mode": "reserialize"},
    "jsonl_exact": {"data": "jsonl", "input_format": "jsonl", "output_format": "jsonl", "jsonl_mode": "exact"},
    "parquet": {"data": "parquet", "input_format": "parquet", "output_format": "parquet"},
    "attributes": {"data": "jsonl", "input_format": "jsonl", "output_format": "jsonl",
                   "output_mode": "attributes"},
}
DEFAULT_RAPIDS_FORMATS = ("parquet", "jsonl_reserialize")
DEFAULT_RAPIDS_VARIANTS = ("pool-NONE", "pool-ASYNC-0.3", "pool-NONE+python-gpu", "pool-ASYNC-0.3+python-gpu")
ON_CLASSPATH = "on-classpath"
PLUGIN_CLASS = "com.nvidia.spark.SQLPlugin"
PROB_TOLERANCE = 1e-6
PRED_COLUMN, PROB_COLUMN = "domain_pred", "domain_prob"
_VARIANT = re.compile(r"^pool-(?P<pool>NONE|ASYNC)(?:-(?P<fraction>0?\.\d+|1(?:\.0+)?))?(?P<python>\+python-gpu)?$")


def parse_names(text: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    """A comma list of names (``all`` for every known one), each checked."""
    names = list(known) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"unknown {what} {unknown or text!r}; choose from {', '.join(known)} (or all)")
    return names


def rapids_variant_conf(name: str) -> dict[str, str]:
    """The memory settings of a variant name: ``pool-NONE`` or ``pool-ASYNC-<fraction>`` (the pool capped at that
    fraction of the card, 0.3 when left out), optionally ``+python-gpu``."""
    m = _VARIANT.match(name)
    if not m or (m["pool"] == "NONE" and m["fraction"]):
        raise ValueError(f"RAPIDS variant {name!r}: use pool-NONE or pool-ASYNC-<fraction>, optionally +python-gpu")
    conf = {"spark.rapids.memory.gpu.pool": m["pool"]}
    if m["pool"] == "ASYNC":
        fraction = m["fraction"] or "0.3"
        conf.update({"spark.rapids.memory.gpu.allocFraction": fraction,
                     "spark.rapids.memory.gpu.maxAllocFraction": fraction,
                     "spark.rapids.memory.gpu.minAllocFraction": "0"})
    python = bool(m["python"])
    conf["spark.rapids.sql.python.gpu.enabled"] = str(python).lower()
    if python:  # the plugin's Python worker would otherwise import RMM (cuDF's allocator) for a pool of its own
        conf["spark.rapids.python.memory.gpu.pooling.enabled"] = "false"
    return conf


def plugin_conf(jar: str, variant: str, explain_only: bool) -> dict[str, str]:
    """The plugin on (conf/spark-defaults.rapids.conf's settings that apply here) with a memory variant; the jar
    on the driver's and executors' class path unless it is there already (``on-classpath``: in Spark's jars/)."""
    conf = {
        "spark.plugins": PLUGIN_CLASS,
        "spark.rapids.sql.enabled": "true",
        "spark.rapids.sql.concurrentGpuTasks": "2",
        "spark.rapids.sql.explain": "NOT_ON_GPU",
        "spark.sql.execution.arrow.useLargeVarTypes": "false",
        **rapids_variant_conf(variant),
    }
    if jar != ON_CLASSPATH:
        conf["spark.driver.extraClassPath"] = conf["spark.executor.extraClassPath"] = str(Path(jar).resolve())
    if explain_only:
        conf["spark.rapids.sql.mode"] = "explainOnly"
    else:
        conf["spark.rapids.memory.pinnedPool.size"] = "2g"
    return conf


def write_parquet_copy(src: Path, out: Path) -> int:
    """The JSONL documents of ``src`` as Parquet, one file per JSONL file (``part-00000.jsonl`` ->
    ``part-00000.parquet``), same records in the same order, snappy; returns the bytes written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for path in sorted(src.glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        table = pa.table({"id": [r["id"] for r in records], "text": [r["text"] for r in records]})
        pq.write_table(table, out / (path.stem + ".parquet"), compression="snappy")
    return folder_bytes(out)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------------------------
# The parent: one child process per row
# ---------------------------------------------------------------------------------------------------------------


class GpuMemorySampler:
    """The card's peak ``memory.used`` (MiB) while a row runs, from ``nvidia-smi`` once a second; None without it."""

    def __init__(self) -> None:
        self.tool = shutil.which("nvidia-smi")
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "GpuMemorySampler":
        if self.tool:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run([self.tool, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                used = max(int(v) for v in out.split())
                self.peak = used if self.peak is None else max(self.peak, used)
            except (ValueError, OSError, subprocess.SubprocessError):
                pass
            self._stop.wait(1.0)


def run_child(spec: dict[str, Any], work: Path, timeout_s: float) -> dict[str, Any]:
    """Run one row in a fresh process (its own Spark application); its result row, or the error and the log's
    tail when it failed."""
    name = spec["row"]
    spec_path, result_path, log_path = (work / "specs" / f"{name}.json", work / "results" / f"{name}.json",
                                        work / "logs" / f"{name}.log")
    for p in (spec_path, result_path, log_path):
        p.parent.mkdir(parents=True, exist_ok=True)
    result_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({**spec, "result": str(result_path)}, indent=1))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with GpuMemorySampler() as sampler, log_path.open("w") as logf:
        try:
            rc = subprocess.run([sys.executable, "-m", "benchmarks.spark_e2e", "--variant", str(spec_path)],
                                stdout=logf, stderr=subprocess.STDOUT, cwd=REPO, env=env, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    app_seconds = round(time.perf_counter() - start, 2)
    if rc != 0 or not result_path.exists():
        tail = log_path.read_text(errors="replace")[-4000:]
        log.error("%s failed (%s):\n%s", name, rc, tail)
        return {"name": name, "error": f"exit {rc}", "log_tail": tail, "app_seconds": app_seconds,
                **{k: spec.get(k) for k in ("format", "plugin", "variant")}}
    row = json.loads(result_path.read_text())
    row.update(app_seconds=app_seconds, gpu_memory_peak_mib=sampler.peak)
    log.info("%s: %s docs/s, %s output bytes, %.1f s app", name, row.get("docs_per_s"), row.get("output_bytes"),
             app_seconds)
    return row


# ---------------------------------------------------------------------------------------------------------------
# The child: one Spark application, one row
# ---------------------------------------------------------------------------------------------------------------


def run_variant(spec: dict[str, Any]) -> None:
    """The child's work (``spark_e2e --variant``): start the application, run the row, write its result."""
    import argparse

    from benchmarks import spark_e2e

    args = argparse.Namespace(**spec["args"])
    spark = spark_e2e.gpu_session(args, spec.get("conf") or {})
    try:
        if not args.smoke:
            spark_e2e.wait_until_executors(spark)
        if spec["kind"] == "baseline":
            row = spark_e2e.run_predict_batch_udf(spark, Path(spec["input"]), Path(spec["out"]),
                                                  Path(spec["model"]), args)
        else:
            row = run_format_job(spark, spec, args)
        row.update(name=spec["row"], kind=spec["kind"], spark=spark.version)
    finally:
        spark.stop()
    Path(spec["result"]).write_text(json.dumps(row, indent=1))


def run_format_job(spark, spec: dict[str, Any], args) -> dict[str, Any]:
    """``sparkcurate.pipeline.run`` for one row: the domain classifier with its probabilities written (the plugin
    comparison needs them), timed from the call to its return."""
    from benchmarks.spark_e2e import SYNTHETIC_SCHEMA
    from sparkcurate.classifiers import DomainClassifier
    from sparkcurate.pipeline import JobOptions, run

    fmt = FORMATS[spec["format"]]
    clf = DomainClassifier(model=spec["model"], device="cpu" if args.smoke else "auto", prob_column=PROB_COLUMN,
                           token_budget=args.token_budget)
    options = {k: v for k, v in fmt.items() if k != "data"}
    schema = SYNTHETIC_SCHEMA if fmt["data"] == "jsonl" and fmt.get("jsonl_mode") == "reserialize" else None
    start = time.perf_counter()
    summary = run(spark, JobOptions(input=spec["input"], output=spec["out"], classifiers=[clf], quiet=True,
                                    report=False, schema=schema, waves=0 if args.partition_mb else args.waves,
                                    **options))
    seconds = time.perf_counter() - start
    rapids = summary.get("rapids") or {}
    return {"format": spec["format"], "plugin": spec.get("plugin", False), "variant": spec.get("variant"),
            "docs": summary["input_records"], "output_records": summary["output_records"],
            "seconds": round(seconds, 2), "docs_per_s": round(summary["input_records"] / seconds, 1),
            "output_bytes": summary["output_bytes"], "timings_s": summary.get("timings_s"),
            "task_stats": summary.get("task_stats"), "task_devices": summary.get("task_devices"),
            "classify_docs_per_s": summary.get("classify_docs_per_s"), "precision": clf.precision,
            "attribute_key": summary.get("attribute_key"), "tasks_per_gpu": args.tasks_per_gpu,
            "rapids": {k: rapids.get(k) for k in ("enabled", "gpu_operators", "cpu_operators", "warnings",
                                                   "settings")},
            "out": spec["out"]}


# ---------------------------------------------------------------------------------------------------------------
# What the rows wrote
# ---------------------------------------------------------------------------------------------------------------


def predictions(out: Path, fmt: str) -> dict[str, tuple[str, list[float] | None]]:
    """``id -> (label, probabilities)`` of every record a row wrote under ``out`` (partitioned layout)."""
    found: dict[str, tuple[str, list[float] | None]] = {}
    if FORMATS[fmt]["output_format"] == "parquet":
        import pyarrow.parquet as pq

        for path in sorted(out.glob("file_name=*/*.parquet")):
            t = pq.read_table(path, columns=["id", PRED_COLUMN, PROB_COLUMN]).to_pydict()
            for key, label, probs in zip(t["id"], t[PRED_COLUMN], t[PROB_COLUMN]):
                _add(found, key, label, probs)
        return found
    for path in sorted(out.glob("file_name=*/part-*.json*")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    _add(found, r["id"], r.get(PRED_COLUMN), r.get(PROB_COLUMN))
    return found


def _add(found: dict, key: str, label, probs) -> None:
    if key in found:
        raise ValueError(f"record {key!r} written twice")
    found[key] = (label, probs)


def compare(reference: dict[str, tuple], other: dict[str, tuple], tolerance: float = PROB_TOLERANCE
            ) -> dict[str, Any]:
    """Same records, same labels, probabilities within ``tolerance``: each counted, and ``equal`` when all hold."""
    common = reference.keys() & other.keys()
    labels = sum(1 for k in common if reference[k][0] != other[k][0])
    diff = 0.0
    for k in common:
        a, b = reference[k][1] or [], other[k][1] or []
        if len(a) != len(b):
            diff = float("inf")
            break
        diff = max([diff, *(abs(x - y) for x, y in zip(a, b))])
    same = reference.keys() == other.keys()
    return {"records": len(other), "reference_records": len(reference), "same_records": same,
            "missing": len(reference.keys() - other.keys()), "extra": len(other.keys() - reference.keys()),
            "label_mismatches": labels, "max_prob_abs_diff": diff, "tolerance": tolerance,
            "equal": same and labels == 0 and diff <= tolerance}


# ---------------------------------------------------------------------------------------------------------------
# One invocation: every row, the checks, the results document
# ---------------------------------------------------------------------------------------------------------------


def measure(args, root: Path, ckpt: Path) -> dict[str, Any]:
    """Every row of one invocation, in order: a warm-up application (untimed: fills the node's kernel caches),
    the plugin-off rows, the plugin rows (each checked against its format's plugin-off output), the
    ``predict_batch_udf`` baseline. Returns the results document (less command and card)."""
    formats = parse_names(args.formats, tuple(FORMATS), "format")
    rapids_formats = parse_names(args.rapids_formats, tuple(FORMATS), "format") if args.rapids_jar else []
    formats += [f for f in rapids_formats if f not in formats]  # each plugin row needs its plugin-off row
    variants = [v for v in args.rapids_variants.split(",") if v] if args.rapids_jar else []
    for v in variants:
        rapids_variant_conf(v)  # a bad name fails before any application starts
    explain_only = bool(args.rapids_jar) and (args.rapids_explain_only or args.smoke)
    data = {"jsonl": root / "data", "parquet": root / "data-parquet"}
    input_bytes = {"jsonl": folder_bytes(data["jsonl"]),
                   "parquet": write_parquet_copy(data["jsonl"], data["parquet"])}
    child_args = {k: getattr(args, k) for k in ("smoke", "gpus", "tasks_per_gpu", "executor_mb", "token_budget",
                                               "waves", "partition_mb")}

    def spec(row: str, kind: str, fmt: str | None, out: Path, conf=None, variant=None, input_=None):
        return {"row": row, "kind": kind, "format": fmt, "model": str(ckpt), "out": str(out), "args": child_args,
                "conf": conf or {}, "plugin": conf is not None, "variant": variant,
                "input": str(input_ or data[FORMATS[fmt]["data"]])}

    work, rows, warm = root / "runs", [], None
    if args.warm_up_docs:
        warm = run_child(spec("warm_up", "job", "jsonl_reserialize", root / "out-warm-up",
                              input_=root / "warm-data"), work, args.variant_timeout)
    for fmt in formats:
        rows.append(run_child(spec(fmt, "job", fmt, root / f"out-{fmt}"), work, args.variant_timeout))
    for variant in variants:
        conf = plugin_conf(args.rapids_jar, variant, explain_only)
        for fmt in rapids_formats:
            row = run_child(spec(f"{fmt}+rapids[{variant}]", "job", fmt, root / f"out-{fmt}-rapids-{variant}", conf,
                                 variant), work, args.variant_timeout)
            row["rapids_mode"] = "explainOnly" if explain_only else "on"
            rows.append(row)
    check_outputs(rows)
    baseline = None
    if not args.skip_baseline:
        baseline = run_child(spec("predict_batch_udf_fp32", "baseline", None, root / "out-baseline",
                                  input_=root / "baseline-data"), work, args.variant_timeout)
    return {"docs": args.docs, "files": args.files, "input_bytes": input_bytes, "rapids_jar": args.rapids_jar,
            "rapids_mode": ("explainOnly" if explain_only else "on") if args.rapids_jar else None,
            "prob_column": PROB_COLUMN, "prob_tolerance": PROB_TOLERANCE,
            "warm_up": warm, "rows": rows, "baseline": baseline, "table": table(rows, baseline)}


def check_outputs(rows: list[dict[str, Any]]) -> None:
    """Adds to each row ``vs_plugin_off`` (a plugin row against its format's plugin-off output) or
    ``vs_jsonl_reserialize`` (a plugin-off row against today's path: the formats classify alike)."""
    done = [r for r in rows if "error" not in r]
    off = {r["format"]: r for r in done if not r["plugin"]}
    cache: dict[str, dict] = {}

    def preds(row):
        if row["out"] not in cache:
            cache[row["out"]] = predictions(Path(row["out"]), row["format"])
        return cache[row["out"]]

    for r in done:
        if r["plugin"] and r["format"] in off:
            r["vs_plugin_off"] = compare(preds(off[r["format"]]), preds(r))
        elif not r["plugin"] and "jsonl_reserialize" in off and r["format"] != "jsonl_reserialize":
            r["vs_jsonl_reserialize"] = compare(preds(off["jsonl_reserialize"]), preds(r))
        if r["plugin"] and not r.get("vs_plugin_off", {}).get("equal", True):
            log.warning("%s: output differs from the plugin-off run: %s", r["name"], r["vs_plugin_off"])


def table(rows: list[dict[str, Any]], baseline: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One short line a row: what the issues' tables show."""
    ref = next((r for r in rows if r.get("format") == "jsonl_reserialize" and not r.get("plugin")
                and "docs_per_s" in r), None)
    out = []
    for r in rows + ([baseline] if baseline else []):
        line = {"row": r["name"], "docs_per_s": r.get("docs_per_s"), "output_bytes": r.get("output_bytes"),
                "error": r.get("error")}
        if ref and r.get("docs_per_s"):
            line["vs_jsonl_reserialize"] = round(r["docs_per_s"] / ref["docs_per_s"], 3)
        if r.get("plugin"):
            line["equal_to_plugin_off"] = (r.get("vs_plugin_off") or {}).get("equal")
            line["gpu_operators"] = (r.get("rapids") or {}).get("gpu_operators")
            line["gpu_memory_peak_mib"] = r.get("gpu_memory_peak_mib")
        out.append({k: v for k, v in line.items() if v is not None})
    return out
