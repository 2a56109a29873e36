"""Fixed costs of a fresh Spark application (issue 23): every second of ``sparkcurate classify`` on a small input,
from the command's start to its exit, for two source trees measured alternately in the same call.

Each run is a fresh process running the command (``sparkcurate.cli.main``) on local-cluster with one fake GPU
(conf/fakeGpusResources.sh, ``--device cpu``), one task slot, the tiny DeBERTa of ``spark_e2e --smoke`` and short
synthetic documents (so the classify work is small and the fixed costs show). Where the time went comes from two
clocks on one machine: the driver's marks (a thin wrapper times the command's steps by wrapping their functions;
nothing else changes) and Spark's event log (``spark.eventLog.enabled``: the executor's registration, every job
with its stages and tasks).

    python3 -m benchmarks.fixed_costs --before-ref main --runs 3 \\
        --out benchmarks/results/2026-12-06-cpu-fixed-costs.json       # this tree vs main, alternated, ~15 min
    python3 -m benchmarks.fixed_costs --smoke --out /tmp/fc.json         # one run of this tree (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

log = logging.getLogger("benchmarks.fixed_costs")
REPO = Path(__file__).resolve().parent.parent
SCHEMA = "id STRING, text STRING"

# Driver steps the child times: (module, attribute path, mark name). A step missing from a tree is skipped.
STEPS = [
    ("sparkcurate.classifiers.base", "DistributedDataClassifier.preflight", "preflight"),
    ("sparkcurate.spark.session", "get_session", "get_session"),
    ("sparkcurate.pipeline", "run", "pipeline_run"),
    ("sparkcurate.pipeline", "check_resources", "check_resources"),  # before issue 23: called in line
    ("sparkcurate.spark.resources", "check_resources", "check_resources"),  # since: in ResourceCheck's thread
    ("sparkcurate.pipeline", "ResourceCheck.result", "check_resources_wait"),
    ("sparkcurate.pipeline", "_group_job", "plan_units"),
    ("sparkcurate.pipeline", "_commit_run", "final_commit"),
    ("sparkcurate.pipeline", "build_summary", "build_summary"),
    ("sparkcurate.pipeline", "_report_and_release", "report"),
    ("sparkcurate.groups", "GroupJob.run", "groups"),
    ("sparkcurate.io.commit", "OutputCommit.start", "output_lock"),
    ("pyspark.sql.session", "SparkSession.stop", "session_stop"),
]


# --- the child: one command, its steps timed ------------------------------------------------------------------


def _wrap(marks: list, owner: Any, attr: str, name: str) -> None:
    """Replace ``owner.attr`` by a function that records (name, start, end) in ``marks`` (epoch seconds)."""
    inner = owner.__dict__.get(attr) if isinstance(owner, type) else getattr(owner, attr, None)
    if inner is None:
        return
    is_class_method = isinstance(inner, classmethod)
    fn = inner.__func__ if is_class_method else inner

    def timed(*args, **kwargs):
        start = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            marks.append((name, start, time.time()))

    setattr(owner, attr, classmethod(timed) if is_class_method else timed)


def child(spec_path: str) -> int:
    """Run the command of ``spec_path`` (a JSON file) with its steps timed; the marks go to ``spec["marks"]``."""
    started = time.time()
    import importlib

    spec = json.loads(Path(spec_path).read_text())
    marks: list = [("python_start", spec["launched"], started)]
    t = time.time()
    import sparkcurate.cli as cli

    modules = {m for m, _, _ in STEPS}
    for name in sorted(modules):
        importlib.import_module(name)
    marks.append(("driver_imports", t, time.time()))
    for module, path, name in STEPS:
        owner: Any = importlib.import_module(module)
        parts = path.split(".")
        for part in parts[:-1]:
            owner = getattr(owner, part, None)
        if owner is not None:
            _wrap(marks, owner, parts[-1], name)
    try:
        rc = cli.main(spec["argv"])
    finally:
        marks.append(("main_returned", time.time(), time.time()))
        Path(spec["marks"]).write_text(json.dumps(marks))
    exit_now = getattr(cli, "exit_now", None)  # the command's own way out where the tree has one
    if exit_now is not None:
        exit_now(rc)
    return rc


# --- the parent: runs, event logs, the breakdown ---------------------------------------------------------------


def event_log_records(folder: Path) -> list[dict]:
    """The events of the one application logged under ``folder`` (uncompressed, not rolled)."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".inprogress")]
    if len(files) != 1:
        raise RuntimeError(f"expected one event log under {folder}, found {[str(p) for p in files]}")
    return [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]


def spark_timeline(events: list[dict]) -> dict[str, Any]:
    """Epoch seconds of the application's start and end, the executors' registration, and every job (its
    description or call site, stages, tasks, and the tasks' launch/finish/deserialize/run times)."""
    out: dict[str, Any] = {"jobs": [], "executors_added": []}
    jobs: dict[int, dict] = {}
    stage_job: dict[int, int] = {}
    for e in events:
        kind = e["Event"]
        if kind == "SparkListenerApplicationStart":
            out["app_start"] = e["Timestamp"] / 1000
        elif kind == "SparkListenerApplicationEnd":
            out["app_end"] = e["Timestamp"] / 1000
        elif kind == "SparkListenerExecutorAdded":
            out["executors_added"].append(e["Timestamp"] / 1000)
        elif kind == "SparkListenerJobStart":
            props = e.get("Properties") or {}
            what = props.get("spark.job.description") or props.get("callSite.short") or "?"
            job = {"id": e["Job ID"], "what": what, "start": e["Submission Time"] / 1000, "tasks": [],
                   "stages": [s["Stage Name"] for s in e["Stage Infos"]]}
            jobs[e["Job ID"]] = job
            for s in e["Stage Infos"]:
                stage_job[s["Stage ID"]] = e["Job ID"]
            out["jobs"].append(job)
        elif kind == "SparkListenerJobEnd":
            jobs[e["Job ID"]]["end"] = e["Completion Time"] / 1000
        elif kind == "SparkListenerTaskEnd":
            info, metrics = e["Task Info"], e.get("Task Metrics") or {}
            job = jobs.get(stage_job.get(e["Stage ID"], -1))
            if job is not None:
                job["tasks"].append({"launch": info["Launch Time"] / 1000, "finish": info["Finish Time"] / 1000,
                                     "deserialize_s": metrics.get("Executor Deserialize Time", 0) / 1000,
                                     "run_s": metrics.get("Executor Run Time", 0) / 1000})
    return out


def job_kind(job: dict) -> str:
    """Which step of the run a Spark job belongs to, from its call site (``file.py:line``)."""
    what = job["what"]
    for needle, kind in (("resources.py", "executor_check"), ("summary.py", "count"), ("listing.py", "listing"),
                         ("jsonl.py", "schema_inference")):
        if needle in what:
            return kind
    return what.split(" at ")[0]


def breakdown(launched: float, exited: float, marks: list, timeline: dict) -> dict[str, Any]:
    """Seconds of each phase of one run, relative to the command's launch (see the module docstring)."""
    first: dict[str, tuple[float, float]] = {}
    total: dict[str, float] = {}
    for name, start, end in marks:
        first.setdefault(name, (start, end))
        total[name] = total.get(name, 0.0) + end - start
    rel = lambda t: round(t - launched, 3)  # noqa: E731
    phases = {name: round(total[name], 3) for name in total}
    jobs = []
    for job in timeline["jobs"]:
        tasks = job["tasks"]
        jobs.append({"job": job["id"], "kind": job_kind(job), "start_s": rel(job["start"]),
                     "seconds": round(job.get("end", job["start"]) - job["start"], 3), "tasks": len(tasks),
                     "task_s": round(sum(t["finish"] - t["launch"] for t in tasks), 3),
                     "task_run_s": round(sum(t["run_s"] for t in tasks), 3),
                     "task_deserialize_s": round(sum(t["deserialize_s"] for t in tasks), 3),
                     "first_task_launch_s": rel(min(t["launch"] for t in tasks)) if tasks else None})
    busy = sorted((j["start"], j.get("end", j["start"])) for j in timeline["jobs"])
    in_jobs, last = 0.0, None
    for start, end in busy:  # union of the jobs' intervals
        if last is None or start > last:
            in_jobs += end - start
            last = end
        elif end > last:
            in_jobs += end - last
            last = end
    out = {
        "command_s": round(exited - launched, 3),
        "phases_s": phases,
        "app_start_s": rel(timeline["app_start"]) if "app_start" in timeline else None,
        "executor_registered_s": rel(min(timeline["executors_added"])) if timeline["executors_added"] else None,
        "app_end_s": rel(timeline["app_end"]) if "app_end" in timeline else None,
        "spark_jobs": len(jobs),
        "in_spark_jobs_s": round(in_jobs, 3),
        "jobs": jobs,
    }
    if "pipeline_run" in first:
        out["pipeline_run_start_s"] = rel(first["pipeline_run"][0])
        out["pipeline_run_end_s"] = rel(first["pipeline_run"][1])
    return out


def run_once(tree: Path, label: str, args, work: Path, data: Path, ckpt: Path, index: int) -> dict[str, Any]:
    """One fresh command of ``tree``'s sparkcurate; its breakdown and summary figures."""
    run_dir = work / f"{label}-{index}"
    events, out = run_dir / "events", run_dir / "out"
    events.mkdir(parents=True)
    discovery = str(REPO / "conf" / "fakeGpusResources.sh")
    conf = {
        "spark.eventLog.enabled": "true", "spark.eventLog.dir": events.as_uri(),
        "spark.eventLog.compress": "false", "spark.eventLog.rolling.enabled": "false",
        "spark.ui.enabled": "false",
        "spark.worker.resource.gpu.amount": "1", "spark.worker.resource.gpu.discoveryScript": discovery,
        "spark.executor.resource.gpu.amount": "1", "spark.executor.resource.gpu.discoveryScript": discovery,
        "spark.task.resource.gpu.amount": "1", "spark.executorEnv.SPARKCURATE_FAKE_GPUS": "1",
        "spark.executorEnv.PYTHONPATH": str(tree),
    }
    argv = ["classify", "--input", str(data), "--output", str(out), "--classifier", f"domain={ckpt}",
            "--device", "cpu", "--master", f"local-cluster[1,1,{args.executor_mb}]", "--schema", SCHEMA, "--quiet"]
    for key, value in conf.items():
        argv += ["--conf", f"{key}={value}"]
    spec = {"argv": argv, "marks": str(run_dir / "marks.json")}
    env = {**os.environ, "PYTHONPATH": str(tree), "SPARKCURATE_FAKE_GPUS": "1", "SPARK_LOCAL_IP": "127.0.0.1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYSPARK_PYTHON": sys.executable}
    launched = time.time()
    spec["launched"] = launched
    (run_dir / "spec.json").write_text(json.dumps(spec))
    # Output to files, not pipes: a pipe stays open until the JVM the command started has exited too, while the
    # command's own exit is what a shell waits for.
    with open(run_dir / "stdout.txt", "w") as out_fh, open(run_dir / "stderr.txt", "w") as err_fh:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(run_dir / "spec.json")],
                                stdout=out_fh, stderr=err_fh, env=env, cwd=str(work))
        rc = proc.wait(timeout=args.timeout)
    exited = time.time()
    if rc != 0:
        tail = (run_dir / "stderr.txt").read_text()[-3000:]
        raise RuntimeError(f"{label} run {index} failed (exit {rc}): {tail}")
    summary = json.loads((out / "_summary.json").read_text())
    row = breakdown(launched, exited, json.loads(Path(spec["marks"]).read_text()),
                    spark_timeline(event_log_records(events)))
    row.update(variant=label, run=index, docs=summary["input_records"], summary_elapsed_s=summary["elapsed_s"],
               laps_s=summary.get("timings_s"), task_stats=summary.get("task_stats"),
               output_records=summary["output_records"])
    log.info("%s run %d: %.1f s (%d Spark jobs)", label, index, row["command_s"], row["spark_jobs"])
    return row


def medians(rows: list[dict]) -> dict[str, Any]:
    """Median of every figure of a variant's runs: the command, each phase, each lap, jobs."""
    def med(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 3) if values else None

    phases = sorted({k for r in rows for k in r["phases_s"]})
    laps = sorted({k for r in rows for k in (r["laps_s"] or {})})
    return {"runs": len(rows), "command_s": med([r["command_s"] for r in rows]),
            "docs_per_s": med([r["docs"] / r["command_s"] for r in rows]),
            "spark_jobs": med([r["spark_jobs"] for r in rows]),
            "in_spark_jobs_s": med([r["in_spark_jobs_s"] for r in rows]),
            "app_start_s": med([r["app_start_s"] for r in rows]),
            "executor_registered_s": med([r["executor_registered_s"] for r in rows]),
            "pipeline_run_start_s": med([r.get("pipeline_run_start_s") for r in rows]),
            "app_end_s": med([r["app_end_s"] for r in rows]),
            "phases_s": {k: med([r["phases_s"].get(k) for r in rows]) for k in phases},
            "laps_s": {k: med([(r["laps_s"] or {}).get(k) for r in rows]) for k in laps},
            "classify_task_s": med([(r["task_stats"] or {}).get("task_s") for r in rows])}


def export_tree(ref: str, into: Path) -> Path:
    """The sparkcurate package of git ``ref`` (this repository) as a source tree under ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "sparkcurate", "conf"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def write_inputs(work: Path, docs: int, files: int) -> tuple[Path, Path]:
    """The tiny checkpoint and short documents (at most 64 tokens: the classify work stays small on a CPU)."""
    from benchmarks.spark_e2e import write_checkpoint
    from benchmarks.synthetic import LengthMix, write_jsonl

    ckpt = write_checkpoint(work / "model", smoke=True)
    write_jsonl(work / "data", docs, files, mix=LengthMix("short", 64, 250, 0.55, 50, 30.0, 0.6), seed=0)
    return work / "data", ckpt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=2000)
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--runs", type=int, default=3, help="runs of each variant, alternated")
    p.add_argument("--before-ref", help="a git ref of this repository measured against this tree")
    p.add_argument("--ref", action="append", default=[], metavar="NAME=REF",
                   help="another git ref measured as variant NAME (repeatable), between before and after")
    p.add_argument("--executor-mb", type=int, default=2048)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--smoke", action="store_true", help="one run of this tree, 200 documents")
    p.add_argument("--work-dir")
    p.add_argument("--out", required=True)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.smoke:
        args.docs, args.runs, args.before_ref = 200, 1, None
    with contextlib.ExitStack() as stack:
        work = Path(args.work_dir) if args.work_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        data, ckpt = write_inputs(work, args.docs, args.files)
        trees = [("after", REPO)]
        for item in reversed(args.ref):
            name, _, ref = item.partition("=")
            trees.insert(0, (name, export_tree(ref, work / f"{name}-tree")))
        if args.before_ref:
            trees.insert(0, ("before", export_tree(args.before_ref, work / "before-tree")))
        rows = [run_once(tree, label, args, work, data, ckpt, i)
                for i in range(args.runs) for label, tree in trees]
    variants = {label: medians([r for r in rows if r["variant"] == label]) for label, _ in trees}
    doc = {"date": date.today().isoformat(), "device": "cpu",
           "host": f"{platform.node()}: {os.cpu_count()} CPUs, {platform.machine()}",
           "command": "python3 -m benchmarks.fixed_costs " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
           "before_ref": args.before_ref, "refs": args.ref, "docs": args.docs, "files": args.files,
           "note": "each run a fresh `sparkcurate classify` process on local-cluster[1,1] with one fake GPU "
                   "(--device cpu), runs of the variants alternated; medians per variant",
           "variants": variants, "runs": rows}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    for label, v in variants.items():
        print(f"{label:8s} command {v['command_s']} s  jobs {v['spark_jobs']}  phases {v['phases_s']}")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":  # a child: no benchmark imports before the timed command
        raise SystemExit(child(sys.argv[2]))
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
