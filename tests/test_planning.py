"""Input splits planned per task slot (sparkcurate.spark.planning): the model of Spark's packing against Spark
itself, the plans' balance, the settings put back after a run, and the plan a run records."""

from __future__ import annotations

import contextlib
import gzip
import json
import random
from pathlib import Path

import pytest

from sparkcurate.io.listing import splittable
from sparkcurate.spark.planning import (
    MAX_SPLIT_KEY,
    MIN_PARTITIONS_KEY,
    OPEN_COST_KEY,
    makespan,
    plan_splits,
    planned_splits,
    spark_partitions,
    task_slots,
)

MB = 2**20


@contextlib.contextmanager
def sql_conf(spark, values: dict[str, str | None]):
    before = {k: spark.conf.get(k, None) for k in values}
    for key, value in values.items():
        spark.conf.set(key, value) if value is not None else spark.conf.unset(key)
    try:
        yield
    finally:
        for key, value in before.items():
            spark.conf.set(key, value) if value is not None else spark.conf.unset(key)


def _write_files(root: Path, sizes: list[int], gz: set[int] = frozenset()) -> list[tuple[int, bool]]:
    """JSON-lines files of about the given sizes; returns (size on disk, splittable) as the planner sees them."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    files = []
    for i, size in enumerate(sizes):
        lines, n = [], 0
        while n < size:
            line = json.dumps({"id": f"{i}-{len(lines)}", "text": "w" * rng.randint(20, 200)}) + "\n"
            lines.append(line)
            n += len(line)
        data = "".join(lines).encode()
        path = root / (f"f{i:02d}.jsonl.gz" if i in gz else f"f{i:02d}.jsonl")
        path.write_bytes(gzip.compress(data) if i in gz else data)
        files.append((path.stat().st_size, splittable(path.name)))
    return files


@pytest.mark.parametrize("split", [20_000, 45_000, 90_000, 400_000])
def test_model_of_spark_packing_matches_spark(spark, tmp_path, split):
    """The planner predicts the number of tasks Spark makes (sizes, splittable files cut, gzip kept whole)."""
    files = _write_files(tmp_path / "in", [5_000, 12_000, 30_000, 61_000, 8_000, 150_000, 40_000, 70_000],
                         gz={3, 5})
    open_cost = 4_096
    with sql_conf(spark, {MAX_SPLIT_KEY: str(split), OPEN_COST_KEY: str(open_cost), MIN_PARTITIONS_KEY: "1"}):
        parts = spark.read.json(str(tmp_path / "in")).rdd.getNumPartitions()
    assert parts == len(spark_partitions(files, split, open_cost))


def test_planned_settings_give_spark_the_planned_tasks(spark, tmp_path):
    files = _write_files(tmp_path / "in", [60_000] * 10)
    with sql_conf(spark, {OPEN_COST_KEY: "4096"}):
        plan = plan_splits(files, slots=2, waves=3, open_cost=4_096, min_split=1)
        assert plan.tasks >= 6 and plan.tasks % 2 == 0  # at least the waves asked for, equal per slot
        with planned_splits(spark, plan):
            assert spark.read.json(str(tmp_path / "in")).rdd.getNumPartitions() == plan.tasks


def test_one_slot_settings_give_spark_one_task_for_many_small_files(spark, tmp_path):
    """The open costs of 12 files would make Spark cut 3 tasks at the maximum; the one-slot plan's split gives
    Spark's own reader one task (the data, 120 kB, is under the maximum)."""
    from sparkcurate.spark.planning import one_slot_plan

    files = _write_files(tmp_path / "in", [10_000] * 12)
    with sql_conf(spark, {OPEN_COST_KEY: "10000", MAX_SPLIT_KEY: "130000"}):
        assert len(spark_partitions(files, 130_000, 10_000)) > 1
        plan = one_slot_plan(files, 4, max_split=130_000, open_cost=10_000)
        assert plan.tasks == 1
        with planned_splits(spark, plan):
            assert spark.read.json(str(tmp_path / "in")).rdd.getNumPartitions() == 1


def test_settings_are_put_back(spark):
    plan = plan_splits([(200 * MB, True)], slots=2, waves=2)
    with sql_conf(spark, {MAX_SPLIT_KEY: str(64 * MB), MIN_PARTITIONS_KEY: None}):
        with planned_splits(spark, plan):
            assert spark.conf.get(MAX_SPLIT_KEY) == str(plan.split_bytes)
            assert spark.conf.get(MIN_PARTITIONS_KEY, None) is not None
        assert spark.conf.get(MAX_SPLIT_KEY) == str(64 * MB)
        assert spark.conf.get(MIN_PARTITIONS_KEY, None) is None
        with pytest.raises(RuntimeError):
            with planned_splits(spark, plan):
                raise RuntimeError("the run failed")
        assert spark.conf.get(MAX_SPLIT_KEY) == str(64 * MB)


@pytest.mark.parametrize("slots", [1, 2, 3, 8])
def test_equal_files_give_every_slot_the_same_work(slots):
    files = [(8 * MB, True)] * 96
    plan = plan_splits(files, slots=slots, waves=4)
    parts = spark_partitions(files, plan.split_bytes, 4 * MB)
    assert len(parts) == plan.tasks >= slots * 4
    total = sum(s for s, _ in files)
    assert makespan(parts, slots) <= total / slots * 1.07  # within 7% of a perfect share
    assert plan.split_bytes <= 128 * MB


def test_uneven_files_balance_better_than_spark_default():
    rng = random.Random(3)
    files = [(rng.randint(1, 60 * MB), True) for _ in range(40)] + [(30 * MB, False)] * 3
    slots = 4
    plan = plan_splits(files, slots=slots, waves=4)
    planned = makespan(spark_partitions(files, plan.split_bytes, 4 * MB), slots)
    default = makespan(spark_partitions(files, 128 * MB, 4 * MB), slots)
    assert planned <= default
    assert planned <= sum(s for s, _ in files) / slots * 1.15


def test_small_input_one_task_per_slot_and_big_input_capped():
    small = plan_splits([(50_000, True)] * 6, slots=2, waves=4)
    assert small.tasks == 2 and small.waves == 1
    big = plan_splits([(10 * 2**30, True)], slots=2, waves=4, max_split=128 * MB)
    assert big.split_bytes <= 128 * MB and big.tasks >= 80 and big.tasks % 2 == 0
    assert plan_splits([], slots=2, waves=4) is None and plan_splits([(0, True)], 2, 4) is None


def test_tiny_files_report_their_data_not_the_open_cost():
    """The README's samples: two files of a few KB. Spark packs each with a 4 MB open cost, which sizes the
    split, but the plan reports the data (7,749 bytes, ~3.8 KB a task) and why it gives one wave of the 4 asked."""
    plan = plan_splits([(4_182, True), (3_567, True)], slots=2, waves=4)
    assert plan.tasks == 2 and plan.input_bytes == 7_749 and plan.task_bytes == round(7_749 / 2)
    assert (plan.waves_asked, plan.waves) == (4, 1)
    assert plan.waves_reason.startswith("the input (7.6 KB) is too small for 4 tasks per slot of at least 16.0 MB")
    packed = 7_749 + 2 * 4 * MB  # what Spark divides by minPartitionNum: the split must stay under it
    assert plan.min_partitions * plan.split_bytes <= packed
    assert plan.as_dict()["input_bytes"] == 7_749


def test_waves_reason_only_when_the_plan_differs_from_the_ask():
    even = plan_splits([(8 * MB, True)] * 32, slots=2, waves=4)
    assert even.waves == even.waves_asked == 4 and even.waves_reason is None
    big = plan_splits([(10 * 2**30, True)], slots=2, waves=4, max_split=128 * MB)
    assert big.waves > big.waves_asked == 4 and "maxPartitionBytes (128.0 MB)" in big.waves_reason
    assert big.input_bytes == 10 * 2**30
    whole = plan_splits([(40 * MB, False)] * 3, slots=2, waves=4)  # three gzip files: three tasks at most
    assert whole.tasks == 3 and whole.waves == 1
    assert "3 of which cannot be cut" in whole.waves_reason


def test_splittable_by_codec():
    assert splittable("a.jsonl") and splittable("a.json.bz2")
    assert not splittable("a.jsonl.gz") and not splittable("A.JSONL.GZ") and not splittable("a.jsonl.zst")


def test_local_slots_are_cores(spark):
    assert task_slots(spark, 1) == 2  # the test session is local[2]


def test_run_records_the_plan_and_runs_that_many_tasks(spark, tmp_path):
    from sparkcurate.pipeline import JobOptions, run
    from tests.test_bad_input import LengthClassifier

    _write_files(tmp_path / "in", [40_000] * 8)
    with sql_conf(spark, {OPEN_COST_KEY: "4096"}):
        summary = run(spark, JobOptions(input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                                        classifiers=[LengthClassifier(device="cpu")], quiet=True, waves=2))
        plan = summary["input_splits"]
        assert plan["slots"] == 2 and plan["tasks"] == summary["task_stats"]["tasks"]
        assert spark.conf.get(MIN_PARTITIONS_KEY, None) is None  # put back after the run
        unplanned = run(spark, JobOptions(input=str(tmp_path / "in"), output=str(tmp_path / "out2"),
                                          classifiers=[LengthClassifier(device="cpu")], quiet=True, waves=0))
    assert unplanned["input_splits"] is None
    assert unplanned["input_records"] == summary["input_records"] == summary["task_stats"]["docs"]


class _Conf(dict):
    def get(self, key, default=None):  # SparkConf.get's signature
        return super().get(key, default)


class _Context:
    def __init__(self, master: str, conf: dict, parallelism: int):
        self.master, self._conf, self.defaultParallelism = master, _Conf(conf), parallelism

    def getConf(self):
        return self._conf


class _Session:
    """The parts of a SparkSession the slot count reads (a cluster this machine cannot start)."""

    def __init__(self, master: str, conf: dict, parallelism: int = 8):
        self.sparkContext = _Context(master, conf, parallelism)


GPU = {"spark.executor.resource.gpu.amount": "1", "spark.task.resource.gpu.amount": "0.25",
       "spark.executor.cores": "8"}


@pytest.mark.parametrize("conf, executors, slots", [
    (GPU, 4, 16),  # four GPU tasks per GPU, one GPU per executor
    ({**GPU, "spark.executor.cores": "2"}, 4, 8),  # bounded by the executor's cores
    ({**GPU, "spark.task.resource.gpu.amount": "1", "spark.executor.resource.gpu.amount": "2"}, 3, 6),
    ({"spark.executor.cores": "4", "spark.task.cpus": "2"}, 5, 10),  # no GPU scheduling: CPU slots
])
def test_slots_from_the_cluster_conf(conf, executors, slots):
    assert task_slots(_Session("spark://master:7077", conf), executors) == slots


def test_executor_count_from_conf_master_or_dynamic_allocation():
    from sparkcurate.spark.planning import expected_executors

    assert expected_executors(_Session("yarn", {"spark.executor.instances": "6"})) == 6
    assert expected_executors(_Session("local-cluster[3,1,1024]", {})) == 3
    assert expected_executors(_Session("spark://m:7077", {"spark.cores.max": "32", "spark.executor.cores": "8"})) == 4
    dynamic = {"spark.dynamicAllocation.enabled": "true"}
    assert expected_executors(_Session("yarn", dynamic)) is None  # unbounded: Spark's own splitting is kept
    local = _Session("local[4]", {**dynamic, "spark.dynamicAllocation.maxExecutors": "5"})
    assert expected_executors(local) == 5


def test_one_fixed_slot_gets_one_wave_unless_a_split_would_pass_the_maximum():
    from sparkcurate.spark.planning import ONE_SLOT_REASON, one_slot_plan

    mb = 2**20
    small = one_slot_plan([(100 * mb, True)] * 3, 4)  # 300 MB: three waves of 128 MB at most, not four
    assert small.slots == 1 and small.waves_asked == 4 and small.tasks == small.waves == 3
    assert small.waves_reason.startswith(ONE_SLOT_REASON) and "maxPartitionBytes" in small.waves_reason
    assert one_slot_plan([(60 * mb, True)], 4).tasks == 1  # one task where four were asked
    assert one_slot_plan([(60 * mb, True)], 1).waves_reason is None
    big = one_slot_plan([(1024 * mb, True)], 4)  # the maximum asks for more than four waves anyway
    assert plan_splits([(1024 * mb, True)], 1, 4).tasks == 9  # the open cost counted as data
    assert big.tasks == 8 and big.split_bytes == 128 * mb  # eight chunks of exactly the maximum


def test_one_slot_split_passes_the_maximum_by_open_costs_only():
    """Many files under the maximum in all are one task (Spark's open cost is a weight, not data); a split is
    never raised so that a task would hold more than the maximum of data."""
    from sparkcurate.spark.planning import _SPARK_DEFAULT_OPEN_COST, one_slot_plan, spark_partitions

    mb = 2**20
    files = [(int(3.9 * mb), True)] * 32  # 125 MB of data; with the open costs Spark counts 253 MB
    assert len(spark_partitions(files, 128 * mb, _SPARK_DEFAULT_OPEN_COST)) == 2  # Spark's default cut
    one = one_slot_plan(files, 4)
    assert one.tasks == 1 and one.waves == 1 and one.split_bytes > 128 * mb
    assert spark_partitions(files, one.split_bytes, _SPARK_DEFAULT_OPEN_COST) == [sum(s for s, _ in files)]
    many = [(2 * mb, True)] * 100  # 200 MB: two tasks of at most 128 MB of data
    plan = one_slot_plan(many, 4)
    parts = spark_partitions(many, plan.split_bytes, _SPARK_DEFAULT_OPEN_COST)
    assert plan.tasks == len(parts) == 2 and max(parts) <= 128 * mb
    big = [(300 * mb, True), (10 * mb, True)]  # a large splittable file is still cut at the maximum
    plan = one_slot_plan(big, 1)
    assert plan.split_bytes == 128 * mb or max(spark_partitions(big, plan.split_bytes, 0)) <= 128 * mb
    assert max(spark_partitions(big, plan.split_bytes, _SPARK_DEFAULT_OPEN_COST)) <= 128 * mb


@pytest.mark.parametrize("master, conf, grows", [
    ("local[1]", {}, False),
    ("local-cluster[1,1,1024]", {}, False),
    ("yarn", {"spark.executor.instances": "1"}, False),
    ("yarn", {"spark.dynamicAllocation.enabled": "true", "spark.dynamicAllocation.maxExecutors": "1"}, False),
    ("spark://m:7077", {}, True),  # counted from the executors registered now: more may join
])
def test_one_slot_plan_only_where_no_executor_can_join(master, conf, grows):
    from sparkcurate.spark.planning import _slots_can_grow

    assert _slots_can_grow(_Session(master, conf)) is grows
