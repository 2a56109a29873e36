"""Model artifacts: strict, offline, no pickles unless allowed; clear errors from the pre-flight check."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from sparkcurate.classifiers import DomainClassifier, QualityClassifier
from sparkcurate.models.loading import ModelArtifactError, read_safetensors_header
from tests.conftest import DOMAIN_TEST_LABELS
from tests.fixtures.reference_math import reference_deberta_probs
from tests.fixtures.tiny_models import make_deberta_classifier, make_legacy_pth_classifier


@pytest.fixture()
def model_copy(deberta_dir, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(deberta_dir, dst)
    return dst


def _rewrite_safetensors(path, change):
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    change(state)
    save_file(state, str(path))


def test_preflight_fills_labels_and_fingerprint(deberta_dir):
    c = DomainClassifier(model=str(deberta_dir))
    info = c.preflight()
    assert info["labels"] == DOMAIN_TEST_LABELS and c.model_fingerprint


def test_missing_key_is_an_error(model_copy):
    _rewrite_safetensors(model_copy / "model.safetensors", lambda s: s.pop("fc.bias"))
    with pytest.raises(ModelArtifactError, match="1 missing.*fc.bias"):
        DomainClassifier(model=str(model_copy)).preflight()


def test_unexpected_key_is_an_error(model_copy):
    import torch

    _rewrite_safetensors(model_copy / "model.safetensors", lambda s: s.update({"extra.weight": torch.zeros(2)}))
    with pytest.raises(ModelArtifactError, match="unexpected.*extra.weight"):
        DomainClassifier(model=str(model_copy)).preflight()


def test_wrong_shape_is_an_error(model_copy):
    import torch

    _rewrite_safetensors(model_copy / "model.safetensors", lambda s: s.update({"fc.bias": torch.zeros(7)}))
    with pytest.raises(ModelArtifactError, match="wrong shape"):
        DomainClassifier(model=str(model_copy)).preflight()


def test_truncated_weights_fail_fast(model_copy):
    path = model_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    start = time.monotonic()
    with pytest.raises(ModelArtifactError, match="truncated"):
        DomainClassifier(model=str(model_copy)).preflight()
    assert time.monotonic() - start < 10


def test_corrupt_header(model_copy):
    (model_copy / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ModelArtifactError, match="corrupt"):
        read_safetensors_header(model_copy / "model.safetensors")


def test_missing_weights(model_copy):
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(ModelArtifactError, match="no weights"):
        DomainClassifier(model=str(model_copy)).preflight()


def test_unreadable_tokenizer(model_copy):
    for name in ("tokenizer.json", "spm.model"):
        (model_copy / name).write_text("garbage")
    with pytest.raises(ModelArtifactError, match="tokenizer"):
        DomainClassifier(model=str(model_copy)).preflight()


def test_remote_code_refused_unless_trusted_and_pinned(model_copy):
    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "evil.Model"}
    (model_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelArtifactError, match="remote code"):
        DomainClassifier(model=str(model_copy)).preflight()
    with pytest.raises(ModelArtifactError, match="pinned --revision"):
        DomainClassifier(model=str(model_copy), trust_remote_code=True).preflight()


def test_config_without_labels_needs_them(tmp_path):
    d = make_deberta_classifier(tmp_path / "old", DOMAIN_TEST_LABELS, seed=3, with_labels_in_config=False)
    with pytest.raises(ModelArtifactError, match="labels="):
        DomainClassifier(model=str(d)).preflight()
    c = DomainClassifier(model=str(d), labels=DOMAIN_TEST_LABELS)
    assert c.preflight()["labels"] == DOMAIN_TEST_LABELS


def test_labels_that_contradict_the_config(deberta_dir):
    with pytest.raises(ModelArtifactError, match="differ"):
        DomainClassifier(model=str(deberta_dir), labels=list(reversed(DOMAIN_TEST_LABELS))).preflight()


@pytest.mark.parametrize("wrap,prefix", [("model_state_dict", False), (None, True)])
def test_pickle_only_refused_then_weights_only(tmp_path, wrap, prefix, sample_texts):
    d = make_legacy_pth_classifier(tmp_path / "legacy", DOMAIN_TEST_LABELS, wrap=wrap, module_prefix=prefix, seed=3)
    with pytest.raises(ModelArtifactError, match="--allow-pickle"):
        DomainClassifier(model=str(d)).preflight()
    c = DomainClassifier(model=str(d), allow_pickle=True)
    c.preflight()
    got = c.load_engine("cpu").predict(sample_texts[:5])
    np.testing.assert_allclose(got, reference_deberta_probs(d, sample_texts[:5], 2000, 512), atol=1e-4)


def test_unknown_model_id_offline_is_clear():
    with pytest.raises(ModelArtifactError, match="local directory"):
        DomainClassifier(model="nobody/no-such-model-here").preflight()


def test_not_a_model_argument(tmp_path):
    with pytest.raises(ModelArtifactError, match="neither"):
        DomainClassifier(model="../nothing/here/at-all").preflight()


def test_filter_by_unknown_label(deberta_dir):
    with pytest.raises(ValueError, match="unknown labels"):
        DomainClassifier(model=str(deberta_dir), filter_by=["Nonsense"]).preflight()


def test_defaults_follow_nemo_curator():
    q = QualityClassifier(model="x/y")
    assert (q.pred_column, q.prob_column, q.max_chars, q.max_tokens) == ("quality_pred", "quality_prob", 6000, 1024)
    d = DomainClassifier()
    assert (d.model, d.pred_column, d.prob_column, d.max_chars, d.max_tokens) == (
        "nvidia/domain-classifier", "domain_pred", None, 2000, 512)


def test_shipped_base_config_builds_deberta_v3_base():
    from sparkcurate.models.loading import build_backbone_config, known_base_config

    cfg = build_backbone_config(known_base_config("microsoft/deberta-v3-base"))
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, cfg.position_buckets) == (768, 12, 128100, 256)
