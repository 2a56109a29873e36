"""A classifier with no model: "long" for texts of more than ``long_chars`` characters, else "short".

One stand-in for a model, shared by the benchmarks that measure the job's own work (reading, parsing, moving
to Python and back, counting, writing: ``benchmarks/jsonl_exact.py``) and by the tests that check every record's
outcome (``tests/test_bad_input.py`` and those importing it). It costs next to nothing and is deterministic, so
what it measures or checks is the job, not a model. Importable on executors: their workers start in the
repository root.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from sparkcurate.classifiers.base import DistributedDataClassifier


class _EngineConfig:
    prefetch = 1


class LengthEngine:
    """The engine side (``InferenceEngine``'s tokenize / submit / collect): probabilities (short, long) of 0.9 /
    0.1 for texts of at most ``long_chars`` characters, 0.1 / 0.9 above."""

    config = _EngineConfig()
    tokenize_key = ("LengthEngine",)  # the stage shares one tokenization per key

    def __init__(self, long_chars: int = 5) -> None:
        self.long_chars = long_chars

    def tokenize(self, texts):
        return list(texts)

    def predict_tokenized(self, texts) -> np.ndarray:
        long = np.array([len(t) > self.long_chars for t in texts], dtype=np.float32)
        return np.stack([1.0 - long * 0.8 - 0.1, long * 0.8 + 0.1], axis=1)

    # The stage's side of the engine contract (InferenceEngine.submit / collect): nothing runs ahead here.
    def submit(self, texts):
        return list(texts)

    def collect(self, texts) -> np.ndarray:
        return self.predict_tokenized(texts)


@dataclass
class LengthClassifier(DistributedDataClassifier):
    """Labels short/long by text length (``long_chars``: the longest "short" text)."""

    model: str | None = "length-rule"
    long_chars: int = 5
    name: ClassVar[str] = "length"
    default_pred_column: ClassVar[str] = "length_pred"

    def preflight(self) -> dict[str, Any]:
        self.labels = ["short", "long"]
        self.model_fingerprint = "rule"
        self.preflight_info = {"classifier": self.name, "model": self.model, "revision": None,
                               "fingerprint": "rule", "labels": self.labels}
        return self.preflight_info

    def load_engine(self, device: str):
        self.labels = ["short", "long"]
        return LengthEngine(self.long_chars)
