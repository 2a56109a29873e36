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
