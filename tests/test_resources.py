"""A job no executor can run fails at once or within a bounded wait, with the settings to look at, writing nothing
(instead of Spark's endless "Initial job has not accepted any resources"); so does ``device=cuda`` where there is
no CUDA (instead of retried tasks, hundreds of traceback lines and an empty output directory)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sparkcurate.cli import EXIT_RESOURCES, main
from sparkcurate.pipeline import JobOptions, run
from sparkcurate.spark.devices import DeviceError
from sparkcurate.spark.resources import (
    ResourceUnavailable,
    check_local,
    explain_device_failure,
    is_local_master,
    missing_settings,
    no_executor_message,
    task_resources,
    wait_seconds,
)
from tests.conftest import REPO, SAMPLES
from tests.test_bad_input import LengthClassifier

GPU_TASKS = {"spark.task.resource.gpu.amount": "1", "spark.executor.resource.gpu.amount": "1"}


def test_local_masters():
    assert all(is_local_master(m) for m in ("local", "local[2]", "local[*]", "local[4,3]"))
    assert not any(is_local_master(m) for m in ("local-cluster[1,1,1024]", "spark://h:7077", "yarn", "k8s://x"))


def test_task_resources_are_the_positive_task_amounts():
    conf = {"spark.task.resource.gpu.amount": "0.25", "spark.task.resource.fpga.amount": "0",
            "spark.executor.resource.gpu.amount": "1", "spark.task.cpus": "1"}
    assert task_resources(conf) == {"gpu": "0.25"}


@pytest.mark.parametrize("raw, seconds", [("120s", 120.0), ("120", 120.0), ("2min", 120.0), ("2m", 120.0),
                                          ("1h", 3600.0), ("500ms", 0.5), ("0", None), ("0s", None)])
def test_wait_seconds(raw, seconds):
    assert wait_seconds({"spark.sparkcurate.executorWaitTimeout": raw}) == seconds


def test_wait_defaults_to_two_minutes_and_rejects_nonsense():
    assert wait_seconds({}) == 120.0
    with pytest.raises(ValueError, match="executorWaitTimeout"):
        wait_seconds({"spark.sparkcurate.executorWaitTimeout": "soon"})


def test_local_mode_refuses_task_resources_at_once():
    with pytest.raises(ResourceUnavailable, match=r"spark\.task\.resource\.gpu\.amount=1.*wait forever"):
        check_local("local[2]", GPU_TASKS)
    check_local("local[2]", {"spark.executor.resource.gpu.amount": "1"})  # tasks ask for nothing: fine
    check_local("local-cluster[1,1,1024]", GPU_TASKS)  # real executors: the probe decides


def test_missing_settings_name_what_local_cluster_workers_lack():
    conf = {**GPU_TASKS, "spark.executor.resource.gpu.discoveryScript": "/x.sh"}
    assert missing_settings("local-cluster[1,4,8192]", conf, {"gpu": "1"}) == [
        "spark.worker.resource.gpu.amount", "spark.worker.resource.gpu.discoveryScript"]
    worker = {"spark.worker.resource.gpu.amount": "2", "spark.worker.resource.gpu.discoveryScript": "/x.sh"}
    assert missing_settings("local-cluster[1,4,8192]", {**conf, **worker}, {"gpu": "1"}) == []
    assert missing_settings("yarn", {"spark.task.resource.gpu.amount": "1"}, {"gpu": "1"}) == [
        "spark.executor.resource.gpu.amount", "spark.executor.resource.gpu.discoveryScript"]


def test_no_executor_message_is_one_line_with_the_fix():
    msg = no_executor_message("spark://head:7077", GPU_TASKS, 120.0, 0)
    assert "\n" not in msg
    for part in ("within 120s", "0 executor(s) registered", "gpu=1", "spark.worker.resource.gpu.amount",
                 "spark.sparkcurate.executorWaitTimeout", "nothing was written"):
        assert part in msg, (part, msg)
    cpu = no_executor_message("spark://head:7077", {}, 30.0, 0)
    assert "spark.executor.cores" in cpu and "gpu" not in cpu


def test_command_refuses_gpu_tasks_in_local_mode_before_spark(deberta_dir, tmp_path, caplog):
    out = tmp_path / "out"
    start = time.monotonic()
    code = main(["classify", "--input", str(SAMPLES), "--output", str(out), "--classifier", f"domain={deberta_dir}",
                 "--master", "local[2]", *[a for k, v in GPU_TASKS.items() for a in ("--conf", f"{k}={v}")]])
    assert code == EXIT_RESOURCES
    assert time.monotonic() - start < 60
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "spark.task.resource.gpu.amount" in errors[0], errors
    assert not out.exists()


def test_command_rejects_a_bad_wait_as_usage(tmp_path):
    assert main(["classify", "--input", str(SAMPLES), "--output", str(tmp_path / "out"), "--classifier", "domain",
                 "--conf", "spark.sparkcurate.executorWaitTimeout=soon"]) == 2


def _spark_home() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent)


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "SPARK_HOME": _spark_home(), "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}


@pytest.mark.slow
def test_gpu_tasks_on_workers_without_gpus_fail_within_the_wait(deberta_dir, tmp_path):
    """local-cluster whose worker offers no GPU while executors and tasks ask for one: Spark alone waits forever."""
    out = tmp_path / "out"
    conf = {**GPU_TASKS, "spark.executor.resource.gpu.discoveryScript": str(REPO / "conf" / "fakeGpusResources.sh"),
            "spark.sparkcurate.executorWaitTimeout": "15s"}
    cmd = [sys.executable, "-m", "sparkcurate.cli", "classify", "--input", str(SAMPLES), "--output", str(out),
           "--classifier", f"domain={deberta_dir}", "--master", "local-cluster[1,1,1024]",
           *[a for k, v in conf.items() for a in ("--conf", f"{k}={v}")]]
    start = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=REPO, env=_env())
    assert res.returncode == EXIT_RESOURCES, res.stderr[-3000:]
    assert time.monotonic() - start < 300
    errors = [line for line in res.stderr.splitlines() if " ERROR sparkcurate" in line]
    assert len(errors) == 1, res.stderr[-3000:]
    for part in ("within 15s", "gpu=1", "spark.worker.resource.gpu.amount",
                 "spark.worker.resource.gpu.discoveryScript"):
        assert part in errors[0], errors[0]
    assert "Traceback" not in res.stderr
    assert not out.exists()


# --- device=cuda without CUDA (item 7) ---------------------------------------------------------------------------


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


no_cuda_here = pytest.mark.skipif(_has_cuda(), reason="this machine has CUDA")


@no_cuda_here
def test_command_with_device_cuda_and_no_cuda_exits_at_once(deberta_dir, tmp_path, caplog):
    out = tmp_path / "out"
    start = time.monotonic()
    code = main(["classify", "--input", str(SAMPLES), "--output", str(out), "--classifier", f"domain={deberta_dir}",
                 "--device", "cuda", "--master", "local[2]"])
    assert code == EXIT_RESOURCES
    assert time.monotonic() - start < 60
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "--device cuda" in errors[0] and "CUDA" in errors[0], errors
    assert "\n" not in errors[0]
    assert not out.exists()


@no_cuda_here
def test_python_api_with_device_cuda_and_no_cuda_writes_nothing(spark, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ResourceUnavailable, match="--device cuda, but this machine has no usable CUDA"):
        run(spark, JobOptions(input=str(SAMPLES), output=str(out), classifiers=[LengthClassifier(device="cuda")]))
    assert not out.exists()


@dataclass
class DeviceLessOnExecutors(LengthClassifier):
    """Passes the driver's checks; every task finds no device (an executor without CUDA the probe did not meet)."""

    def load_engine(self, device: str):
        raise DeviceError("device=cuda but this worker has no CUDA device (is torch a CPU build?)")


def test_task_without_its_device_is_one_line_and_leaves_no_directory(spark, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ResourceUnavailable) as info:
        run(spark, JobOptions(input=str(SAMPLES), output=str(out), classifiers=[DeviceLessOnExecutors()]))
    message = str(info.value)
    assert "\n" not in message and "no CUDA device" in message and "nothing was written" in message, message
    assert not out.exists()  # the run created it for its marker and removed it again


def test_failed_run_keeps_an_output_directory_that_existed(spark, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".keep").write_text("mine")  # a visible file sparkcurate did not write is refused (OutputNotOurs)
    with pytest.raises(ResourceUnavailable):
        run(spark, JobOptions(input=str(SAMPLES), output=str(out), classifiers=[DeviceLessOnExecutors()]))
    assert sorted(p.name for p in out.iterdir()) == [".keep"]


def test_a_task_device_error_is_explained_in_one_line():
    text = ("An error occurred while calling o123.collectToPython.\n: org.apache.spark.SparkException: Job aborted"
            "\nTraceback (most recent call last):\n  File ...\nsparkcurate.spark.devices.DeviceError: device=cuda "
            "but this worker has no CUDA device (is torch a CPU build?)\n\tat org.apache.spark...")
    explained = explain_device_failure(RuntimeError(text))
    assert isinstance(explained, ResourceUnavailable)
    assert str(explained) == ("a classify task could not use its device: device=cuda but this worker has no CUDA "
                              "device (is torch a CPU build?); nothing was written")
    assert explain_device_failure(RuntimeError("some other failure")) is None


@pytest.mark.slow
@no_cuda_here
def test_device_cuda_on_executors_without_cuda_is_one_line(deberta_dir, tmp_path):
    """local-cluster: the executors are other processes, so the probe task finds out (no task tracebacks)."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sparkcurate.cli", "classify", "--input", str(SAMPLES), "--output", str(out),
           "--classifier", f"domain={deberta_dir}", "--master", "local-cluster[1,1,1024]", "--device", "cuda"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=REPO, env=_env())
    assert res.returncode == EXIT_RESOURCES, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "executor" in errors[0] and "no usable CUDA" in errors[0], res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert not out.exists()


def test_warm_up_waits_for_the_task_thread_to_block():
    """The probe's warm-up starts its imports only once the task's thread waits (its answer is out); a thread
    that is gone never counts as waiting (the wait ends at its limit)."""
    import socket
    import threading

    from sparkcurate.spark.resources import _wait_until_idle

    left, right = socket.socketpair()
    waiting = threading.Thread(target=left.recv, args=(1,), daemon=True)
    waiting.start()
    try:
        assert _wait_until_idle(waiting.ident, limit_s=30.0)
    finally:
        right.send(b"x")
        waiting.join()
        left.close()
        right.close()
    assert not _wait_until_idle(waiting.ident, limit_s=0.2)


def test_warm_up_chooses_the_device_on_its_thread_not_in_the_task(monkeypatch):
    """Choosing the device imports torch; done in the probe's task it delayed the answer the driver waits for
    (~3 s on the H100). The task reads only its GPU addresses; the device is chosen on the warm-up thread."""
    import threading

    from sparkcurate.spark import devices, resources

    calls: list[tuple[str, str, list, int]] = []

    def select(requested, addresses=None, partition_id=0):
        calls.append((threading.current_thread().name, requested, addresses, partition_id))
        return "cpu"

    started: list[threading.Thread] = []

    class Recorded(threading.Thread):  # the warm-up's thread, kept (it may end before it could be looked up)
        def start(self) -> None:
            started.append(self)
            super().start()

    monkeypatch.setattr(devices, "select_device", select)
    monkeypatch.setattr(devices, "task_gpu_addresses", lambda: ["3"])
    monkeypatch.setattr(resources.threading, "Thread", Recorded)
    resources.WarmUp(modules=(), devices=("auto", "cuda"), cuda_context=True).start()
    assert [t.name for t in started] == ["sparkcurate-warm-up"]
    started[0].join(120)
    assert [c[0] for c in calls] == ["sparkcurate-warm-up"] * 2
    assert [c[1:] for c in calls] == [("auto", ["3"], 0), ("cuda", ["3"], 0)]
