"""Detect the NVIDIA RAPIDS Accelerator for Apache Spark and check that it can share the GPU with PyTorch.

The classify job runs the same code with and without the plugin (the RAPIDS jar is not something we
can ship or download), so instead of requiring it we look at run time: is ``com.nvidia.spark.SQLPlugin``
listed in ``spark.plugins``, is the class loadable in the driver JVM, and are the settings that matter
next to PyTorch sane (the memory pool above all: by default RAPIDS reserves nearly the whole GPU and
the model in the Python worker then runs out of memory). The job stores the result in its run summary
under ``"rapids"`` so a slow or failed run can be explained afterwards.

The logic lives in :func:`assess_rapids`, a pure function over a configuration mapping and a
class-check callable, because Spark refuses to start when ``spark.plugins`` names a missing class, so
that case cannot be produced with a real session in tests.

Whether the plugin is present says little about what it did: a setting or a data type can push any operator
back to the CPU. :func:`executed_operators` therefore reads the physical plans of the queries the run executed
(Spark's SQL status store, the same plans the SQL tab of the UI shows) and lists the operators that ran on
the GPU (``Gpu*`` nodes) and those that ran on the CPU.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

PLUGIN_CLASS = "com.nvidia.spark.SQLPlugin"
UNKNOWN = "unknown"

#: Keys read from the session and reported under "settings" (None = not set, the default applies).
RAPIDS_KEYS: tuple[str, ...] = (
    "spark.plugins",
    "spark.rapids.sql.enabled",
    "spark.rapids.sql.mode",
    "spark.rapids.memory.gpu.pool",
    "spark.rapids.memory.gpu.allocFraction",
    "spark.rapids.memory.gpu.maxAllocFraction",
    "spark.rapids.sql.concurrentGpuTasks",
    "spark.rapids.sql.python.gpu.enabled",
    "spark.rapids.python.concurrentPythonWorkers",
    "spark.sql.execution.arrow.useLargeVarTypes",
    "spark.executor.resource.gpu.amount",
    "spark.task.resource.gpu.amount",
)

#: RAPIDS defaults for the keys we judge when they are not set (recent releases: ASYNC pool, 1.0).
_DEFAULT_POOL = "ASYNC"
_DEFAULT_ALLOC_FRACTION = 1.0
#: Above this fraction of GPU memory reserved by RAPIDS, a PyTorch model next to it is at risk.
MAX_SHARED_ALLOC_FRACTION = 0.5

ClassCheck = Callable[[str], "bool | str"]


def _is_true(value: str | None, default: bool) -> bool:
    """Spark-style boolean: unset means the default, anything but 'true' (any case) is false."""
    if value is None:
        return default
    return value.strip().lower() == "true"


def plugin_listed(plugins: str | None) -> bool:
    """True when the comma-separated ``spark.plugins`` value names the RAPIDS SQL plugin."""
    if not plugins:
        return False
    return PLUGIN_CLASS in {p.strip() for p in plugins.split(",")}


def _memory_warnings(pool: str | None, alloc_fraction: str | None) -> list[str]:
    """Warn when the RAPIDS memory pool would leave PyTorch too little GPU memory."""
    pool_name = (pool or _DEFAULT_POOL).strip().upper()
    if pool_name == "NONE":
        return []
    if alloc_fraction is None:
        fraction = _DEFAULT_ALLOC_FRACTION
    else:
        try:
            fraction = float(alloc_fraction)
        except ValueError:
            return [f"spark.rapids.memory.gpu.allocFraction={alloc_fraction!r} is not a number"]
    if fraction <= MAX_SHARED_ALLOC_FRACTION:
        return []
    return [
        f"RAPIDS memory pool is on (pool={pool_name}, allocFraction={fraction:g}) and will take the "
        "GPU from PyTorch: set spark.rapids.memory.gpu.pool=NONE "
        f"(or cap spark.rapids.memory.gpu.allocFraction at {MAX_SHARED_ALLOC_FRACTION:g} or less)"
    ]


def _setting_warnings(conf: Mapping[str, str | None]) -> list[str]:
    """Warnings for settings that slow the job down or hang it when RAPIDS is configured."""
    warnings: list[str] = []
    if not _is_true(conf.get("spark.rapids.sql.enabled"), default=True):
        warnings.append(
            "spark.rapids.sql.enabled=false: the plugin is loaded but runs nothing on the GPU"
        )
    warnings += _memory_warnings(
        conf.get("spark.rapids.memory.gpu.pool"), conf.get("spark.rapids.memory.gpu.allocFraction")
    )
    if (conf.get("spark.rapids.sql.mode") or "").strip().lower() == "explainonly":
        warnings.append(
            "spark.rapids.sql.mode=explainOnly: the plugin only logs what would run on the GPU; everything "
            "runs on the CPU"
        )
    if _is_true(conf.get("spark.sql.execution.arrow.useLargeVarTypes"), default=False):
        warnings.append(
            "spark.sql.execution.arrow.useLargeVarTypes=true makes RAPIDS fall back to the CPU for "
            "string columns: set it to false"
        )
    if _is_true(conf.get("spark.rapids.sql.python.gpu.enabled"), default=False):
        warnings.append(
            "spark.rapids.sql.python.gpu.enabled=true is experimental and reserves Python-worker GPU "
            "memory meant for cuDF, not PyTorch: leave it false"
        )
    if conf.get("spark.rapids.python.concurrentPythonWorkers") is not None:
        warnings.append(
            "spark.rapids.python.concurrentPythonWorkers is set: it can deadlock when one task starts "
            "several Python processes; unset it"
        )
    return warnings


def assess_rapids(conf: Mapping[str, str | None], class_check: ClassCheck) -> dict[str, Any]:
    """Judge a Spark configuration for RAPIDS; pure, so every case is testable without the jar.

    ``conf`` maps keys to their set values (None or absent = unset). ``class_check(name)`` returns
    True/False for whether the class loads, or ``"unknown"`` when there is no JVM to ask (Spark
    Connect, Databricks serverless). Returns the dict the job stores under ``"rapids"``.
    """
    plugins = conf.get("spark.plugins")
    configured = plugin_listed(plugins)
    class_loadable: bool | str = class_check(PLUGIN_CLASS)
    sql_enabled = _is_true(conf.get("spark.rapids.sql.enabled"), default=True)
    warnings: list[str] = []
    if configured:
        if class_loadable is False:
            warnings.append(
                f"spark.plugins lists {PLUGIN_CLASS} but the class is not loadable: put the "
                "rapids-4-spark jar on the class path (spark.jars) or remove it from spark.plugins"
            )
        warnings += _setting_warnings(conf)
    if not configured or not sql_enabled or class_loadable is False:
        enabled: bool | str = False
    elif class_loadable is True:
        enabled = True
    else:
        enabled = UNKNOWN
    return {
        "enabled": enabled,
        "configured": configured,
        "class_loadable": class_loadable,
        "settings": {key: conf.get(key) for key in RAPIDS_KEYS},
        "warnings": warnings,
    }


def read_conf(spark: Any, keys: tuple[str, ...] = RAPIDS_KEYS) -> dict[str, str | None]:
    """Read ``keys`` from a session's configuration; unset or unreadable keys become None.

    ``spark.conf.get`` covers both static (``spark.plugins``) and SQL keys on classic sessions and on
    Spark Connect; serverless platforms may refuse some keys, which must not fail the job.
    """
    values: dict[str, str | None] = {}
    for key in keys:
        try:
            values[key] = spark.conf.get(key, None)
        except Exception as exc:  # noqa: BLE001 - a refused key is "unknown", not a failure
            log.debug("cannot read %s from the Spark conf: %s", key, exc)
            values[key] = None
    return values


def _session_jvm(spark: Any) -> Any:
    """The py4j JVM view of a classic session, or None (Spark Connect raises on ``_jvm``)."""
    try:
        return getattr(spark, "_jvm", None)
    except Exception:  # noqa: BLE001 - Connect raises its own attribute error type
        return None


def jvm_class_check(spark: Any) -> ClassCheck:
    """A class-check callable backed by the session's JVM, or one answering "unknown".

    The context class loader is asked first because jars added with ``spark.jars``/``--jars`` live
    in Spark's MutableURLClassLoader, not in the system class loader.
    """
    jvm = _session_jvm(spark)
    if jvm is None:
        return lambda name: UNKNOWN

    def check(name: str) -> bool | str:
        try:
            loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
            jvm.java.lang.Class.forName(name, False, loader)
            return True
        except Exception as exc:  # noqa: BLE001 - py4j wraps the Java exception
            text = str(exc)
            if "ClassNotFoundException" in text or "NoClassDefFoundError" in text:
                return False
            log.warning("could not ask the JVM for %s: %s", name, text.splitlines()[0] if text else exc)
            return UNKNOWN

    return check


def detect_rapids(spark: Any) -> dict[str, Any]:
    """Report whether the RAPIDS Accelerator is configured and usable next to PyTorch on ``spark``.

    Example result without the plugin::

        {"enabled": False, "configured": False, "class_loadable": False,
         "settings": {...}, "warnings": []}

    Warnings are also logged, so they reach the driver log as well as the run summary.
    """
    result = assess_rapids(read_conf(spark), jvm_class_check(spark))
    for warning in result["warnings"]:
        log.warning("RAPIDS: %s", warning)
    return result


# ----------------------------------------------------------------------------------------------------------
# Which operators ran on the GPU: read from the executed physical plans
# ----------------------------------------------------------------------------------------------------------

#: Plan nodes that only frame the real operators (adaptive execution's wrapper and its stage boundaries).
_FRAME_NODES = ("AdaptiveSparkPlan",)
_FRAME_SUFFIXES = ("QueryStage",)
#: A node line of Spark's "formatted" plan tree: tree drawing, an optional codegen star, the node, "(N)".
_FORMATTED_NODE = re.compile(r"^(?P<indent>[\s:|]*(?:[+:]- )?)(?:\*(?:\(\d+\))? )?(?P<node>[A-Za-z][^()\[]*?)\s*\(\d+\)")
#: A node line of the other explain modes ("simple", "extended"): "+- *(2) Project [a#1, ...]".
_SIMPLE_NODE = re.compile(r"^(?P<indent>[\s:|]*(?:[+:]- )?)(?:\*\(\d+\) )?(?P<node>[A-Za-z]\w*(?: \w+)?)")


def _operator_name(node: str) -> str:
    """The operator's name without its arguments ("BroadcastHashJoin LeftOuter BuildRight" -> its first word);
    scans keep their format ("Scan json", "GpuFileGpuScan parquet") and commands their kind ("Execute X")."""
    words = node.split()
    if len(words) > 1 and (words[0] == "Execute" or words[0].endswith("Scan")):
        return " ".join(words[:2])
    return words[0]


def _plan_tree(plan: str) -> list[str]:
    """The tree lines of a plan description, final adaptive plan only.

    Adaptive execution shows the final plan and the initial one; the initial plan is the one before the
    plugin replaced operators stage by stage, so it must not count. The node details that "formatted" mode
    prints after the tree start after the first blank line.
    """
    lines = plan.splitlines()
    if lines and lines[0].startswith("== Physical Plan =="):
        lines = lines[1:]
    tree: list[str] = []
    for line in lines:
        if not line.strip() or "== Initial Plan ==" in line:
            break
        if "== Final Plan ==" in line or "== Current Plan ==" in line:
            continue
        tree.append(line)
    return tree


def plan_operators(plan: str) -> list[str]:
    """Operator names in a physical plan description, in tree order, each once.

    Understands Spark's ``formatted`` explain mode (the default of ``spark.sql.ui.explainMode``, what the
    SQL status store keeps) and, more loosely, the ``simple``/``extended`` modes. A node's inner children are
    drawn deeper than a child would be: under a cached table (``InMemoryRelation``) they are the physical plan
    that filled the cache and count; under a command (``Execute CreateViewCommand``) they are a logical plan
    that did not run, and are skipped.
    """
    names: list[str] = []
    path: list[tuple[int, str]] = []  # (column, node) of the nodes above the current line
    skip_below: int | None = None
    for line in _plan_tree(plan):
        match = _FORMATTED_NODE.match(line) or _SIMPLE_NODE.match(line)
        if match is None:
            continue
        column, node = len(match.group("indent")), match.group("node").strip()
        if skip_below is not None and column > skip_below:
            continue
        skip_below = None
        while path and path[-1][0] >= column:
            path.pop()
        if path and column - path[-1][0] > 3 and path[-1][1].startswith("Execute "):
            skip_below = path[-1][0]  # a command's logical plan
            continue
        path.append((column, node))
        name = _operator_name(node)
        if name in _FRAME_NODES or name.endswith(_FRAME_SUFFIXES) or name in names:
            continue
        names.append(name)
    return names


def is_gpu_operator(name: str) -> bool:
    """RAPIDS names every operator it puts on the GPU ``Gpu...`` (writes: ``Execute Gpu...Command``)."""
    return name.startswith("Gpu") or name.startswith("Execute Gpu")


def split_operators(plans: Iterable[str]) -> dict[str, list[str]]:
    """``{"gpu_operators": [...], "cpu_operators": [...]}`` over several plans, sorted, each name once."""
    names = {name for plan in plans for name in plan_operators(plan)}
    return {"gpu_operators": sorted(n for n in names if is_gpu_operator(n)),
            "cpu_operators": sorted(n for n in names if not is_gpu_operator(n))}


def executed_plans(spark: Any, since_ms: int) -> list[str] | None:
    """Physical plans of the SQL queries that started at or after ``since_ms`` (epoch milliseconds).

    From Spark's SQL status store (kept with or without the UI); the listener bus is drained first so the
    last write's plan is in it. None where there is no JVM to ask (Spark Connect, serverless).
    """
    jvm_session = getattr(spark, "_jsparkSession", None)
    if _session_jvm(spark) is None or jvm_session is None:
        return None
    try:
        spark.sparkContext._jsc.sc().listenerBus().waitUntilEmpty()
    except Exception as exc:  # noqa: BLE001 - a busy bus only risks missing the newest plan
        log.debug("could not drain Spark's listener bus: %s", exc)
    executions = jvm_session.sharedState().statusStore().executionsList()
    plans = []
    for i in range(executions.size()):
        execution = executions.apply(i)
        if execution.submissionTime() >= since_ms:
            plans.append(str(execution.physicalPlanDescription()))
    return plans


def executed_operators(spark: Any, since_s: float) -> dict[str, Any]:
    """Which operators of the queries run since ``since_s`` (epoch seconds) ran on the GPU and which on the CPU.

    ``{"gpu_operators": [...], "cpu_operators": [...], "queries": N}``; the lists are None (and "queries" 0)
    where the plans cannot be read. In ``spark.rapids.sql.mode=explainOnly`` everything runs on the CPU, so
    ``gpu_operators`` is empty: the plugin's own log says what would have run on the GPU.
    """
    try:
        plans = executed_plans(spark, int(since_s * 1000))
    except Exception as exc:  # noqa: BLE001 - never fail a finished job over a report detail
        log.warning("could not read the executed plans: %s", str(exc).splitlines()[0] if str(exc) else exc)
        plans = None
    if plans is None:
        return {"gpu_operators": None, "cpu_operators": None, "queries": 0}
    return {**split_operators(plans), "queries": len(plans)}
