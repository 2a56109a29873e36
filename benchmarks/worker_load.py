"""Where a fresh Python worker's model load goes: imports, CUDA start, checkpoint read, device copy, first batch.

Why: in a fresh Spark application every Python worker pays these once before its GPU does any work, and with
one task per GPU that time does not shrink when GPUs are added (benchmarks/NOTES.md, scaling). Run it in a new
process so imports are not already cached in it:

    python3 -m benchmarks.worker_load            # GPU 0 when there is one, else CPU
    CUDA_VISIBLE_DEVICES=1 python3 -m benchmarks.worker_load

Prints one JSON object of phase -> seconds (the checkpoint is a DeBERTa-v3-base-shaped domain head written
first; writing it is not part of a load and is reported apart).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path


class Phases:
    """Seconds between successive marks."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.last, 3)
        self.last = now


def main() -> int:
    phases = Phases()
    import numpy  # noqa: F401
    import pyarrow  # noqa: F401

    phases.mark("import_numpy_pyarrow")
    import torch

    phases.mark("import_torch")
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if device != "cpu":
        torch.zeros(1, device=device)
        phases.mark("cuda_init")
    from transformers.models.deberta_v2 import modeling_deberta_v2  # noqa: F401

    phases.mark("import_transformers_deberta")
    try:
        import disentangled_flash  # noqa: F401

        phases.mark("import_disentangled_flash")
    except ImportError:
        pass
    from benchmarks.spark_e2e import write_checkpoint

    ckpt = write_checkpoint(Path(tempfile.mkdtemp()) / "model", smoke=False)
    phases.mark("write_checkpoint_not_part_of_a_load")
    from sparkcurate.classifiers import DomainClassifier
    from sparkcurate.classifiers.base import fingerprint
    from sparkcurate.engine.runner import InferenceEngine

    clf = DomainClassifier(model=str(ckpt), device="auto")
    clf.preflight()
    phases.mark("preflight_driver_side")
    model_dir = clf.resolve_dir()
    fingerprint(model_dir)
    phases.mark("resolve_and_fingerprint")
    module = clf.load_module(model_dir)
    phases.mark("build_and_strict_load_cpu")
    engine = InferenceEngine(module, clf.load_tokenizer(model_dir), clf.engine_config(), device)
    phases.mark("tokenizer_and_engine_to_device")
    texts = ["word " * n for n in (50, 200, 400, 500)] * 8
    engine.predict(texts)
    phases.mark("first_predict_kernel_compile_or_cache_load")
    engine.predict(texts)
    phases.mark("second_predict")
    print(json.dumps({"device": device, "seconds": phases.seconds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
