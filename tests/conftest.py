"""Shared fixtures: offline model hub, loopback Spark, one local SparkSession for the whole test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _interpret_triton_without_gpu() -> None:
    """On a machine without CUDA, run Triton kernels through Triton's CPU interpreter.

    Why here: Triton builds its standard library (tl.max, tl.sum, ...) as interpreted or compiled functions
    when it is first imported, so the switch must come before anything imports it
    (tests/test_relative_attention.py). GPU machines keep compiling.
    """
    import torch

    if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


_interpret_triton_without_gpu()


def triton_interpreter_problem() -> str | None:
    """Why Triton kernels cannot run here through Triton's CPU interpreter (None: they can).

    Needs Triton >= 3.9 (older interpreters fail on 1-element arrays under NumPy 2) and the interpreter on
    (:func:`_interpret_triton_without_gpu`; on a GPU the compiled kernels are tested by tests/gpu).
    """
    try:
        import triton
    except ImportError:
        return "Triton is not installed"
    if tuple(int(part) for part in triton.__version__.split(".")[:2]) < (3, 9):
        return f"Triton {triton.__version__}'s interpreter fails under NumPy 2; needs >= 3.9"
    from sparkcurate.engine.kernels.switches import triton_interpreting

    if not triton_interpreting():
        return ("Triton's interpreter is off (tests/conftest.py turns it on where CUDA is missing; on a GPU the "
                "compiled kernels are tested by tests/gpu)")
    return None


def host_syncs(work) -> list[str]:
    """Where ``work()`` made the host wait for the GPU ("file:line" per sync), by CUDA's sync debug mode.

    For the GPU tests that hold the engine to "no host sync" where it launches work (a sync drains the launch
    queue, so the GPU idles while the host catches up).
    """
    import warnings

    import torch

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            work()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return [f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]


REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples" / "web"
DOMAIN_TEST_LABELS = ["Finance", "Sports", "Science", "News", "Games"]


@pytest.fixture(scope="session")
def spark():
    """One local[2] session for every test that needs Spark (start-up costs seconds)."""
    from sparkcurate.spark.session import get_session

    session = get_session("local[2]", {"spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false",
                                       "spark.default.parallelism": "2"})
    yield session
    session.stop()


@pytest.fixture(scope="session")
def deberta_dir(tmp_path_factory) -> Path:
    """A tiny DeBERTa-v2 classifier in the published layout (config + model.safetensors + tokenizer files)."""
    from tests.fixtures.tiny_models import make_deberta_classifier

    return make_deberta_classifier(tmp_path_factory.mktemp("deberta") / "domain", DOMAIN_TEST_LABELS, seed=3,
                                   head_spread=4.0)


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    import json

    texts = []
    for path in sorted(SAMPLES.rglob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record.get("text"), str) and record["text"].strip():
                texts.append(record["text"])
    return texts


def write_jsonl(path: Path, records: list, raw_lines: list[str] | None = None) -> Path:
    """Write records (and optional raw lines) as JSON lines, creating folders."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
        for line in raw_lines or []:
            fh.write(line + "\n")
    return path
