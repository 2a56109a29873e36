"""RAPIDS Accelerator detection (sparkcurate.spark.rapids): real session without the jar, pure cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparkcurate.spark.rapids import (
    PLUGIN_CLASS,
    RAPIDS_KEYS,
    UNKNOWN,
    assess_rapids,
    detect_rapids,
    executed_operators,
    jvm_class_check,
    plan_operators,
    split_operators,
)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture()
def _rapids_spark(spark):
    """The shared local session (no RAPIDS jar) with a RAPIDS key set, to check that settings are read."""
    spark.conf.set("spark.rapids.memory.gpu.pool", "NONE")
    yield spark
    spark.conf.unset("spark.rapids.memory.gpu.pool")


def _loadable(result):
    return lambda name: result


def test_real_session_without_the_plugin(_rapids_spark):
    info = detect_rapids(_rapids_spark)
    assert info["configured"] is False
    assert info["class_loadable"] is False  # the JVM was asked and has no such class
    assert info["enabled"] is False
    assert info["warnings"] == []
    assert set(info["settings"]) == set(RAPIDS_KEYS)
    assert info["settings"]["spark.rapids.memory.gpu.pool"] == "NONE"
    assert info["settings"]["spark.plugins"] is None


def test_jvm_class_check_finds_spark_classes(_rapids_spark):
    check = jvm_class_check(_rapids_spark)
    assert check("org.apache.spark.SparkContext") is True
    assert check(PLUGIN_CLASS) is False


class _ConnectLike:
    """Shape of a Spark Connect / serverless session: conf readable, no JVM (``_jvm`` raises)."""

    def __init__(self, conf):
        self.conf = self
        self._values = conf

    def get(self, key, default=None):
        if key == "spark.rapids.sql.python.gpu.enabled":
            raise RuntimeError("[CONFIG_NOT_AVAILABLE] refused on serverless")
        return self._values.get(key, default)

    @property
    def _jvm(self):
        raise AttributeError("JVM_ATTRIBUTE_NOT_SUPPORTED")


def test_session_without_jvm_reports_unknown():
    info = detect_rapids(_ConnectLike({"spark.plugins": PLUGIN_CLASS,
                                       "spark.rapids.memory.gpu.pool": "NONE"}))
    assert info["configured"] is True
    assert info["class_loadable"] == UNKNOWN
    assert info["enabled"] == UNKNOWN
    assert info["settings"]["spark.rapids.sql.python.gpu.enabled"] is None
    assert info["warnings"] == []


def test_listed_but_class_missing():
    # Spark refuses to start when spark.plugins names a missing class, so this is the pure function.
    info = assess_rapids({"spark.plugins": PLUGIN_CLASS, "spark.rapids.memory.gpu.pool": "NONE"},
                         _loadable(False))
    assert info["configured"] is True and info["enabled"] is False
    assert any("not loadable" in w and "rapids-4-spark" in w for w in info["warnings"])


def test_plugin_among_others_with_spaces():
    conf = {"spark.plugins": "com.example.Other, com.nvidia.spark.SQLPlugin ",
            "spark.rapids.memory.gpu.pool": "none"}
    info = assess_rapids(conf, _loadable(True))
    assert info == {**info, "enabled": True, "configured": True, "class_loadable": True, "warnings": []}


def test_default_pool_warns_that_it_takes_the_gpu():
    info = assess_rapids({"spark.plugins": PLUGIN_CLASS}, _loadable(True))
    assert info["enabled"] is True
    assert len(info["warnings"]) == 1
    assert "will take the GPU from PyTorch: set spark.rapids.memory.gpu.pool=NONE" in info["warnings"][0]


@pytest.mark.parametrize(
    ("pool", "fraction", "warns"),
    [("ASYNC", "0.3", False), ("ARENA", "0.5", False), ("ASYNC", "0.9", True), ("DEFAULT", None, True),
     ("NONE", "1.0", False)],
)
def test_capped_pool_is_accepted(pool, fraction, warns):
    conf = {"spark.plugins": PLUGIN_CLASS, "spark.rapids.memory.gpu.pool": pool,
            "spark.rapids.memory.gpu.allocFraction": fraction}
    info = assess_rapids(conf, _loadable(True))
    assert bool(info["warnings"]) is warns


def test_bad_alloc_fraction_is_reported():
    conf = {"spark.plugins": PLUGIN_CLASS, "spark.rapids.memory.gpu.pool": "ASYNC",
            "spark.rapids.memory.gpu.allocFraction": "lots"}
    assert "is not a number" in assess_rapids(conf, _loadable(True))["warnings"][0]


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [("spark.sql.execution.arrow.useLargeVarTypes", "true", "fall back to the CPU"),
     ("spark.rapids.sql.python.gpu.enabled", "TRUE", "experimental"),
     ("spark.rapids.python.concurrentPythonWorkers", "2", "deadlock"),
     ("spark.rapids.sql.enabled", "false", "runs nothing on the GPU")],
)
def test_settings_that_hurt_are_warned(key, value, fragment):
    conf = {"spark.plugins": PLUGIN_CLASS, "spark.rapids.memory.gpu.pool": "NONE", key: value}
    info = assess_rapids(conf, _loadable(True))
    assert len(info["warnings"]) == 1 and fragment in info["warnings"][0]
    if key == "spark.rapids.sql.enabled":
        assert info["enabled"] is False


def test_no_warnings_without_the_plugin():
    conf = {"spark.rapids.memory.gpu.pool": "ASYNC", "spark.sql.execution.arrow.useLargeVarTypes": "true"}
    info = assess_rapids(conf, _loadable(False))
    assert info["configured"] is False and info["enabled"] is False and info["warnings"] == []


def test_shipped_rapids_conf_passes_the_detector():
    conf: dict[str, str] = {}
    for line in (CONF_DIR / "spark-defaults.rapids.conf").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, value = line.split(None, 1)
            conf[key] = value.strip()
    info = assess_rapids(conf, _loadable(True))
    assert info["enabled"] is True
    assert info["warnings"] == []


# ----------------------------------------------------------------------------------------------------------
# Which operators ran on the GPU, from the executed plans
# ----------------------------------------------------------------------------------------------------------

#: A plan as the SQL status store keeps it ("formatted" mode) with adaptive execution, GPU operators in the
#: final plan and the CPU operators the plugin replaced in the initial one (which must not count).
GPU_PLAN = """== Physical Plan ==
AdaptiveSparkPlan (12)
+- == Final Plan ==
   ResultQueryStage (7), Statistics(sizeInBytes=8.0 EiB)
   +- GpuColumnarToRow (6)
      +- GpuHashAggregate (5)
         +- ShuffleQueryStage (4), Statistics(sizeInBytes=16.0 B, rowCount=1)
            +- GpuColumnarExchange (3)
               +- GpuFilter (2)
                  +- GpuFileGpuScan json  (1)
+- == Initial Plan ==
   HashAggregate (11)
   +- Exchange (10)
      +- Filter (9)
         +- Scan json  (8)


(1) GpuFileGpuScan json 
Output [2]: [text#0, n#1L]
"""


def test_plan_operators_reads_the_final_adaptive_plan_only():
    assert plan_operators(GPU_PLAN) == ["GpuColumnarToRow", "GpuHashAggregate", "GpuColumnarExchange",
                                        "GpuFilter", "GpuFileGpuScan json"]


def test_split_operators_puts_gpu_writes_with_the_gpu():
    write = """== Physical Plan ==
Execute GpuInsertIntoHadoopFsRelationCommand (4)
+- GpuRowToColumnar (3)
   +- MapInArrow (2)
      +- * Filter (1)
"""
    assert split_operators([write, GPU_PLAN]) == {
        "gpu_operators": ["Execute GpuInsertIntoHadoopFsRelationCommand", "GpuColumnarExchange",
                          "GpuColumnarToRow", "GpuFileGpuScan json", "GpuFilter", "GpuHashAggregate",
                          "GpuRowToColumnar"],
        "cpu_operators": ["Filter", "MapInArrow"]}


def test_plan_operators_in_simple_explain_mode():
    simple = """== Physical Plan ==
*(2) HashAggregate(keys=[], functions=[count(1)])
+- Exchange SinglePartition, ENSURE_REQUIREMENTS, [plan_id=74]
   +- *(1) Project [text#4]
      +- MapInArrow f(text#0)#3, [text#4], false
         +- FileScan json [text#0] Batched: false, DataFilters: [], Format: JSON
"""
    assert plan_operators(simple) == ["HashAggregate", "Exchange", "Project", "MapInArrow", "FileScan json"]


def test_executed_operators_without_jvm_are_unknown():
    assert executed_operators(_ConnectLike({}), 0.0) == {"gpu_operators": None, "cpu_operators": None,
                                                         "queries": 0}


def test_job_without_the_plugin_records_its_cpu_operators(spark, deberta_dir, tmp_path):
    """A real run on the CPU: the summary and the report list the operators of its plans, none on the GPU."""
    from sparkcurate.classifiers import DomainClassifier
    from sparkcurate.pipeline import JobOptions, run
    from tests.conftest import write_jsonl

    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": i, "text": f"football match {i}"} for i in range(6)])
    clf = DomainClassifier(model=str(deberta_dir), device="cpu")
    summary = run(spark, JobOptions(input=str(tmp_path / "in"), output=str(tmp_path / "out"), classifiers=[clf],
                                    report=False))
    rapids = summary["rapids"]
    assert rapids["gpu_operators"] == []
    assert rapids["queries"] >= 2  # the classify job with its counts and the output at least (nothing rejected)
    cpu = set(rapids["cpu_operators"])
    assert {"Scan json", "Execute InsertIntoHadoopFsRelationCommand", "InMemoryTableScan"} <= cpu, cpu
    assert cpu & {"MapInArrow", "PythonMapInArrow"}, cpu  # the classify stage (Spark 4 / Spark 3.5 name)
    assert not cpu & {"Range", "LogicalRelation", "CreateViewCommand"}, cpu  # no logical plan nodes


def test_plan_operators_skips_a_commands_logical_plan_but_reads_a_cached_plan():
    view = """== Physical Plan ==
Execute CreateViewCommand (1)
   +- CreateViewCommand (2)
         +- Filter (5)
            +- Project (4)
               +- Range (3)
"""
    assert plan_operators(view) == ["Execute CreateViewCommand"]
    cached = """== Physical Plan ==
* HashAggregate (6)
+- InMemoryTableScan (1)
      +- InMemoryRelation (2)
            +- MapInArrow (4)
               +- BroadcastHashJoin LeftOuter BuildRight (5)
                  :- Scan json  (3)
                  +- BroadcastExchange (7)
"""
    assert plan_operators(cached) == ["HashAggregate", "InMemoryTableScan", "InMemoryRelation", "MapInArrow",
                                      "BroadcastHashJoin", "Scan json", "BroadcastExchange"]
