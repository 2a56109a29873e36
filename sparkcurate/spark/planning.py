"""How the input is cut into classify tasks: every task slot (a GPU, or a share of one) gets the same number of
equal tasks.

Why: Spark's own split rule (``spark.sql.files.maxPartitionBytes``, 128 MB, or the input over the number of
*cores*) knows nothing of GPUs. On a GPU node with 32 cores and 2 GPUs it cuts the input into 32 or more small
tasks, and every task pays a fixed cost (Python worker hand-over, pipeline fill, the cached block's tail: 0.5-1 s
a task measured on an H100, see benchmarks/NOTES.md); with a task count that is not a multiple of the GPU count,
one GPU idles while the other finishes the last task. So the job sizes the splits itself: ``waves`` equal tasks
per slot (more waves when a split would pass Spark's ``maxPartitionBytes``, which stays the upper bound), by
setting two runtime SQL settings for the duration of the run and restoring them after.

A user who set ``spark.sql.files.minPartitionNum`` keeps their own splitting; with dynamic allocation and no
``spark.dynamicAllocation.maxExecutors`` the number of slots is unknown, and Spark's rule is kept (logged).
"""

from __future__ import annotations

import logging
import math
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

MAX_SPLIT_KEY = "spark.sql.files.maxPartitionBytes"
MIN_PARTITIONS_KEY = "spark.sql.files.minPartitionNum"
OPEN_COST_KEY = "spark.sql.files.openCostInBytes"
DEFAULT_WAVES = 4
# Below this, more tasks cost more in fixed per-task time than they gain in balance.
MIN_SPLIT_BYTES = 16 * 2**20
_SPARK_DEFAULT_MAX_SPLIT = 128 * 2**20
_SPARK_DEFAULT_OPEN_COST = 4 * 2**20
_SIMULATED_FILES = 20_000


@dataclass(frozen=True)
class SplitPlan:
    """The task layout chosen for the classify stage (``input_splits`` in the run summary; the README's table
    of the summary's figures says what each means). Byte figures are data only: Spark's per-file open cost
    (``spark.sql.files.openCostInBytes``) is a packing weight, not data, and is in none of them."""

    slots: int  # classify tasks the cluster runs at once
    waves_asked: int  # tasks per slot asked for (--waves)
    waves: int  # tasks per slot planned: tasks // slots, at least 1
    waves_reason: str | None  # why waves differs from waves_asked (None when equal)
    tasks: int  # the number of splits Spark is expected to make (about slots x waves)
    input_bytes: int  # data: the input files' sizes summed (the summary's top-level input_bytes)
    task_bytes: int  # data per task on average (input_bytes / tasks)
    split_bytes: int  # spark.sql.files.maxPartitionBytes for the run: where Spark may cut, not a task's data
    min_partitions: int  # spark.sql.files.minPartitionNum for the run (keeps Spark from cutting smaller)

    def as_dict(self) -> dict[str, int | str | None]:
        return asdict(self)


def spark_partitions(files: list[tuple[int, bool]], split: int, open_cost: int) -> list[int]:
    """Partition sizes (bytes) Spark makes of ``files`` ((size, splittable) pairs) with ``split`` as
    maxPartitionBytes: splittable files cut into ``split``-sized chunks, chunks sorted by size, packed next-fit
    with ``open_cost`` added per chunk (Spark's FilePartition.getFilePartitions)."""
    chunks: list[int] = []
    for size, splittable in files:
        if splittable and size > split:
            full, rest = divmod(size, split)
            chunks.extend([split] * full + ([rest] if rest else []))
        else:
            chunks.append(size)
    chunks.sort(reverse=True)
    parts: list[int] = []
    current, filled = 0, 0
    for length in chunks:
        if filled and current + length > split:
            parts.append(filled)
            current, filled = 0, 0
        current += length + open_cost
        filled += length
    if filled:
        parts.append(filled)
    return parts


def makespan(parts: list[int], slots: int) -> int:
    """Bytes on the busiest slot when tasks go, in order, to whichever slot frees first (Spark's scheduling of
    one stage's tasks on equal slots)."""
    loads = [0] * slots
    for size in parts:
        loads[loads.index(min(loads))] += size
    return max(loads)


def plan_splits(files: list[tuple[int, bool]], slots: int, waves: int, max_split: int = _SPARK_DEFAULT_MAX_SPLIT,
                open_cost: int = _SPARK_DEFAULT_OPEN_COST, min_split: int = MIN_SPLIT_BYTES) -> SplitPlan | None:
    """Split size that gives every slot ``waves`` (or more, when splits would pass ``max_split``) tasks of equal
    size, as closely as Spark's packing allows.

    ``files`` are (size, splittable) pairs (gzip and other stream codecs are not splittable). Sizes are counted
    as Spark packs them (``open_cost`` on top of each file), and a few split sizes around the ideal one are tried
    on a model of Spark's packing: the one whose busiest slot has the least work wins (then the fewest tasks).
    Small inputs get fewer, larger tasks (never below ``min_split``), still one per slot where there is enough for
    each. Returns None when there is nothing to plan (no input, no slot).
    """
    files = [(size, splittable) for size, splittable in files if size > 0]
    if not files or slots < 1 or waves < 1:
        return None
    asked = waves
    data = sum(size for size, _ in files)
    total = data + open_cost * len(files)  # what Spark packs: each file weighs its size plus the open cost
    waves = max(waves, math.ceil(total / (slots * max_split)))
    ideal = math.ceil(total / (slots * waves))
    small = ideal < min_split
    if small:
        ideal = min(min_split, math.ceil(total / slots))  # one wave, every slot busy
    factors = (0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.3)
    candidates = {min(max_split, max(1, round(ideal * f))) for f in factors}
    if len(files) > _SIMULATED_FILES:  # granularity is fine anyway; the model would cost seconds
        candidates = {min(max_split, ideal)}
    wanted = slots * waves if ideal * slots * waves >= total else slots
    best = None
    for split in sorted(candidates):
        parts = spark_partitions(files, split, open_cost)
        # Enough tasks first (the waves asked for), then the least work on the busiest slot, then fewest tasks.
        score = (len(parts) < wanted, makespan(parts, slots), len(parts))
        if best is None or score < best[0]:
            best = (score, split, len(parts))
    _, split, tasks = best
    planned = max(1, tasks // slots)
    why = _waves_reason(asked, planned, tasks, slots, data, files, raised=waves > asked, small=small,
                        max_split=max_split, min_split=min_split)
    return SplitPlan(slots=slots, waves_asked=asked, waves=planned, waves_reason=why, tasks=tasks,
                     input_bytes=data, task_bytes=round(data / tasks), split_bytes=split,
                     min_partitions=max(1, total // split))


def human_bytes(n: float) -> str:
    """``7.6 KB``, ``3.2 MB``, ``1.5 GB`` (powers of 1024, as Spark's size settings count)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _waves_reason(asked: int, planned: int, tasks: int, slots: int, data: int, files: list[tuple[int, bool]], *,
                  raised: bool, small: bool, max_split: int, min_split: int) -> str | None:
    """Why the plan gives each slot ``planned`` tasks where ``asked`` were asked for (None when it does not)."""
    if planned == asked:
        return None
    if planned > asked and raised:
        return (f"with {asked} task(s) per slot a task would hold more than spark.sql.files.maxPartitionBytes "
                f"({human_bytes(max_split)}), the most Spark puts in one")
    if planned < asked and small:
        return (f"the input ({human_bytes(data)}) is too small for {asked} tasks per slot of at least "
                f"{human_bytes(min_split)} each (smaller tasks cost more in fixed per-task time than they gain in "
                f"balance): {tasks} task(s) for {slots} slot(s)")
    whole = sum(1 for _, cut in files if not cut)
    uncut = f", {whole} of which cannot be cut (compressed streams)" if whole else ""
    return f"Spark's packing of these {len(files)} file(s){uncut} gives {tasks} task(s) for {slots} slot(s)"


def _is_local_master(master: str) -> bool:
    return master == "local" or master.startswith("local[")


def registered_executors(spark: "SparkSession") -> int:
    """Executors registered with the driver now (the driver itself not counted; local mode counts as one)."""
    sc = spark.sparkContext
    if _is_local_master(sc.master):
        return 1
    infos = sc._jsc.sc().statusTracker().getExecutorInfos()
    return max(0, len(infos) - 1)


def _local_cluster(master: str) -> tuple[int, int] | None:
    """(workers, cores per worker) of a ``local-cluster[W,C,MB]`` master."""
    match = re.match(r"local-cluster\[\s*(\d+)\s*,\s*(\d+)\s*,", master)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _executor_cores(spark: "SparkSession") -> int | None:
    conf = spark.sparkContext.getConf()
    cores = conf.get("spark.executor.cores", None)
    if cores:
        return int(cores)
    cluster = _local_cluster(spark.sparkContext.master)
    return cluster[1] if cluster else None


def _configured_executors(spark: "SparkSession") -> int:
    """Executors the conf or master promise (0 when they do not say): ``spark.executor.instances``,
    ``local-cluster[N,...]``, or standalone's ``spark.cores.max`` over ``spark.executor.cores``."""
    sc = spark.sparkContext
    conf = sc.getConf()
    static = int(conf.get("spark.executor.instances", "0") or 0)
    if static:
        return static
    cluster = _local_cluster(sc.master)
    if cluster:
        return cluster[0]
    cores_max, executor_cores = conf.get("spark.cores.max", None), conf.get("spark.executor.cores", None)
    if cores_max and executor_cores:
        return max(1, int(cores_max) // max(1, int(executor_cores)))
    return 0


def expected_executors(spark: "SparkSession", wait_s: float = 30.0) -> int | None:
    """How many executors the stage will run on: the configured count, else the registered ones.

    None when it cannot be known (dynamic allocation without a maximum, or nothing registered). With no count
    configured, on a cluster that is still starting (a job submitted right after the session starts), it waits up
    to ``wait_s`` for a first executor.
    """
    conf = spark.sparkContext.getConf()
    if conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        maximum = conf.get("spark.dynamicAllocation.maxExecutors", None)
        if maximum is None or int(maximum) >= 2**31 - 1:
            return None
        return max(int(maximum), registered_executors(spark))
    configured = _configured_executors(spark)
    if configured:
        return configured
    return wait_for_executors(spark, 1, wait_s) or None


def wait_for_executors(spark: "SparkSession", count: int, timeout_s: float) -> int:
    """Executors registered once ``count`` of them are, or when ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    registered = registered_executors(spark)
    while registered < count and time.monotonic() < deadline:
        time.sleep(0.1)
        registered = registered_executors(spark)
    return registered


def task_slots(spark: "SparkSession", executors: int) -> int:
    """Classify tasks that run at once: GPU slots when tasks are GPU-scheduled (bounded by the executors' cores
    where known), else CPU slots."""
    sc = spark.sparkContext
    conf = sc.getConf()
    task_cpus = max(1, int(conf.get("spark.task.cpus", "1")))
    if _is_local_master(sc.master):
        return max(1, sc.defaultParallelism // task_cpus)  # local mode schedules no resources
    cores = _executor_cores(spark)
    cpu_slots = executors * (cores // task_cpus) if cores else max(1, sc.defaultParallelism // task_cpus)
    task_gpu = float(conf.get("spark.task.resource.gpu.amount", "0") or 0)
    executor_gpu = float(conf.get("spark.executor.resource.gpu.amount", "0") or 0)
    if task_gpu <= 0 or executor_gpu <= 0:
        return max(1, cpu_slots)
    gpu_slots = executors * max(1, int(executor_gpu / task_gpu + 1e-9))
    return max(1, min(gpu_slots, cpu_slots) if cores else gpu_slots)


def _int_conf(spark: "SparkSession", key: str, default: int) -> int:
    """A byte-size SQL setting as an int (Spark accepts '128m' style values too)."""
    value = spark.conf.get(key, None)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        jvm_conf = spark.sparkContext._jvm.org.apache.spark.network.util.JavaUtils
        return int(jvm_conf.byteStringAsBytes(value))


def plan_for_session(spark: "SparkSession", files: list[tuple[int, bool]], waves: int) -> SplitPlan | None:
    """The plan for this session's cluster, or None where the user's or Spark's own splitting is kept."""
    if waves <= 0:
        return None
    if spark.conf.get(MIN_PARTITIONS_KEY, None) is not None:
        log.info("%s is set: the input is split as it says", MIN_PARTITIONS_KEY)
        return None
    executors = expected_executors(spark)
    if executors is None:
        log.info("the number of executors is not known (dynamic allocation without maxExecutors, or none "
                 "registered): Spark's own input splitting is kept")
        return None
    max_split = _int_conf(spark, MAX_SPLIT_KEY, _SPARK_DEFAULT_MAX_SPLIT)
    open_cost = _int_conf(spark, OPEN_COST_KEY, _SPARK_DEFAULT_OPEN_COST)
    slots = task_slots(spark, executors)
    if slots == 1 and not _slots_can_grow(spark):
        return one_slot_plan(files, waves, max_split, open_cost)
    return plan_splits(files, slots, waves, max_split, open_cost)


ONE_SLOT_REASON = ("one task slot, and no more can join: tasks run one after another, so more of them buy no "
                   "balance and each costs a task's fixed start and end")


def one_slot_plan(files: list[tuple[int, bool]], waves: int, max_split: int = _SPARK_DEFAULT_MAX_SPLIT,
                  open_cost: int = _SPARK_DEFAULT_OPEN_COST) -> SplitPlan | None:
    """The plan for a cluster of one task slot: one wave (more when a task would hold more than ``max_split``
    of data).

    Why: waves balance slots that finish at different times and give executors that join later something to
    take; one slot runs its tasks in turn, so every task past the first only adds its fixed cost (~0.9 s a task
    on an H200, benchmarks/NOTES.md). A task still holds at most ``max_split`` of data, so a retried task redoes
    no more than with several waves on a large input; commit groups and resume count input files, not tasks.
    The split may pass ``max_split`` by Spark's per-file open cost (a packing weight, not data: 32 files of
    123 MB in all were two tasks at 128 MB), never by data (``_fewest_tasks``)."""
    plan = plan_splits(files, 1, 1, max_split, open_cost)
    if plan is None:
        return None
    plan = _fewest_tasks(plan, files, max_split, open_cost)
    if waves == 1:
        return plan
    why = None if plan.waves == waves else ONE_SLOT_REASON if plan.waves_reason is None else (
        f"{ONE_SLOT_REASON}; {plan.waves_reason}")
    return SplitPlan(**{**plan.as_dict(), "waves_asked": waves, "waves_reason": why})


def _fewest_tasks(plan: SplitPlan, files: list[tuple[int, bool]], max_split: int, open_cost: int) -> SplitPlan:
    """``plan`` with the split raised by whole open costs where that packs the input into fewer tasks, none of
    which holds more than ``max_split`` of data (Spark's packing as ``spark_partitions`` models it)."""
    files = [(size, splittable) for size, splittable in files if size > 0]
    if len(files) > _SIMULATED_FILES or plan.tasks <= 1:
        return plan
    per_task = math.ceil(len(files) / max(1, math.ceil(plan.input_bytes / max_split)))
    best = (plan.tasks, plan.split_bytes)
    for extra in sorted({per_task - 1, per_task, per_task + 1, 2 * per_task}):
        split = max_split + open_cost * max(0, extra)
        parts = spark_partitions(files, split, open_cost)
        if max(parts) <= max_split and len(parts) < best[0]:
            best = (len(parts), split)
    tasks, split = best
    if split == plan.split_bytes:
        return plan
    total = plan.input_bytes + open_cost * len(files)
    return SplitPlan(**{**plan.as_dict(), "waves": tasks, "tasks": tasks, "split_bytes": split,
                        "task_bytes": round(plan.input_bytes / tasks), "min_partitions": max(1, total // split),
                        "waves_reason": None if tasks == 1 else plan.waves_reason})


def _slots_can_grow(spark: "SparkSession") -> bool:
    """Whether executors beyond those counted may join the stage: the count came from the executors registered
    now (no executor count configured, no dynamic allocation maximum), as on a standalone cluster still
    starting. Local mode never grows."""
    conf = spark.sparkContext.getConf()
    if _is_local_master(spark.sparkContext.master):
        return False
    if conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        return False  # planned with its maximum (expected_executors)
    return _configured_executors(spark) == 0


def split_settings(plan: SplitPlan) -> dict[str, str]:
    """The SQL settings that make Spark cut at ``plan.split_bytes``: Spark uses min(maxPartitionBytes,
    max(openCost, total / minPartitionNum)), so minPartitionNum must leave total / minPartitionNum >= split."""
    return {MAX_SPLIT_KEY: str(plan.split_bytes), MIN_PARTITIONS_KEY: str(plan.min_partitions)}


@contextmanager
def planned_splits(spark: "SparkSession", plan: SplitPlan | None) -> Iterator[SplitPlan | None]:
    """Spark's split settings set to ``plan`` inside the block, and put back as they were after it."""
    if plan is None:
        yield None
        return
    wanted = split_settings(plan)
    before = {key: spark.conf.get(key, None) for key in wanted}
    for key, value in wanted.items():
        spark.conf.set(key, value)
    log.info("input split for %d task slot(s): %d task(s) of about %s of data each (%s in all, cut at %s)%s",
             plan.slots, plan.tasks, human_bytes(plan.task_bytes), human_bytes(plan.input_bytes),
             human_bytes(plan.split_bytes),
             f"; {plan.waves} wave(s) of the {plan.waves_asked} asked: {plan.waves_reason}" if plan.waves_reason
             else "")
    try:
        yield plan
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


# A commit group (the job commits its output one group of input units at a time): this many tasks of
# maxPartitionBytes per task slot. Large enough that a group's last wave (where slots finish one by one and idle)
# is a small share of it; small enough that a group, persisted on the executors' local disks while its output is
# written, is a bounded share of a large input, and that a driver lost mid-run loses at most one group's work.
GROUP_TASKS_PER_SLOT = 16


def commit_group_bytes(spark: "SparkSession", slots: int | None = None) -> int:
    """The default commit group size in input bytes: ``GROUP_TASKS_PER_SLOT`` tasks of Spark's
    ``maxPartitionBytes`` (128 MB by default) for each task slot (``slots``, else Spark's default parallelism):
    e.g. 2 GB for one GPU, 16 GB for eight."""
    if not slots:
        executors = expected_executors(spark)
        slots = task_slots(spark, executors) if executors else spark.sparkContext.defaultParallelism
    return max(1, int(slots)) * GROUP_TASKS_PER_SLOT * _int_conf(spark, MAX_SPLIT_KEY, _SPARK_DEFAULT_MAX_SPLIT)
