"""The FineWeb-Edu family: BERT-type regression models that score educational value from 0 to 5.

Three published checkpoints share one format (``AutoModelForSequenceClassification`` with a single output) and
one post-processing, so each is a three-line declaration on ``FineWebEduClassifier``. Columns are named as NeMo
Curator 1.x names them: ``<prefix>-score-float`` (logit clipped to [0, 5]), ``<prefix>-score-int`` (the clipped
score rounded half-to-even, as NeMo's Python ``round`` does: 2.5 -> 2, 3.5 -> 4) and ``<prefix>-score-label``
(``high_quality`` when the score is >= 2.5). The label column is the prediction column, so ``filter_by`` keeps
labels, as in NeMo.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sparkcurate.classifiers.base import DistributedDataClassifier, OutputColumn
from sparkcurate.models.loading import ModelArtifactError, build_backbone_config

FINEWEB_LABELS = ["high_quality", "low_quality"]
HIGH_QUALITY_THRESHOLD = 2.5
MAX_SCORE = 5.0


def sequence_classification_config(config: dict[str, Any]):
    """The transformers config of a ``*ForSequenceClassification`` checkpoint, from its own config.json.

    Unlike a DeBERTa head's config, this one *is* the model's config: ``id2label`` sets ``num_labels`` and must
    be kept (dropping it, as for a DeBERTa head, would give two outputs instead of one).
    """
    return build_backbone_config(config, keep_head_keys=True,
                                 what="transformers sequence-classification model's")


def fineweb_columns(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(float score, int score, label) from raw logits, exactly as NeMo Curator computes them.

    ``np.rint`` rounds half to even, like Python's ``round`` on NeMo's float32 scores; the label compares the
    raw logit with 2.5, which is the same as comparing the clipped score.
    """
    raw = np.asarray(logits, dtype=np.float32).reshape(-1)
    clipped = np.clip(raw, 0.0, MAX_SCORE)
    ints = np.rint(clipped).astype(np.int64)
    labels = [FINEWEB_LABELS[0] if s >= HIGH_QUALITY_THRESHOLD else FINEWEB_LABELS[1] for s in clipped]
    return clipped, ints, labels


@dataclass
class FineWebEduClassifier(DistributedDataClassifier):
    """HuggingFaceFW/fineweb-edu-classifier. ``pred_column`` is the label column; ``float_score_column`` and
    ``int_score_column`` default to the NeMo names built from ``column_prefix``."""

    float_score_column: str | None = None
    int_score_column: str | None = None

    name: ClassVar[str] = "fineweb-edu"
    description: ClassVar[str] = "educational value 0-5, Llama-3-70B annotations (BERT regression)"
    default_model: ClassVar[str] = "HuggingFaceFW/fineweb-edu-classifier"
    column_prefix: ClassVar[str] = "fineweb-edu"
    default_pred_column: ClassVar[str] = "fineweb-edu-score-label"
    default_max_chars: ClassVar[int | None] = None
    default_max_tokens: ClassVar[int] = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        self.float_score_column = self.float_score_column or f"{self.column_prefix}-score-float"
        self.int_score_column = self.int_score_column or f"{self.column_prefix}-score-int"
        if self.prob_column:
            raise ValueError(f"{self.name} is a regression model: it has no probability column")

    def resolve_labels(self, config: dict[str, Any]) -> list[str]:
        """The labels come from the threshold, not from the checkpoint (whose config says ``LABEL_0``)."""
        if self.labels is not None and list(self.labels) != FINEWEB_LABELS:
            raise ModelArtifactError(f"{self.name}: labels are fixed to {FINEWEB_LABELS}, got {self.labels}")
        return list(FINEWEB_LABELS)

    def label_values(self) -> list[str]:
        return list(FINEWEB_LABELS)

    def build_module(self, model_dir: Path, config: dict[str, Any]):
        from sparkcurate.models.heads import SequenceRegressionModel

        hf_config = sequence_classification_config(config)
        if int(hf_config.num_labels) != 1:
            raise ModelArtifactError(
                f"{self.name}: {model_dir} has {hf_config.num_labels} outputs; a FineWeb-Edu model has exactly one"
            )
        return SequenceRegressionModel(hf_config)

    def output_columns(self) -> list[OutputColumn]:
        return [
            OutputColumn(self.float_score_column, "float"),
            OutputColumn(self.int_score_column, "int"),
            OutputColumn(self.pred_column, "string"),
        ]

    def postprocess(self, outputs: np.ndarray) -> dict[str, Any]:
        if outputs.size == 0:
            outputs = outputs.reshape(0, 1)
        if outputs.ndim != 2 or outputs.shape[1] != 1:
            raise ValueError(f"{self.name}: expected one score per document, got outputs of shape {outputs.shape}")
        clipped, ints, labels = fineweb_columns(outputs[:, 0])
        return {self.float_score_column: clipped, self.int_score_column: ints, self.pred_column: labels}

    def confidence(self, outputs: np.ndarray) -> np.ndarray:
        """The clipped score over 5, so the report's [0, 1] histogram shows the score distribution."""
        return np.clip(outputs.reshape(-1).astype(np.float32), 0.0, MAX_SCORE) / MAX_SCORE


@dataclass
class FineWebMixtralEduClassifier(FineWebEduClassifier):
    name: ClassVar[str] = "fineweb-mixtral-edu"
    description: ClassVar[str] = "educational value 0-5, Mixtral 8x22B annotations (BERT regression)"
    default_model: ClassVar[str] = "nvidia/nemocurator-fineweb-mixtral-edu-classifier"
    column_prefix: ClassVar[str] = "fineweb-mixtral-edu"
    default_pred_column: ClassVar[str] = "fineweb-mixtral-edu-score-label"


@dataclass
class FineWebNemotronEduClassifier(FineWebEduClassifier):
    name: ClassVar[str] = "fineweb-nemotron-edu"
    description: ClassVar[str] = "educational value 0-5, Nemotron-4-340B annotations (BERT regression)"
    default_model: ClassVar[str] = "nvidia/nemocurator-fineweb-nemotron-4-edu-classifier"
    column_prefix: ClassVar[str] = "fineweb-nemotron-edu"
    default_pred_column: ClassVar[str] = "fineweb-nemotron-edu-score-label"
