"""Prompt task and complexity: the module's state-dict keys are the published ones, the outputs equal the reference
math (mean pooling, one head per target, NeMo's rounding), and edge cases of the post-processing are exact."""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

from sparkcurate.classifiers import PromptTaskComplexityClassifier
from sparkcurate.classifiers.prompt_complexity import PROMPT_COLUMNS
from sparkcurate.models.loading import ModelArtifactError

try:
    from tests.fixtures import reference_math as rm
    from tests.fixtures import tiny_models as tm
    from tests.fixtures.no_spark import classify_texts
except ModuleNotFoundError:  # pragma: no cover - depends on how pytest was started
    from fixtures import reference_math as rm  # type: ignore[no-redef]
    from fixtures import tiny_models as tm  # type: ignore[no-redef]
    from fixtures.no_spark import classify_texts  # type: ignore[no-redef]

TEXTS = [t for t in tm.SAMPLE_TEXTS if t] + list(tm.topic_texts().values())


@pytest.fixture(scope="module")
def prompt_dir(tmp_path_factory):
    return tm.make_prompt_complexity_classifier(tmp_path_factory.mktemp("prompt"))


@pytest.fixture(scope="module")
def loaded(prompt_dir):
    clf = PromptTaskComplexityClassifier(model=str(prompt_dir), batch_size=3)
    clf.preflight()
    return clf


def test_declaration():
    clf = PromptTaskComplexityClassifier()
    assert clf.model == "nvidia/prompt-task-and-complexity-classifier"
    assert clf.max_tokens == 512 and clf.max_chars is None
    assert [c.name for c in clf.output_columns()] == PROMPT_COLUMNS  # NeMo's OUTPUT_FIELDS order
    assert set(PROMPT_COLUMNS) == set(tm.PROMPT_OUTPUT_COLUMNS)
    with pytest.raises(ValueError, match="does not support filter_by"):
        PromptTaskComplexityClassifier(filter_by=["Open QA"])


def test_module_keys_are_the_published_ones(prompt_dir, loaded):
    from safetensors import safe_open

    module = loaded.load_module(prompt_dir)
    with safe_open(str(prompt_dir / "model.safetensors"), framework="pt") as f:
        published = set(f.keys())
    assert set(module.state_dict()) == published
    assert {k for k in published if not k.startswith("backbone.")} == {
        f"head_{i}.fc.{p}" for i in range(8) for p in ("weight", "bias")}


def test_outputs_equal_reference(prompt_dir, loaded):
    out = classify_texts(loaded, TEXTS)
    probs = rm.reference_prompt_complexity(prompt_dir, TEXTS, max_tokens=512)
    ref = rm.prompt_complexity_scores(prompt_dir, probs)
    assert out["task_type_1"] == ref["task_type_1"]
    assert out["task_type_2"] == ref["task_type_2"]
    for col in PROMPT_COLUMNS:
        if col.startswith("task_type_") and col != "task_type_prob":
            continue
        np.testing.assert_allclose(np.asarray(out[col], dtype=np.float64), ref[col], atol=1.1e-4, err_msg=col)
    # the outputs differ between texts (the heads are not constant)
    assert len(set(np.round(out["prompt_complexity_score"], 4))) > 3
    assert len(set(out["task_type_1"])) > 1


def test_padding_does_not_change_results(prompt_dir, loaded):
    """Mean pooling must ignore padding: a text alone and inside a batch with a long text agree."""
    short, long_ = TEXTS[8], "A much longer document. " * 30
    alone = classify_texts(loaded, [short])
    mixed = classify_texts(loaded, [long_, short])
    assert mixed["task_type_1"][1] == alone["task_type_1"][0]
    assert mixed["prompt_complexity_score"][1] == pytest.approx(alone["prompt_complexity_score"][0], abs=1e-4)


def _one_row(loaded, **target_probs) -> np.ndarray:
    """A crafted output row: uniform probabilities except the targets given."""
    parts = []
    for target, size in loaded.target_sizes.items():
        parts.append(np.asarray(target_probs.get(target, np.full(size, 1.0 / size)), dtype=np.float32))
    return np.concatenate(parts)[None, :]


def test_postprocess_edge_cases(loaded):
    task = np.zeros(11, dtype=np.float32)
    task[[3, 7]] = [0.9005, 0.0995]  # second rounds to 0.1 (3 places): kept, as NeMo compares the rounded value
    cols = loaded.postprocess(_one_row(loaded, task_type=task))
    assert cols["task_type_1"] == ["Text Generation"] and cols["task_type_2"] == ["Rewrite"]
    assert cols["task_type_prob"][0] == pytest.approx(0.9, abs=1e-9)  # round(0.9005 in float32, 3)
    task[[3, 7]] = [0.91, 0.09]
    cols = loaded.postprocess(_one_row(loaded, task_type=task))
    assert cols["task_type_2"] == ["NA"]
    few = np.array([0.8, 0.2, 0, 0, 0, 0], dtype=np.float32)  # 0.2 / 5 = 0.04 < 0.05 -> 0
    cols = loaded.postprocess(_one_row(loaded, number_of_few_shots=few))
    assert cols["number_of_few_shots"][0] == 0.0
    few = np.array([0, 0, 0, 0, 0, 1], dtype=np.float32)
    cols = loaded.postprocess(_one_row(loaded, number_of_few_shots=few, creativity_scope=[0, 0, 1],
                                       reasoning=[0, 1], constraint_ct=[0, 1], domain_knowledge=[0, 0, 0, 1],
                                       contextual_knowledge=[0, 1]))
    assert cols["prompt_complexity_score"][0] == pytest.approx(1.0, abs=1e-9)
    assert cols["creativity_scope"][0] == 1.0 and cols["number_of_few_shots"][0] == 1.0
    # uniform creativity: (0 + 0.5 + 1) / 3 = 0.5; uniform domain: (0 + 1/3 + 2/3 + 1) / 4 = 0.5
    cols = loaded.postprocess(_one_row(loaded))
    assert cols["creativity_scope"][0] == pytest.approx(0.5, abs=1e-4)
    assert cols["domain_knowledge"][0] == pytest.approx(0.5, abs=1e-4)
    assert loaded.confidence(_one_row(loaded))[0] == pytest.approx(cols["prompt_complexity_score"][0], abs=1e-6)


def test_bad_configs_are_refused(tmp_path, prompt_dir):
    for key, value, match in [
        ("target_sizes", None, "no 'target_sizes'"),
        ("weights_map", {"creativity_scope": [0.0, 1.0]}, "do not match"),
    ]:
        bad = tmp_path / key
        shutil.copytree(prompt_dir, bad)
        cfg = json.loads((bad / "config.json").read_text())
        if value is None:
            del cfg[key]
        else:
            cfg[key] = value
        (bad / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ModelArtifactError, match=match):
            PromptTaskComplexityClassifier(model=str(bad)).preflight()


def test_wrong_head_count_fails_preflight(tmp_path, prompt_dir):
    bad = tmp_path / "bad"
    shutil.copytree(prompt_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["target_sizes"]["reasoning"] = 3
    cfg["weights_map"]["reasoning"] = [0.0, 0.5, 1.0]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelArtifactError, match="wrong shape"):
        PromptTaskComplexityClassifier(model=str(bad)).preflight()
