"""Before the job reads or writes anything: can a task run where it asks to, with the device it asks for?

Why: Spark waits forever for an executor that can take a task asking for a GPU (its only sign a WARN
"Initial job has not accepted any resources" every 15 s), and ``device=cuda`` tasks on workers without CUDA fail,
are retried and fail again, each time with a long traceback. So before the job starts:

- ``local[N]`` gives tasks no GPUs at all: task resource amounts are refused at once, and ``device=cuda`` is
  checked on this machine (the workers are local processes);
- elsewhere one small probe task runs, bounded by ``spark.sparkcurate.executorWaitTimeout`` (default 120 s;
  0 waits as long as Spark does): it can only start on an executor that has what every task asks for, and for
  ``device=cuda`` it reports whether that executor's Python sees CUDA. No executor in time, or no CUDA, is one
  ``ResourceUnavailable`` naming the settings to look at. (An executor without CUDA that the probe did not meet
  fails its classify tasks with ``DeviceError``; the pipeline turns that into the same one-line error.)

The probe is a one-row ``mapInArrow`` job, so it runs in the Python worker pool the classify tasks use (an RDD
job's workers are another pool): once it has answered (its task ended, ``_wait_until_idle``) a thread of that
worker starts what a classify task does first (imports of torch, the engine and the classifiers' modules; the
CUDA context where the executor has one GPU), and Spark's worker reuse hands that worker to the first classify
task, while the driver lists and plans meanwhile (issue 23: a fresh application's fixed costs).
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

WAIT_CONF = "spark.sparkcurate.executorWaitTimeout"
DEFAULT_WAIT = "120s"
_TASK_RESOURCE = re.compile(r"spark\.task\.resource\.([^.]+)\.amount")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h)?", re.IGNORECASE)
_UNIT_S = {None: 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


class ResourceUnavailable(RuntimeError):
    """The deployment has no executor, GPU or CUDA device that the job asks for (nothing was written)."""


def is_local_master(master: str) -> bool:
    """``local``, ``local[N]``, ``local[*]``, ``local[N,F]``: one JVM, tasks get no GPU resources.
    (``local-cluster[...]`` runs real executors and is not local here.)"""
    return master == "local" or master.startswith("local[")


def task_resources(conf: Mapping[str, str]) -> dict[str, str]:
    """Resource name -> amount every task asks for (``spark.task.resource.<name>.amount`` above 0)."""
    out = {}
    for key, value in conf.items():
        match = _TASK_RESOURCE.fullmatch(key)
        try:
            if match and float(value) > 0:
                out[match.group(1)] = value
        except ValueError:
            out[match.group(1)] = value  # Spark itself rejects it; say what was asked
    return dict(sorted(out.items()))


def wait_seconds(conf: Mapping[str, str]) -> float | None:
    """``spark.sparkcurate.executorWaitTimeout`` in seconds (a number, or with ms/s/m/min/h); None: no limit."""
    raw = str(conf.get(WAIT_CONF, DEFAULT_WAIT)).strip()
    match = _DURATION.fullmatch(raw)
    if match is None:
        raise ValueError(f"{WAIT_CONF} takes a duration like 120s, 10min or 0 (no limit); got {raw!r}")
    seconds = float(match.group(1)) * _UNIT_S[match.group(2).lower() if match.group(2) else None]
    return seconds if seconds > 0 else None


def cuda_missing() -> str | None:
    """Why torch here cannot use CUDA (None: it can)."""
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device"


def check_local(master: str, conf: Mapping[str, str], devices: Sequence[str] = ()) -> None:
    """A local-mode job that cannot run: tasks asking for resources local mode never gives (Spark would wait
    forever), or ``device=cuda`` on a machine without CUDA. Cheap: the command calls it before Spark starts."""
    if not is_local_master(master):
        return
    asked = task_resources(conf)
    if asked:
        settings = ", ".join(f"spark.task.resource.{name}.amount={amount}" for name, amount in asked.items())
        raise ResourceUnavailable(
            f"master {master} gives tasks no GPUs or other resources, so a job whose tasks ask for them ({settings}) "
            "would wait forever: drop those settings (in local mode sparkcurate picks the GPU itself), or use a "
            "cluster or local-cluster[...] with spark.worker/executor.resource.* set; nothing was written")
    if "cuda" in devices:
        why = cuda_missing()
        if why:
            raise ResourceUnavailable(f"--device cuda, but this machine has no usable CUDA ({why}): use --device "
                                      "auto or cpu, or run where a GPU and a CUDA build of torch are; nothing was "
                                      "written")


def check_resources(spark: "SparkSession", devices: Sequence[str] = (), group: str | None = None,
                    warm_modules: Sequence[str] = ()) -> dict[str, Any] | None:
    """Fail fast, before anything is read or written, when no task could run as asked (see the module doc).
    Returns what the probe saw on an executor (None in local mode). ``group``: the probe's Spark job group;
    ``warm_modules``: the classifiers' modules, imported ahead in the probe's worker."""
    sc = spark.sparkContext
    conf = dict(sc.getConf().getAll())
    if is_local_master(sc.master):
        check_local(sc.master, conf, devices)
        return None
    wait = wait_seconds(conf)
    check_cuda = "cuda" in devices
    warm = WarmUp(tuple(warm_modules), tuple(devices), _single_gpu_executor(conf))
    info = probe_executor(spark, wait, check_cuda, group, warm)
    if info is None:
        raise ResourceUnavailable(no_executor_message(sc.master, conf, wait, executor_count(sc)))
    if check_cuda and info.get("cuda_missing"):
        raise ResourceUnavailable(
            f"--device cuda, but the Python worker of an executor on {info['host']} has no usable CUDA "
            f"({info['cuda_missing']}): install a CUDA build of torch on the workers, give the executors GPUs, or "
            "use --device auto; nothing was written")
    log.info("executor check: a task ran on %s (GPU addresses given: %s)", info["host"], info["gpus"] or "none")
    return info


def new_probe_group() -> str:
    return f"sparkcurate-executor-check-{uuid.uuid4().hex[:8]}"


class ResourceCheck:
    """``check_resources`` in a background thread, so the driver's other checks before the job (the models'
    pre-flight: imports of torch and transformers) run while the probe task waits for an executor and starts its
    Python worker; ``result`` re-raises the check's error, ``cancel`` stops its probe job (a check that failed
    meanwhile ends the run)."""

    def __init__(self, spark: "SparkSession", devices: Sequence[str] = (), warm_modules: Sequence[str] = ()
                 ) -> None:
        from sparkcurate.spark.background import Background

        self._sc = spark.sparkContext
        self._group = new_probe_group()
        self._check = Background(check_resources, spark, list(devices), self._group, list(warm_modules),
                                 name=self._group)

    def result(self) -> dict[str, Any] | None:
        return self._check.result()

    def cancel(self) -> None:
        try:
            self._sc.cancelJobGroup(self._group)
        except Exception as exc:  # the run fails with its own error already
            log.debug("cancelling the executor check: %s", exc)
        self._check.wait(60)


def _probe_task(check_cuda: bool, _item: int) -> dict[str, Any]:
    """Runs on an executor: where it ran, the GPUs Spark gave it and, if asked, why CUDA is unusable there."""
    import socket

    from sparkcurate.spark.devices import task_gpu_addresses

    info: dict[str, Any] = {"host": socket.gethostname(), "gpus": task_gpu_addresses()}
    if check_cuda:
        try:
            info["cuda_missing"] = cuda_missing()
        except ImportError as exc:
            info["cuda_missing"] = f"torch cannot be imported: {exc}"
    return info


@dataclass(frozen=True)
class WarmUp:
    """What the probe's worker starts ahead of the first classify task (plain values: pickled to the executor)."""

    modules: tuple[str, ...] = ()  # the classifiers' modules
    devices: tuple[str, ...] = ()  # the devices the classifiers ask for (auto, cuda, cpu)
    cuda_context: bool = False  # the executor has one GPU: its tasks all use the device the probe's would

    def start(self, task_thread: int | None = None) -> None:
        """On a daemon thread of this worker: never fails the probe. Called in the task, which reads only its GPU
        addresses here (Spark's task context, no import); the device is chosen on the thread, as the imports
        are, once ``task_thread`` has finished the task (``_wait_until_idle``).

        Why not choose the device here: ``select_device`` imports torch, and the task, hence the probe's answer
        the driver waits for, would end only after that import (~3 s of a fresh H100 application's probe,
        benchmarks/NOTES.md)."""
        from pyspark import TaskContext

        from sparkcurate.spark.devices import task_gpu_addresses

        try:
            ctx = TaskContext.get()
            placed = (task_gpu_addresses(), ctx.partitionId() if ctx is not None else 0) if self.cuda_context \
                else None
        except Exception:  # noqa: BLE001 - the classify task says what is wrong with its device
            placed = None
        threading.Thread(target=self._run, args=(placed, task_thread), name="sparkcurate-warm-up",
                         daemon=True).start()

    def _run(self, placed: tuple[list[str], int] | None, task_thread: int | None) -> None:
        import importlib

        from sparkcurate.spark.devices import select_device

        try:
            if task_thread is not None:
                _wait_until_idle(task_thread)
            for name in ("torch", "sparkcurate.engine.runner", *self.modules):
                importlib.import_module(name)
            import torch

            devices = [select_device(d, *placed) for d in self.devices] if placed is not None else []
            for device in dict.fromkeys(d for d in devices if d.startswith("cuda")):
                torch.empty(1, device=device)  # the CUDA context, on the device the task will use
        except Exception as exc:  # noqa: BLE001 - a warm-up only; the task does it again and reports
            log.debug("worker warm-up: %s", exc)


def _wait_until_idle(thread_id: int, settle_s: float = 0.05, limit_s: float = 2.0, poll_s: float = 0.005) -> bool:
    """Wait until thread ``thread_id`` has used no CPU and stood on one instruction of one frame for
    ``settle_s`` (blocked: a Python worker between tasks waits on its socket), at most ``limit_s``; whether it
    did. A thread that is gone counts as busy until ``limit_s``.

    Why: the probe's answer travels only once its task has ended (the worker writes the end of its data and
    answers the JVM's end-of-stream, a few steps that each take the GIL). ``import torch`` holds the GIL for
    long stretches (its native libraries load under it), so a warm-up started at once delayed the answer the
    driver waits for (the H100's fresh application, benchmarks/NOTES.md). The frame alone cannot tell: a busy
    thread is always switched out at the same few instructions."""
    import sys
    import time

    def cpu() -> float | None:
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(thread_id))
        except (AttributeError, OSError, OverflowError):  # not on Linux, or the thread is gone
            return None

    deadline = time.monotonic() + limit_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        frame = sys._current_frames().get(thread_id)
        where = (id(frame), frame.f_lasti, cpu()) if frame is not None else None
        now = time.monotonic()
        if where is None or last is None or where[:2] != last[:2] or (
                where[2] is not None and last[2] is not None and where[2] - last[2] > 0.1 * settle_s):
            last, since = where, now
        elif now - since >= settle_s:
            return True
        time.sleep(poll_s)
    return False


def _single_gpu_executor(conf: Mapping[str, str]) -> bool:
    try:
        return float(conf.get("spark.executor.resource.gpu.amount", "0") or 0) == 1
    except ValueError:
        return False


def _probe_partition(check_cuda: bool, warm: WarmUp | None, batches: Iterator[Any]) -> Iterator[Any]:
    """The probe job's one task (``mapInArrow``): ``_probe_task``'s answer as JSON, and the worker's warm-up."""
    import json

    import pyarrow as pa

    for _ in batches:
        pass
    info = _probe_task(check_cuda, 0)
    yield pa.RecordBatch.from_pydict({"info": [json.dumps(info)]})
    if warm is not None:  # the answer is written; its task ends once this generator does
        warm.start(threading.get_ident())


def probe_executor(spark: "SparkSession", wait_s: float | None, check_cuda: bool = False, group: str | None = None,
                   warm: WarmUp | None = None) -> dict[str, Any] | None:
    """Run ``_probe_task`` as a one-task job (it asks for what every task asks for, so it starts only where the
    classify tasks could); None when it has not started and finished within ``wait_s`` (the job is cancelled)."""
    import json

    from sparkcurate.spark.background import Background

    sc = spark.sparkContext
    group = group or new_probe_group()

    def run() -> dict[str, Any]:
        sc.setJobGroup(group, "sparkcurate: waiting for an executor that can run a task", True)
        probe = spark.range(0, 1, 1, 1).mapInArrow(partial(_probe_partition, check_cuda, warm), "info string")
        return json.loads(probe.collect()[0]["info"])

    job = Background(run, name=group)
    if not job.wait(wait_s):
        sc.cancelJobGroup(group)
        job.wait(60)
        return None
    return job.result()


def executor_count(sc: "SparkContext") -> int:
    """Executors registered now (the driver's own entry not counted); -1 when this Spark cannot say."""
    try:
        return max(len(sc._jsc.sc().statusTracker().getExecutorInfos()) - 1, 0)
    except Exception:
        return -1


def no_executor_message(master: str, conf: Mapping[str, str], wait_s: float | None, executors: int) -> str:
    """One line: what the tasks ask for, which settings that needs are missing, how to wait longer."""
    asked = task_resources(conf)
    registered = f"{executors} executor(s) registered" if executors >= 0 else "executors unknown"
    parts = [f"no executor could run a task within {wait_s:g}s (master {master}, {registered})"]
    if asked:
        parts.append("tasks ask for " + ", ".join(f"{n}={a}" for n, a in asked.items())
                     + " (spark.task.resource.*.amount)")
        missing = missing_settings(master, conf, asked)
        if master.startswith("spark://"):
            names = "/".join(asked)
            parts.append(f"the standalone workers must offer {names}: spark.worker.resource.{names}.amount and "
                         f".discoveryScript in their spark-defaults.conf or SPARK_WORKER_OPTS")
        fix = f"missing {', '.join(missing)}: set them" if missing else "give the executors what tasks ask for"
        parts.append(f"{fix}, or drop the spark.*.resource.* settings to run on CPUs")
    else:
        parts.append("check that the cluster has workers with the cores and memory asked (spark.executor.cores, "
                     "spark.executor.memory)")
    parts.append(f"to wait longer set {WAIT_CONF} (0: no limit); nothing was written")
    return "; ".join(parts)


def missing_settings(master: str, conf: Mapping[str, str], asked: Mapping[str, str]) -> list[str]:
    """The settings a task resource needs that this application's configuration lacks. Workers' settings are
    visible here only for local-cluster (its workers share the application's configuration)."""
    missing = []
    for name in asked:
        if not conf.get(f"spark.executor.resource.{name}.amount"):
            missing.append(f"spark.executor.resource.{name}.amount")
        if master.startswith("local-cluster"):
            if not conf.get(f"spark.worker.resource.{name}.amount"):
                missing.append(f"spark.worker.resource.{name}.amount")
            script = conf.get(f"spark.worker.resource.{name}.discoveryScript")
            if not (script or conf.get("spark.worker.resourcesFile")):
                missing.append(f"spark.worker.resource.{name}.discoveryScript")
        elif not master.startswith("spark://") and not conf.get(f"spark.executor.resource.{name}.discoveryScript"):
            missing.append(f"spark.executor.resource.{name}.discoveryScript")  # YARN, Kubernetes
    return missing


_DEVICE_FAILURE = re.compile(r"DeviceError: ([^\n]+)")  # sparkcurate.spark.devices.DeviceError, raised in a task


def explain_device_failure(exc: Exception) -> "ResourceUnavailable | None":
    """A ``ResourceUnavailable`` in one line when a classify task could not use the device it was asked to (a
    ``DeviceError`` inside Spark's task failure); None for any other failure."""
    device = _DEVICE_FAILURE.search(str(exc))
    if device is None:
        return None
    return ResourceUnavailable(f"a classify task could not use its device: {device.group(1).strip()}; "
                               "nothing was written")
