"""NeMo Curator's content-type classifier (DeBERTa-v3 + CLS head, 1024 tokens, 11 speech/content types)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sparkcurate.classifiers.base import DistributedDataClassifier


@dataclass
class ContentTypeClassifier(DistributedDataClassifier):
    name: ClassVar[str] = "content-type"
    description: ClassVar[str] = "speech/content type, 11 labels (DeBERTa-v3-base)"
    default_model: ClassVar[str] = "nvidia/content-type-classifier-deberta"
    default_pred_column: ClassVar[str] = "content_pred"
    default_max_chars: ClassVar[int] = 6000
    default_max_tokens: ClassVar[int] = 1024
