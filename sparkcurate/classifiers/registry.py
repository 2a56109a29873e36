"""Classifier names for the command line and ``sparkcurate list``: one line per classifier."""

from __future__ import annotations

from typing import Any

import logging

from sparkcurate.classifiers.aegis import AegisClassifier
from sparkcurate.classifiers.base import DistributedDataClassifier
from sparkcurate.classifiers.domain import DomainClassifier, MultilingualDomainClassifier
from sparkcurate.classifiers.fineweb import (
    FineWebEduClassifier,
    FineWebMixtralEduClassifier,
    FineWebNemotronEduClassifier,
)
from sparkcurate.classifiers.instruction_guard import InstructionDataGuardClassifier
from sparkcurate.classifiers.prompt_complexity import PromptTaskComplexityClassifier
from sparkcurate.classifiers.content_type import ContentTypeClassifier
from sparkcurate.classifiers.quality import QualityClassifier
from sparkcurate.classifiers.zero_shot import ZeroShotClassifier

log = logging.getLogger(__name__)

REGISTRY: dict[str, type[DistributedDataClassifier]] = {
    cls.name: cls
    for cls in (
        DomainClassifier,
        MultilingualDomainClassifier,
        QualityClassifier,
        ContentTypeClassifier,
        ZeroShotClassifier,
        FineWebEduClassifier,
        FineWebMixtralEduClassifier,
        FineWebNemotronEduClassifier,
        PromptTaskComplexityClassifier,
        AegisClassifier,
        InstructionDataGuardClassifier,
    )
}


def register(cls: type[DistributedDataClassifier]) -> type[DistributedDataClassifier]:
    """Add a classifier class under its ``name`` (usable as a decorator)."""
    REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> type[DistributedDataClassifier]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown classifier {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def default_columns(cls: type[DistributedDataClassifier]) -> list[str]:
    """The columns a classifier writes with its default settings.

    A default instance is built (cheap: plain values, no model or file is touched) so the list is exactly what
    ``output_columns`` gives; a registered class that cannot be built without arguments falls back to its
    declared ``default_pred_column``, ``default_prob_column`` and ``extra_columns``.
    """
    try:
        return [col.name for col in cls().output_columns()]
    except Exception as exc:  # a user class needing arguments: describe it from its declaration
        log.debug("describing %s from its declaration: %s", cls.__name__, exc)
    columns = [cls.default_pred_column] + ([cls.default_prob_column] if cls.default_prob_column else [])
    extra = getattr(cls, "extra_columns", ())
    return columns + [c for c in extra if c not in columns]


def describe() -> list[dict[str, Any]]:
    """What ``sparkcurate list`` prints: model id, limits and output columns of each classifier."""
    rows = []
    for name, cls in REGISTRY.items():
        rows.append({
            "name": name,
            "model": cls.default_model,
            "max_tokens": cls.default_max_tokens,
            "max_chars": cls.default_max_chars,
            "columns": default_columns(cls),
            "filter": cls.supports_filter,
            "description": cls.description,
        })
    return rows
