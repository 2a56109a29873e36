"""NeMo Curator's domain classifiers (DeBERTa-v3 + CLS head, 26 labels)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sparkcurate.classifiers.base import DistributedDataClassifier

DOMAIN_LABELS = [
    "Adult", "Arts_and_Entertainment", "Autos_and_Vehicles", "Beauty_and_Fitness", "Books_and_Literature",
    "Business_and_Industrial", "Computers_and_Electronics", "Finance", "Food_and_Drink", "Games", "Health",
    "Hobbies_and_Leisure", "Home_and_Garden", "Internet_and_Telecom", "Jobs_and_Education", "Law_and_Government",
    "News", "Online_Communities", "People_and_Society", "Pets_and_Animals", "Real_Estate", "Science",
    "Sensitive_Subjects", "Shopping", "Sports", "Travel_and_Transportation",
]


@dataclass
class DomainClassifier(DistributedDataClassifier):
    name: ClassVar[str] = "domain"
    description: ClassVar[str] = "English domain, 26 labels (DeBERTa-v3-base)"
    default_model: ClassVar[str] = "nvidia/domain-classifier"
    default_pred_column: ClassVar[str] = "domain_pred"
    default_max_chars: ClassVar[int] = 2000
    default_max_tokens: ClassVar[int] = 512


@dataclass
class MultilingualDomainClassifier(DistributedDataClassifier):
    name: ClassVar[str] = "multilingual-domain"
    description: ClassVar[str] = "domain in 52 languages, 26 labels (mDeBERTa-v3-base)"
    default_model: ClassVar[str] = "nvidia/multilingual-domain-classifier"
    default_pred_column: ClassVar[str] = "multilingual_domain_pred"
    default_max_chars: ClassVar[int] = 2000
    default_max_tokens: ClassVar[int] = 512
