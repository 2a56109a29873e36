"""The classifiers: each a small declaration of model format, limits, labels and post-processing."""

from sparkcurate.classifiers.aegis import AEGIS_LABELS, AegisClassifier, LlamaGuardClassifier
from sparkcurate.classifiers.base import DistributedDataClassifier, OutputColumn
from sparkcurate.classifiers.domain import DOMAIN_LABELS, DomainClassifier, MultilingualDomainClassifier
from sparkcurate.classifiers.fineweb import (
    FINEWEB_LABELS,
    FineWebEduClassifier,
    FineWebMixtralEduClassifier,
    FineWebNemotronEduClassifier,
)
from sparkcurate.classifiers.instruction_guard import InstructionDataGuardClassifier
from sparkcurate.classifiers.prompt_complexity import PromptTaskComplexityClassifier
from sparkcurate.classifiers.content_type import ContentTypeClassifier
from sparkcurate.classifiers.quality import QUALITY_LABELS, QualityClassifier
from sparkcurate.classifiers.zero_shot import ZeroShotClassifier

__all__ = [
    "DistributedDataClassifier", "OutputColumn", "DomainClassifier", "MultilingualDomainClassifier",
    "QualityClassifier", "ContentTypeClassifier", "ZeroShotClassifier", "DOMAIN_LABELS", "QUALITY_LABELS",
    "FineWebEduClassifier", "FineWebMixtralEduClassifier", "FineWebNemotronEduClassifier", "FINEWEB_LABELS",
    "PromptTaskComplexityClassifier", "AegisClassifier", "InstructionDataGuardClassifier", "LlamaGuardClassifier",
    "AEGIS_LABELS",
]
