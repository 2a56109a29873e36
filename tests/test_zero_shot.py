"""The zero-shot classifier's several descriptions a label, and the real-text evaluation that measures it."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from benchmarks import zero_shot_corpus as corpus
from benchmarks import zero_shot_eval
from benchmarks.zero_shot_corpus import Doc, Source
from tests.fixtures.no_spark import classify_texts
from sparkcurate.classifiers.zero_shot import (
    DOMAIN_DESCRIPTIONS,
    ZeroShotClassifier,
    embedded_model_dir,
    read_label_descriptions,
)

DOCS = ["The striker scored twice in the second half and the home team won the league.",
        "Whisk the eggs with sugar, fold in the flour and bake the cake for forty minutes.",
        "Quarks are bound by gluons; the strong force grows with distance."]


def _label_scores(descriptions: dict, texts: list[str]) -> np.ndarray:
    import torch

    clf = ZeroShotClassifier(label_descriptions=descriptions)
    module = clf.load_module(embedded_model_dir())
    from sparkcurate.engine.tokenize import tokenize

    tokens = tokenize(clf.load_tokenizer(embedded_model_dir()), texts, 64)
    width = int(tokens.lengths.max())
    ids = torch.zeros((len(texts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, seq in enumerate(tokens.ids):
        ids[i, : len(seq)] = torch.from_numpy(seq.astype(np.int64))
        mask[i, : len(seq)] = 1
    with torch.inference_mode():
        return module.label_scores(module.embedder.eval()(ids, mask)).numpy()


@pytest.mark.slow  # three model loads: ~10 s here
def test_a_label_scores_its_best_matching_description():
    """With two descriptions, a label's score is the higher of the scores each description alone gives it;
    the other labels' scores do not move."""
    food = "A text about cooking, recipes and baking"
    one = _label_scores({"Sports": "A text about football matches and leagues", "Food": food}, DOCS)
    other = _label_scores({"Sports": "A text about quantum physics", "Food": food}, DOCS)
    both = _label_scores({"Sports": ["A text about football matches and leagues", "A text about quantum physics"],
                          "Food": food}, DOCS)
    np.testing.assert_allclose(both[:, 0], np.maximum(one[:, 0], other[:, 0]), atol=1e-5)
    np.testing.assert_allclose(both[:, 1], one[:, 1], atol=1e-5)
    assert one[0, 0] > other[0, 0] and other[2, 0] > one[2, 0]  # each description wins on its own document


def test_default_descriptions_classify_through_the_engine():
    """The shipped defaults (several descriptions a label) through the engine path: probabilities sum to one."""
    clf = ZeroShotClassifier(prob_column="p")
    assert all(isinstance(v, list) and len(v) >= 2 for v in DOMAIN_DESCRIPTIONS.values())
    out = classify_texts(clf, DOCS)
    assert out["zero_shot_pred"][:2] == ["Sports", "Food_and_Drink"]
    assert all(abs(float(np.sum(p)) - 1) < 1e-5 and len(p) == 26 for p in out["p"])


def test_json_labels_take_a_list_of_descriptions(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"News": ["news reports", "headlines"], "Sports": "matches"}))
    assert read_label_descriptions(str(path)) == {"News": ["news reports", "headlines"], "Sports": "matches"}
    path.write_text(json.dumps({"News": [], "Sports": "matches"}))
    with pytest.raises(ValueError, match="'News'.*non-empty list"):
        read_label_descriptions(str(path))
    for bad in (["ok", 3], 3, {"x": "y"}):
        with pytest.raises(ValueError, match="non-empty list"):
            ZeroShotClassifier(label_descriptions={"News": bad, "Sports": "matches"})


# ------------------------------------------------------------------------------------------------------------
# The evaluation (benchmarks/zero_shot_eval.py) on a tiny corpus: no Debian packages needed
# ------------------------------------------------------------------------------------------------------------

def _tiny_corpus() -> list[Doc]:
    rows = [("tuning", "Sports", DOCS[0]), ("tuning", "Food_and_Drink", DOCS[1]), ("held-out", "Science", DOCS[2]),
            ("held-out", "Finance", "The bank raised interest rates on loans and savings accounts.")]
    return [Doc(f"t:{i}", "tiny", split, label, text) for i, (split, label, text) in enumerate(rows)]


@pytest.mark.slow  # four model loads: ~15 s here
def test_eval_measures_what_the_classifier_predicts(tmp_path):
    """The evaluation's predictions are the shipped classifier's (engine path), and its scores add up."""
    docs = _tiny_corpus()
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"Sports": "sports", "Food_and_Drink": "food", "Science": "science",
                                 "Finance": "finance"}))
    embeddings = zero_shot_eval.embed_documents([d.text for d in docs])
    assert zero_shot_eval.predict("default", embeddings) == \
        classify_texts(ZeroShotClassifier(), [d.text for d in docs])["zero_shot_pred"]
    res = zero_shot_eval.evaluate(docs, [str(names), "label-names"], embeddings)
    assert set(res) == {str(names), "label-names"} and set(res[str(names)]) == {"tuning", "held-out", "all"}
    for variant in res.values():
        assert variant["tuning"]["n"] == 2 and variant["held-out"]["n"] == 2 and variant["all"]["n"] == 4
        per = variant["all"]["per_label"]
        right = sum(v["top1"] * v["n"] for v in per.values())
        assert variant["all"]["top1"] == pytest.approx(right / 4)
    assert set(zero_shot_eval.predict(str(names), embeddings)) <= {"Sports", "Food_and_Drink", "Science", "Finance"}


def test_eval_names_missing_packages(monkeypatch, caplog):
    # only the package made missing here: the machine's own packages (installed or not) must not change the message
    monkeypatch.setattr(corpus, "PACKAGES", {"dict-foldoc": corpus.DICTD / "not-there.index"})
    with caplog.at_level(logging.ERROR):
        assert zero_shot_eval.main([]) == zero_shot_eval.EXIT_MISSING
    assert "apt-get install dict-foldoc" in caplog.text


def test_corpus_selection_is_deterministic_and_capped(tmp_path, monkeypatch):
    """Fortune files read by topic; per label at most ``cap`` documents in hash order, short and repeated texts
    skipped; the manifest check sees a changed text."""
    monkeypatch.setattr(corpus, "FORTUNES", tmp_path)
    cookies = [f"Cookie number {i} about the football league and its matches." for i in range(10)]
    (tmp_path / "sports").write_text("\n%\n".join(cookies + ["too short", cookies[0]]) + "\n")
    source = Source("f", "tuning", "fortunes", 4, lambda: corpus.read_fortunes({"sports": "Sports"}))
    first = corpus.select(source, source.read())
    assert len(first) == 4 and all(d.label == "Sports" and d.split == "tuning" for d in first)
    assert [d.id for d in corpus.select(source, source.read())] == [d.id for d in first]
    manifest = tmp_path / "manifest.json"
    monkeypatch.setattr(zero_shot_eval, "package_versions", lambda: {})
    zero_shot_eval.write_manifest(first, manifest)
    assert zero_shot_eval.manifest_drift(first, manifest) == []
    changed = [Doc(first[0].id, "f", "tuning", "Sports", "another text"), *first[1:]]
    assert zero_shot_eval.manifest_drift(changed, manifest) == [f"changed: {first[0].id}"]
