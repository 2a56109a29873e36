"""FineWeb-Edu family: strict loading of the BERT regression checkpoint, scores equal to the reference math, and
NeMo Curator's post-processing (clip to [0, 5], half-to-even integer, label at 2.5) tested on crafted logits."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

from sparkcurate.classifiers import (
    FineWebEduClassifier,
    FineWebMixtralEduClassifier,
    FineWebNemotronEduClassifier,
)
from sparkcurate.models.loading import ModelArtifactError

try:
    from tests.fixtures import reference_math as rm
    from tests.fixtures import tiny_models as tm
    from tests.fixtures.no_spark import classify_texts
except ModuleNotFoundError:  # pragma: no cover - depends on how pytest was started
    from fixtures import reference_math as rm  # type: ignore[no-redef]
    from fixtures import tiny_models as tm  # type: ignore[no-redef]
    from fixtures.no_spark import classify_texts  # type: ignore[no-redef]

TEXTS = [t for t in tm.SAMPLE_TEXTS if t] + list(tm.topic_texts().values()) + tm.corpus_sentences(3, seed=5)


@pytest.fixture(scope="module")
def fineweb_dir(tmp_path_factory):
    return tm.make_fineweb_edu_classifier(tmp_path_factory.mktemp("fineweb"))


def _expected(logits: np.ndarray) -> tuple[list[float], list[int], list[str]]:
    """NeMo Curator's FineWebModelStage.process_model_output, written out with Python scalars."""
    floats = [min(5.0, max(0.0, float(x))) for x in logits]
    ints = [round(max(0.0, min(float(np.float32(x)), 5.0))) for x in logits]  # Python round: half to even
    labels = ["high_quality" if float(x) >= 2.5 else "low_quality" for x in logits]
    return floats, ints, labels


@pytest.mark.parametrize("cls,prefix,model_id", [
    (FineWebEduClassifier, "fineweb-edu", "HuggingFaceFW/fineweb-edu-classifier"),
    (FineWebMixtralEduClassifier, "fineweb-mixtral-edu", "nvidia/nemocurator-fineweb-mixtral-edu-classifier"),
    (FineWebNemotronEduClassifier, "fineweb-nemotron-edu", "nvidia/nemocurator-fineweb-nemotron-4-edu-classifier"),
])
def test_declarations_match_nemo_names(cls, prefix, model_id):
    clf = cls()
    assert clf.model == model_id
    assert [(c.name, c.kind) for c in clf.output_columns()] == [
        (f"{prefix}-score-float", "float"), (f"{prefix}-score-int", "int"), (f"{prefix}-score-label", "string")]
    assert clf.pred_column == f"{prefix}-score-label"
    assert clf.max_tokens == 512 and clf.max_chars is None


def test_scores_equal_reference(fineweb_dir):
    clf = FineWebEduClassifier(model=str(fineweb_dir), batch_size=4)
    info = clf.preflight()
    assert info["labels"] == ["high_quality", "low_quality"]
    out = classify_texts(clf, TEXTS)
    ref = rm.reference_fineweb_scores(fineweb_dir, TEXTS, max_tokens=512)
    assert ref.min() < 2.5 < ref.max(), "the tiny model should give both labels"
    floats, ints, labels = _expected(ref)
    np.testing.assert_allclose(out["fineweb-edu-score-float"], floats, atol=1e-4)
    # Integer and label columns must be exact; skip only texts whose score sits within float noise of a boundary.
    safe = [i for i, x in enumerate(np.clip(ref, 0, 5)) if min(abs(x - np.round(x * 2) / 2), 9) > 1e-3]
    assert len(safe) > len(TEXTS) // 2
    assert [int(out["fineweb-edu-score-int"][i]) for i in safe] == [ints[i] for i in safe]
    assert [out["fineweb-edu-score-label"][i] for i in safe] == [labels[i] for i in safe]


def test_max_chars_cut_is_applied(fineweb_dir):
    long_text = TEXTS[0] + " " + TEXTS[5]
    clf = FineWebEduClassifier(model=str(fineweb_dir), max_chars=20)
    out = classify_texts(clf, [long_text])
    ref = rm.reference_fineweb_scores(fineweb_dir, [long_text], max_chars=20)
    np.testing.assert_allclose(out["fineweb-edu-score-float"], np.clip(ref, 0, 5), atol=1e-4)


@pytest.mark.parametrize("logit,score,integer,label", [
    (2.5, 2.5, 2, "high_quality"),
    (3.5, 3.5, 4, "high_quality"),
    (0.5, 0.5, 0, "low_quality"),
    (1.5, 1.5, 2, "low_quality"),
    (4.5, 4.5, 4, "high_quality"),
    (2.4999, 2.4999, 2, "low_quality"),
    (2.51, 2.51, 3, "high_quality"),
    (-1.0, 0.0, 0, "low_quality"),
    (7.0, 5.0, 5, "high_quality"),
])
def test_postprocess_half_to_even_and_clipping(logit, score, integer, label):
    clf = FineWebNemotronEduClassifier(model="unused/model")
    cols = clf.postprocess(np.array([[logit]], dtype=np.float32))
    assert cols["fineweb-nemotron-edu-score-float"][0] == pytest.approx(score, abs=1e-6)
    assert int(cols["fineweb-nemotron-edu-score-int"][0]) == integer
    assert cols["fineweb-nemotron-edu-score-label"][0] == label
    assert _expected(np.array([logit], dtype=np.float32))[1][0] == integer  # the NeMo expression agrees
    assert 0.0 <= clf.confidence(np.array([[logit]], dtype=np.float32))[0] <= 1.0


def test_custom_column_names_and_filter_validation(fineweb_dir):
    clf = FineWebEduClassifier(model=str(fineweb_dir), pred_column="edu_label", float_score_column="edu",
                               int_score_column="edu_int", filter_by=["high_quality"])
    assert [c.name for c in clf.output_columns()] == ["edu", "edu_int", "edu_label"]
    clf.preflight()
    with pytest.raises(ValueError, match="unknown labels"):
        FineWebEduClassifier(model=str(fineweb_dir), filter_by=["High"]).preflight()
    with pytest.raises(ValueError, match="no probability column"):
        FineWebEduClassifier(prob_column="p")


def test_two_output_checkpoint_is_refused(tmp_path, fineweb_dir):
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(fineweb_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["id2label"] = {"0": "a", "1": "b"}
    cfg["label2id"] = {"a": 0, "b": 1}
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelArtifactError, match="exactly one"):
        FineWebEduClassifier(model=str(bad)).preflight()


def test_spark_stage_and_filter(fineweb_dir, spark):
    """Through the DataFrame API: three columns written, ``filter_by`` keeps only the listed label."""
    texts = TEXTS[:12]
    df = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], ["id", "text"])
    clf = FineWebEduClassifier(model=str(fineweb_dir), filter_by=["high_quality"])
    rows = {r["id"]: r for r in clf(df).collect()}
    ref = np.clip(rm.reference_fineweb_scores(fineweb_dir, texts), 0, 5)
    assert set(rows) == {i for i, s in enumerate(ref) if s >= 2.5}
    for i, r in rows.items():
        assert r["fineweb-edu-score-label"] == "high_quality"
        assert r["fineweb-edu-score-float"] == pytest.approx(ref[i], abs=1e-4)
        assert r["fineweb-edu-score-int"] == int(np.rint(ref[i]))
