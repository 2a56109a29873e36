"""sparkcurate: classify huge text datasets on Apache Spark with GPUs, then filter and write what is kept.

Importing the package is cheap: torch, transformers and pyspark load only where they are used (``run`` and
``JobOptions`` come from ``sparkcurate.pipeline``, which needs pyspark, on first use).
"""

from __future__ import annotations

from typing import Any

from sparkcurate.classifiers import (
    AegisClassifier,
    ContentTypeClassifier,
    DistributedDataClassifier,
    DomainClassifier,
    FineWebEduClassifier,
    FineWebMixtralEduClassifier,
    FineWebNemotronEduClassifier,
    InstructionDataGuardClassifier,
    MultilingualDomainClassifier,
    PromptTaskComplexityClassifier,
    QualityClassifier,
    ZeroShotClassifier,
)
from sparkcurate.io.sinks.jsonl import write_jsonl
from sparkcurate.io.sources.jsonl import read_jsonl, read_jsonl_checked

__version__ = "0.1.0"

# The job API, imported on first use (module ``__getattr__``): the pipeline imports pyspark.
_JOB_API = ("run", "JobOptions")

__all__ = [
    "AegisClassifier", "ContentTypeClassifier", "DistributedDataClassifier", "DomainClassifier",
    "FineWebEduClassifier", "FineWebMixtralEduClassifier", "FineWebNemotronEduClassifier",
    "InstructionDataGuardClassifier", "MultilingualDomainClassifier", "PromptTaskComplexityClassifier",
    "QualityClassifier", "ZeroShotClassifier", "JobOptions", "run", "read_jsonl", "read_jsonl_checked",
    "write_jsonl",
]


def __getattr__(name: str) -> Any:
    if name in _JOB_API:
        from sparkcurate import pipeline

        value = getattr(pipeline, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sparkcurate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_JOB_API))
