"""sparkcurate: classify huge text datasets on Apache Spark with GPUs, then filter and write what is kept.

Importing the package is cheap: torch, transformers and pyspark load only where they are used.
"""

from sparkcurate.classifiers import (
    ContentTypeClassifier,
    DistributedDataClassifier,
    DomainClassifier,
    MultilingualDomainClassifier,
    QualityClassifier,
    ZeroShotClassifier,
)
from sparkcurate.io.sinks.jsonl import write_jsonl
from sparkcurate.io.sources.jsonl import read_jsonl, read_jsonl_checked

__version__ = "0.1.0"

__all__ = [
    "ContentTypeClassifier", "DistributedDataClassifier", "DomainClassifier", "MultilingualDomainClassifier",
    "QualityClassifier", "ZeroShotClassifier", "read_jsonl", "read_jsonl_checked", "write_jsonl",
]
