"""Which device a Spark task runs its model on.

Rules, in order (spark-rapids-ml's habit: decide from what the task was given, fail clearly otherwise):
1. ``device="cpu"``: the CPU.
2. The task was given a GPU (``TaskContext.resources()["gpu"]``): that address. If CUDA_VISIBLE_DEVICES is set,
   the address is looked up in it (Spark never sets it; a cluster manager may), else it is the CUDA index.
3. No GPU given (``local[N]`` gives tasks no resources): with CUDA present, partition id modulo the device count;
   without CUDA, the CPU for ``auto`` and a clear error for ``cuda``.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "cpu")


class DeviceError(RuntimeError):
    """The task cannot run where it was asked to."""


def task_gpu_addresses() -> list[str]:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None:
        return []
    res = ctx.resources().get("gpu")
    return list(res.addresses) if res is not None else []


def cuda_index_for_address(address: str, visible: str | None) -> int:
    """CUDA ordinal for a Spark GPU address, honouring CUDA_VISIBLE_DEVICES when a cluster manager set it."""
    if visible is None or visible.strip() == "":
        try:
            return int(address)
        except ValueError as exc:
            raise DeviceError(f"GPU address {address!r} is not a device index and CUDA_VISIBLE_DEVICES is unset") from exc
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if address in ids:
        return ids.index(address)
    raise DeviceError(
        f"this task was given GPU {address!r}, which is not in CUDA_VISIBLE_DEVICES={visible!r}: the discovery "
        "script and the cluster manager disagree"
    )


def select_device(requested: str = "auto", addresses: list[str] | None = None, partition_id: int = 0) -> str:
    """A torch device string for this task (see the module doc for the rules)."""
    if requested not in DEVICES:
        raise DeviceError(f"device must be one of {', '.join(DEVICES)}; got {requested!r}")
    if requested == "cpu":
        return "cpu"
    import torch

    have_cuda = torch.cuda.is_available()
    if addresses:
        if len(addresses) > 1:
            log.warning("task was given GPUs %s; using the first (set spark.task.resource.gpu.amount=1)", addresses)
        if not have_cuda:
            if requested == "cuda":
                raise DeviceError(f"this task was given GPU {addresses[0]} but its Python worker has no CUDA "
                                  "(is torch a CPU build?)")
            log.warning("this task was given GPU %s but its Python worker has no CUDA: running on the CPU",
                        addresses[0])
            return "cpu"
        return f"cuda:{cuda_index_for_address(addresses[0], os.environ.get('CUDA_VISIBLE_DEVICES'))}"
    if have_cuda:
        return f"cuda:{partition_id % torch.cuda.device_count()}"
    if requested == "cuda":
        raise DeviceError("device=cuda but this worker has no CUDA device (is torch a CPU build?)")
    return "cpu"


def current_task_device(requested: str = "auto") -> tuple[str, str | None]:
    """``select_device`` for the Spark task running now, and the GPU address Spark gave it (or None)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    pid = ctx.partitionId() if ctx is not None else 0
    addresses = task_gpu_addresses()
    return select_device(requested, addresses, pid), (addresses[0] if addresses else None)


class CudaStart:
    """The CUDA context of ``device``, created on a daemon thread (:class:`~sparkcurate.spark.background.Background`)
    while the caller goes on; :meth:`wait` before the first use of the device. Nothing happens for a CPU device.

    Why: creating the context took ~0.3 s of a fresh worker's ~3 s model load on the H100 (benchmarks/NOTES.md,
    issue 23), and nothing in the load before the weights reach the device needs it: the fingerprint, the
    checkpoint's config, the module built on the meta device, the tokenizer. torch releases the GIL while it creates
    the context (inside the tensor factory), so that Python work runs meanwhile. Its error would otherwise surface
    as whatever the first device copy raises, or not at all on the thread: :meth:`wait` raises it here as one
    ``DeviceError`` line naming the device (what the driver's failure explanation looks for).
    """

    def __init__(self, device: str) -> None:
        from sparkcurate.spark.background import Background

        self.device = str(device)
        self._job = Background(_create_context, self.device, name="sparkcurate-cuda-start") \
            if self.device.startswith("cuda") else None

    @property
    def seconds(self) -> float:
        """How long the context's creation took on its thread (0 for the CPU, or before it ended)."""
        return self._job.seconds if self._job is not None else 0.0

    def wait(self) -> None:
        """Return once the context exists; raise ``DeviceError`` (the cause chained) when it could not be made."""
        if self._job is None:
            return
        try:
            self._job.result()
        except Exception as exc:  # noqa: BLE001 - any failure to start the device is this one error
            first = (str(exc).strip().splitlines() or [""])[0]
            raise DeviceError(f"CUDA could not start on {self.device} in this Python worker: "
                              f"{type(exc).__name__}: {first}") from exc


def _create_context(device: str) -> None:
    import torch

    torch.empty(1, device=device)  # lazy CUDA init, then the device's primary context (the GIL released)
