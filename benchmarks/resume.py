"""Local disk and resume time of a long job (issue "A job of many hours: commit as it goes, resume where it
stopped"): the peak size of Spark's local directories (``spark.local.dir``: the ``blockmgr-*`` folders that hold
persisted blocks and shuffle files) during one run, and the wall time of a re-run after a driver killed at ~50% of
the commit groups against a full run.

Every run is the real command (``sparkcurate.cli.main``) in its own process, with a rule classifier (no model:
what is measured is Spark's reading, persisting and writing, not a model), ``--master local[2]`` and
``--schema`` (no inference pass). This process samples the run's ``spark.local.dir`` every 0.5 s. The killed run
is SIGKILLed by the test-only hook ``SPARKCURATE_TEST_DIE_AT=committed:N`` (``sparkcurate.groups``).

    python3 -m benchmarks.resume all --mb 500 --files 16 --commit-every 64m \\
        --before-repo /tmp/main-checkout --results benchmarks/results/DATE-cpu-resume.json

``--before-repo``: a checkout of the code to compare with (e.g. ``git worktree add --detach /tmp/main-checkout
main`` before commit groups were merged); this file is copied into it and its run is made there. Without it only
this checkout is measured. ``python3 -m benchmarks.resume gen DIR --mb 500`` writes the input alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from benchmarks.rule_classifier import LengthClassifier

SCHEMA = "id STRING, text STRING, source STRING"
WORDS = np.array(["data", "spark", "model", "the", "of", "and", "learning", "river", "market", "protein", "goal",
                  "election", "galaxy", "recipe", "engine", "court", "album", "tensor", "harbor", "violin"])


# --- the rule classifier (importable on executors: the run's workers start in the checkout's root) -------------


@dataclass
class RuleClassifier(LengthClassifier):
    """'long' for texts over 2,000 characters, no model files: what a run costs besides the model."""

    model: str | None = "rule"
    long_chars: int = 2000
    name: ClassVar[str] = "bench-rule"
    default_pred_column: ClassVar[str] = "rule_pred"


# --- the input ----------------------------------------------------------------------------------------------------


def generate(folder: Path, mb: int, files: int, seed: int = 0) -> int:
    """``files`` JSONL files of about ``mb`` MB in all; documents of 200 to 4,000 characters. Returns bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_file = mb * 2**20 // files
    total = 0
    for f in range(files):
        path = folder / f"part-{f:04d}.jsonl"
        written, i = 0, 0
        with open(path, "w", encoding="utf-8") as fh:
            while written < per_file:
                words = WORDS[rng.integers(0, len(WORDS), int(rng.integers(30, 600)))]
                line = json.dumps({"id": f"{f}-{i}", "text": " ".join(words), "source": f"web/{f % 7}"}) + "\n"
                fh.write(line)
                written += len(line)
                i += 1
        total += path.stat().st_size
    return total


# --- one run, in its own process -------------------------------------------------------------------------------


def child(argv: list[str]) -> int:
    """The command with the rule classifier registered (this runs in the measured process)."""
    from sparkcurate.classifiers import registry
    from sparkcurate.cli import main

    registry.register(RuleClassifier)
    return main(argv)


def dir_bytes(root: Path) -> int:
    """Bytes of the files under ``root`` (allocated blocks: sparse or half-written files count what they hold)."""
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass  # removed while walking
    return total


class DiskSampler(threading.Thread):
    """The peak of ``dir_bytes(root)``, sampled every ``interval_s``."""

    def __init__(self, root: Path, interval_s: float = 0.5):
        super().__init__(daemon=True)
        self.root, self.interval_s = root, interval_s
        self.peak, self.samples = 0, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, dir_bytes(self.root))
            self.samples += 1
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, dir_bytes(self.root))


def measure(repo: Path, inp: Path, out: Path, commit_every: str | None, die_at: str | None = None,
            timeout_s: int = 3600) -> dict[str, Any]:
    """One run of the command from ``repo``: wall time, exit code, peak local disk, and its summary's figures."""
    local = Path(tempfile.mkdtemp(prefix="sparkcurate-bench-local-"))
    args = ["classify", "--input", str(inp), "--output", str(out), "--classifier", "bench-rule", "--master",
            "local[2]", "--schema", SCHEMA, "--device", "cpu", "--no-report", "--quiet", "--conf",
            f"spark.local.dir={local}", "--conf", "spark.ui.enabled=false", "--conf", "spark.driver.memory=2g"]
    if commit_every is not None:
        args += ["--commit-every-bytes", commit_every]
    env = {**os.environ, "PYTHONPATH": str(repo), "SPARK_LOCAL_IP": "127.0.0.1"}
    if die_at:
        env["SPARKCURATE_TEST_DIE_AT"] = die_at
    sampler = DiskSampler(local)
    sampler.start()
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", "import sys, benchmarks.resume as b; sys.exit(b.child(sys.argv[1:]))",
                             *args], cwd=repo, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=timeout_s)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # what a killed driver left running
        except ProcessLookupError:
            pass
        proc.wait()
    wall = time.monotonic() - started
    sampler.stop()
    shutil.rmtree(local, ignore_errors=True)
    result: dict[str, Any] = {"wall_s": round(wall, 1), "exit_code": proc.returncode,
                              "peak_local_dir_bytes": sampler.peak, "samples": sampler.samples,
                              "commit_every_bytes": commit_every, "die_at": die_at}
    summary_path = out / "_summary.json"
    if proc.returncode == 0 and summary_path.exists():
        s = json.loads(summary_path.read_text())
        result.update({k: s.get(k) for k in ("input_records", "output_records", "units", "timings_s",
                                              "classify_s")})
    elif proc.returncode not in (0, -signal.SIGKILL):
        result["stderr_tail"] = err[-2000:]
    return result


def _machine() -> dict[str, Any]:
    import pyspark

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"host_cpus": os.cpu_count(), "memory_gib": round(mem / 2**30, 1), "platform": platform.platform(),
            "python": platform.python_version(), "pyspark": pyspark.__version__, "master": "local[2]",
            "note": "shared machine: other jobs ran beside these runs"}


def _commit(repo: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    here = Path(__file__).resolve().parent.parent
    work = Path(args.work or tempfile.mkdtemp(prefix="sparkcurate-bench-resume-"))
    inp = work / "in"
    size = generate(inp, args.mb, args.files) if not inp.exists() else sum(p.stat().st_size for p in inp.iterdir())
    results: dict[str, Any] = {"command": "python3 -m benchmarks.resume " + " ".join(sys.argv[1:]),
                               "machine": _machine(), "input_bytes": size, "input_files": args.files,
                               "date": time.strftime("%Y-%m-%d"), "runs": {}}
    runs = results["runs"]
    if args.before_repo:
        before = Path(args.before_repo)
        shutil.copy(Path(__file__), before / "benchmarks" / "resume.py")
        runs["before_whole_dataset_persisted"] = {"code": _commit(before),
                                                  **measure(before, inp, work / "out-before", None)}
    runs["after_full"] = {"code": _commit(here), **measure(here, inp, work / "out-after", args.commit_every)}
    if not args.disk_only:
        groups = (runs["after_full"].get("units") or {}).get("groups") or args.files
        half = max(1, groups // 2)
        runs["after_killed_at_half"] = measure(here, inp, work / "out-resume", args.commit_every,
                                               f"committed:{half}")
        runs["after_rerun"] = measure(here, inp, work / "out-resume", args.commit_every)
        full, rerun = runs["after_full"]["wall_s"], runs["after_rerun"]["wall_s"]
        results["rerun_over_full"] = round(rerun / full, 3) if full else None
    if args.before_repo:
        b, a = runs["before_whole_dataset_persisted"]["peak_local_dir_bytes"], runs["after_full"]["peak_local_dir_bytes"]
        results["peak_local_disk_after_over_before"] = round(a / b, 3) if b else None
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.resume", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    gen = sub.add_parser("gen", help="write the input")
    gen.add_argument("folder")
    gen.add_argument("--mb", type=int, default=500)
    gen.add_argument("--files", type=int, default=16)
    every = sub.add_parser("all", help="before/after local disk, then the resume timing")
    every.add_argument("--mb", type=int, default=500)
    every.add_argument("--files", type=int, default=16)
    every.add_argument("--commit-every", default="64m", help="--commit-every-bytes of the runs after")
    every.add_argument("--before-repo", help="a checkout of the code to compare with")
    every.add_argument("--work", help="where the input and outputs go (default: a temporary folder)")
    every.add_argument("--keep", action="store_true", help="keep the work folder")
    every.add_argument("--disk-only", action="store_true", help="the local-disk runs alone (no killed run, no re-run)")
    every.add_argument("--results", help="write the results JSON here")
    args = parser.parse_args(argv)
    if args.what == "gen":
        print(generate(Path(args.folder), args.mb, args.files))
        return 0
    results = run_all(args)
    text = json.dumps(results, indent=2)
    if args.results:
        Path(args.results).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
