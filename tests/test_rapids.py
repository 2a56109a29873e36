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
    jvm_class_check,
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
