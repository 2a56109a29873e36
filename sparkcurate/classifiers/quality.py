"""NeMo Curator's quality classifier (DeBERTa-v3 + CLS head, 1024 tokens, High/Medium/Low)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sparkcurate.classifiers.base import DistributedDataClassifier

QUALITY_LABELS = ["High", "Medium", "Low"]


@dataclass
class QualityClassifier(DistributedDataClassifier):
    name: ClassVar[str] = "quality"
    description: ClassVar[str] = "quality High/Medium/Low (DeBERTa-v3-base)"
    default_model: ClassVar[str] = "nvidia/quality-classifier-deberta"
    default_pred_column: ClassVar[str] = "quality_pred"
    default_prob_column: ClassVar[str | None] = "quality_prob"
    default_max_chars: ClassVar[int] = 6000
    default_max_tokens: ClassVar[int] = 1024
