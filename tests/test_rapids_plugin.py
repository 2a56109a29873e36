"""The job under the real RAPIDS Accelerator in explainOnly mode: which operators would run on the GPU.

explainOnly runs everything on the CPU and logs, for every query, the plugin's verdict on each operator
("*Exec <FilterExec> will run on GPU", "!Exec <X> cannot run on GPU because ..."); since 26.08 (25.06 in fact)
it needs no GPU. The test reads those lines and fails when an operator that should run on the GPU no longer
would, or when anything falls back for a reason not listed below: a settings or code change that silently
pushes work back to the CPU shows up here.

Needs the pinned jar (scripts/fetch-rapids-jar.sh; .ci/run fetches it) and a pyspark the jar has a shim for;
skipped with the reason otherwise, or failed where SPARKCURATE_REQUIRE_RAPIDS is set (as .ci/run does).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tests.fixtures.rapids_explain_job import PHASE_MARK

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
JAR_NAME = "rapids-4-spark_2.13-26.08.1-cuda12.jar"
JAR = Path(os.environ.get("SPARKCURATE_RAPIDS_JAR", REPO / ".cache" / "rapids" / JAR_NAME))
#: The pip pyspark versions (Scala 2.13) the pinned jar has a shim for (scripts/fetch-rapids-jar.sh).
SUPPORTED_PYSPARK = ("4.0.0", "4.0.1", "4.0.2", "4.0.3", "4.0.4", "4.1.1", "4.1.2", "4.1.3", "4.2.0")

#: An explain line: "*Exec <FilterExec> will run on GPU", "!Output <X> cannot run on GPU because ...".
VERDICT = re.compile(r"^\s*(?P<mark>[*!@#])(?P<kind>Exec|Output|Partitioning) <(?P<op>\w+)> "
                     r"(?P<verdict>will (?:partially )?run on GPU|"
                     r"cannot run (?:even partially )?on (?:the )?GPU because (?P<why>.*))$")

#: Operators of the JSONL job that must (at least in one place) run on the GPU. (The counts are taken in the
#: Python workers since issue 23 (report.summary.count_rows): no aggregate, expand or shuffle is left to check.)
JSONL_ON_GPU = {"FilterExec", "ProjectExec", "SortExec", "MapInArrowExec"}
#: Operators of the Parquet phase that must run on the GPU: the scan, the Python hand-off and the write.
PARQUET_ON_GPU = {"FileSourceScanExec", "FilterExec", "MapInArrowExec", "DataWritingCommandExec",
                  "InsertIntoHadoopFsRelationCommand"}

#: Every fallback the JSONL job is known to have, with the plugin's reason (a regex). Anything else fails.
JSONL_FALLBACKS: dict[str, tuple[str, ...]] = {
    # JSON writing is CPU only in the plugin; the write command and its WriteFiles stay on the CPU.
    "DataWritingCommandExec": (r"not all data writing commands can be replaced",),
    "InsertIntoHadoopFsRelationCommand": (r"JSON output is not supported",),
    "WriteFilesExec": (r"parent can't run on GPU",),
    # The JSONL source keeps malformed lines (as rejects) through _corrupt_record, which the GPU JSON reader
    # does not support, so the main scan stays on the CPU; the schema-inference pass reads text (CPU only).
    "FileSourceScanExec": (r"JsonFileFormat does not support Corrupt Record", r"unsupported file format: .*TextFileFormat"),
    # The read's projection: file_name (UrlCodec.decode), the UTF-8 check (isValid) and the empty-text regex
    # (\s\p{Z}... in a character class) have no GPU version, and a CPU scan gives no GPU file name.
    "ProjectExec": (r"not all expressions can be replaced",),
    # The classified rows are persisted once (DISK_ONLY); cached batches go to the GPU only with the plugin's
    # ParquetCachedBatchSerializer, and adaptive execution's stage around the cache stays on the CPU.
    "InMemoryTableScanExec": (r"ParquetCachedBatchSerializer is not being used",),
    "TableCacheQueryStageExec": (r"wrapper stays on CPU",),
    "AQEShuffleReadExec": (r"child not being columnar",),
    # explainOnly with adaptive execution cannot tell where a broadcast would run (a limit of the mode).
    "BroadcastHashJoinExec": (r"explain only mode with AQE",),
}


def _skip_reason() -> str | None:
    import pyspark

    if pyspark.__version__ not in SUPPORTED_PYSPARK:
        return (f"pyspark {pyspark.__version__} has no shim in {JAR_NAME}: it runs under pip pyspark "
                f"{', '.join(SUPPORTED_PYSPARK)} (Scala 2.13; pip pyspark 3.5 is built for Scala 2.12)")
    if not JAR.is_file():
        return f"{JAR} not found: run scripts/fetch-rapids-jar.sh or set SPARKCURATE_RAPIDS_JAR"
    return None


def verdicts_by_phase(stderr: str) -> dict[str, list[dict[str, str]]]:
    """The plugin's operator verdicts in the job's log, grouped by the phase markers of the driver."""
    marks = {PHASE_MARK.format(name): name for name in ("jsonl", "setup", "parquet", "end")}
    phase, out = "start", {}
    for line in stderr.splitlines():
        if line.strip() in marks:
            phase = marks[line.strip()]
            continue
        m = VERDICT.match(line)
        if m:
            out.setdefault(phase, []).append(m.groupdict())
    return out


def _on_gpu(verdicts) -> set[str]:
    return {v["op"] for v in verdicts if v["mark"] == "*"}


def _fallbacks(verdicts) -> set[tuple[str, str]]:
    return {(v["op"], v["why"]) for v in verdicts if v["mark"] == "!" and v["kind"] in ("Exec", "Output")}


def _unexpected(fallbacks, allowed: dict[str, tuple[str, ...]]) -> list[tuple[str, str]]:
    return sorted((op, why) for op, why in fallbacks
                  if not any(re.search(p, why) for p in allowed.get(op, ())))


def test_verdict_parsing_and_unexpected_fallbacks():
    """The parsing and the allow-list logic on lines as the plugin writes them (no jar needed)."""
    log = "\n".join([PHASE_MARK.format("jsonl"),
                     "  *Exec <FilterExec> will run on GPU",
                     "  *Exec <MapInArrowExec> will partially run on GPU",
                     "!Exec <FileSourceScanExec> cannot run on GPU because JsonFileFormat does not support Corrupt "
                     "Record",
                     "    !Exec <SortExec> cannot run on GPU because sorting is disabled",
                     "  !Exec <MapInArrowExec> cannot run even partially on the GPU because spark.sql.execution."
                     "arrow.useLargeVarTypes is enabled",
                     "      @Expression <AttributeReference> text#9 could run on GPU",
                     PHASE_MARK.format("parquet"),
                     "  *Output <InsertIntoHadoopFsRelationCommand> will run on GPU"])
    got = verdicts_by_phase(log)
    assert _on_gpu(got["jsonl"]) == {"FilterExec", "MapInArrowExec"}
    assert _unexpected(_fallbacks(got["jsonl"]), JSONL_FALLBACKS) == [
        ("MapInArrowExec", "spark.sql.execution.arrow.useLargeVarTypes is enabled"), ("SortExec", "sorting is disabled")]
    assert _on_gpu(got["parquet"]) == {"InsertIntoHadoopFsRelationCommand"}


@pytest.fixture(scope="module")
def explained(tmp_path_factory, deberta_dir):
    """The job run once under the plugin: (its stderr grouped by phase, the JSONL run's _summary.json)."""
    reason = _skip_reason()
    if reason and os.environ.get("SPARKCURATE_REQUIRE_RAPIDS"):
        pytest.fail(f"SPARKCURATE_REQUIRE_RAPIDS is set but {reason}")
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("rapids")
    write_jsonl(work / "in" / "a.jsonl", [{"id": i, "text": f"football match report number {i}"} for i in range(8)],
                raw_lines=["{not json"])
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    res = subprocess.run([sys.executable, "-m", "tests.fixtures.rapids_explain_job", "--jar", str(JAR),
                          "--model", str(deberta_dir), "--input", str(work / "in"), "--work", str(work)],
                         capture_output=True, text=True, timeout=900, env=env, cwd=REPO, errors="replace")
    assert res.returncode == 0, res.stderr[-6000:]
    assert "RAPIDS Accelerator is in explain only mode" in res.stderr
    summary = json.loads((work / "out" / "_summary.json").read_text(encoding="utf-8"))
    return verdicts_by_phase(res.stderr), summary


def test_jsonl_job_would_run_its_sql_on_the_gpu(explained):
    verdicts = explained[0]["jsonl"]
    missing = JSONL_ON_GPU - _on_gpu(verdicts)
    assert not missing, f"no longer on the GPU: {sorted(missing)} (on the GPU: {sorted(_on_gpu(verdicts))})"
    assert _unexpected(_fallbacks(verdicts), JSONL_FALLBACKS) == []
    # the JSON write is the expected fallback, and it is there
    assert ("InsertIntoHadoopFsRelationCommand", "JSON output is not supported") in _fallbacks(verdicts)


def test_parquet_scan_hand_off_and_write_would_run_on_the_gpu(explained):
    verdicts = explained[0]["parquet"]
    missing = PARQUET_ON_GPU - _on_gpu(verdicts)
    assert not missing, f"not on the GPU: {sorted(missing)} (on the GPU: {sorted(_on_gpu(verdicts))})"
    assert _fallbacks(verdicts) == set()


def test_summary_records_the_plugin_and_the_plans_operators(explained):
    rapids = explained[1]["rapids"]
    assert rapids["enabled"] is True and rapids["class_loadable"] is True
    assert rapids["settings"]["spark.rapids.sql.mode"] == "explainOnly"
    assert any("explainOnly" in w for w in rapids["warnings"])
    assert rapids["gpu_operators"] == []  # explainOnly: everything ran on the CPU, and the summary says so
    assert {"Scan json", "MapInArrow", "Execute InsertIntoHadoopFsRelationCommand"} <= set(rapids["cpu_operators"])
