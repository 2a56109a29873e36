"""How a task picks its device (no Spark needed: the rules are pure functions)."""

from __future__ import annotations

import pytest

from sparkcurate.spark.devices import DeviceError, cuda_index_for_address, select_device


def test_cpu_requested():
    assert select_device("cpu", ["0"], 3) == "cpu"


def test_address_is_the_cuda_index_without_visible_devices():
    assert cuda_index_for_address("1", None) == 1
    assert cuda_index_for_address("3", "") == 3


def test_address_looked_up_in_cuda_visible_devices():
    assert cuda_index_for_address("6", "4,6,7") == 1
    with pytest.raises(DeviceError, match="not in CUDA_VISIBLE_DEVICES"):
        cuda_index_for_address("2", "4,6")


def test_cuda_required_without_cuda_is_a_clear_error():
    with pytest.raises(DeviceError, match="no CUDA"):
        select_device("cuda", ["0"], 0)
    with pytest.raises(DeviceError, match="no CUDA"):
        select_device("cuda", [], 0)


def test_auto_without_cuda_runs_on_cpu():
    assert select_device("auto", [], 5) == "cpu"
    assert select_device("auto", ["1"], 5) == "cpu"


def test_bad_device_name():
    with pytest.raises(DeviceError):
        select_device("tpu")


def test_gpu_rules_with_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert select_device("auto", ["2"], 0) == "cuda:2"  # the address Spark gave the task
    assert select_device("cuda", [], 6) == "cuda:2"  # local mode: partition id modulo device count
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert select_device("auto", ["7"], 0) == "cuda:1"


def test_cuda_start_on_the_cpu_starts_nothing():
    from sparkcurate.spark.devices import CudaStart

    start = CudaStart("cpu")
    assert start._job is None
    start.wait()  # nothing to wait for, nothing raised
    assert start.seconds == 0.0


def test_cuda_start_without_cuda_raises_one_clear_device_error_at_wait():
    """The context is made on a thread; its failure is not lost there but raised by ``wait``, as one DeviceError
    line naming the device (what the driver's explanation of a task failure matches), its cause chained."""
    import torch

    from sparkcurate.spark.devices import CudaStart
    from sparkcurate.spark.resources import explain_device_failure

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the context would start")
    start = CudaStart("cuda:0")
    with pytest.raises(DeviceError, match=r"^CUDA could not start on cuda:0 in this Python worker: \w+") as info:
        start.wait()
    assert "\n" not in str(info.value)
    assert info.value.__cause__ is not None
    with pytest.raises(DeviceError):  # every wait says it, not only the first
        start.wait()
    explained = explain_device_failure(RuntimeError(f"Task failed: ... DeviceError: {info.value}\n  at ..."))
    assert explained is not None and "cuda:0" in str(explained)
