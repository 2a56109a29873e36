"""The registry behind ``sparkcurate list``: every classifier, its model id, limits and exact output columns."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import ClassVar

import pytest

import sparkcurate.classifiers as classifiers
from sparkcurate.classifiers import registry
from sparkcurate.classifiers.base import DistributedDataClassifier

EXPECTED = {
    "domain": ("nvidia/domain-classifier", 512, 2000, ["domain_pred"], True),
    "multilingual-domain": ("nvidia/multilingual-domain-classifier", 512, 2000, ["multilingual_domain_pred"], True),
    "quality": ("nvidia/quality-classifier-deberta", 1024, 6000, ["quality_pred", "quality_prob"], True),
    "content-type": ("nvidia/content-type-classifier-deberta", 1024, 6000, ["content_pred"], True),
    "fineweb-edu": ("HuggingFaceFW/fineweb-edu-classifier", 512, None,
                    ["fineweb-edu-score-float", "fineweb-edu-score-int", "fineweb-edu-score-label"], True),
    "fineweb-mixtral-edu": ("nvidia/nemocurator-fineweb-mixtral-edu-classifier", 512, None,
                            ["fineweb-mixtral-edu-score-float", "fineweb-mixtral-edu-score-int",
                             "fineweb-mixtral-edu-score-label"], True),
    "fineweb-nemotron-edu": ("nvidia/nemocurator-fineweb-nemotron-4-edu-classifier", 512, None,
                             ["fineweb-nemotron-edu-score-float", "fineweb-nemotron-edu-score-int",
                              "fineweb-nemotron-edu-score-label"], True),
    "prompt-task-complexity": ("nvidia/prompt-task-and-complexity-classifier", 512, None,
                               ["prompt_complexity_score", "task_type_1", "task_type_2", "task_type_prob",
                                "creativity_scope", "reasoning", "contextual_knowledge", "number_of_few_shots",
                                "domain_knowledge", "no_label_reason", "constraint_ct"], False),
    "aegis": ("meta-llama/LlamaGuard-7b", 4096, 6000, ["aegis_pred"], True),
    "instruction-data-guard": ("meta-llama/LlamaGuard-7b", 4096, None,
                               ["instruction_data_guard_poisoning_score", "is_poisoned"], True),
}


def test_every_classifier_is_listed_with_model_limits_and_columns():
    rows = {row["name"]: row for row in registry.describe()}
    assert set(EXPECTED) <= set(rows)
    for name, (model, tokens, chars, columns, filt) in EXPECTED.items():
        row = rows[name]
        assert set(row) == {"name", "model", "max_tokens", "max_chars", "columns", "filter", "description"}
        assert (row["model"], row["max_tokens"], row["max_chars"], row["columns"], row["filter"]) == (
            model, tokens, chars, columns, filt), name
        assert row["description"]


def test_listed_columns_are_what_a_default_instance_writes():
    for row in registry.describe():
        cls = registry.get(row["name"])
        assert row["columns"] == [c.name for c in cls().output_columns()]


def test_get_unknown_names_the_known_ones():
    assert registry.get("aegis") is classifiers.AegisClassifier
    with pytest.raises(ValueError, match="fineweb-edu"):
        registry.get("fineweb")


def test_user_class_needing_arguments_is_described_from_its_declaration():
    @dataclass
    class NeedsArgs(DistributedDataClassifier):
        name: ClassVar[str] = "needs-args"
        default_pred_column: ClassVar[str] = "x_pred"
        default_prob_column: ClassVar[str | None] = "x_prob"
        extra_columns: ClassVar[tuple[str, ...]] = ("x_score", "x_pred")

    registry.register(NeedsArgs)
    try:
        row = next(r for r in registry.describe() if r["name"] == "needs-args")
        assert row["columns"] == ["x_pred", "x_prob", "x_score"]  # no default model: built from the declaration
        assert row["model"] is None
    finally:
        registry.REGISTRY.pop("needs-args", None)


def test_classes_are_exported():
    for name in ("FineWebEduClassifier", "FineWebMixtralEduClassifier", "FineWebNemotronEduClassifier",
                 "PromptTaskComplexityClassifier", "AegisClassifier", "InstructionDataGuardClassifier"):
        assert name in classifiers.__all__
        assert getattr(classifiers, name).name in registry.REGISTRY


def test_describe_imports_no_torch():
    """``sparkcurate list`` must answer instantly: listing classifiers loads neither torch nor transformers."""
    code = ("import sys; from sparkcurate.classifiers.registry import describe; describe(); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
