"""Several classifiers in one pass: the same columns as separate runs, one tokenization per distinct tokenizer."""

from __future__ import annotations

import pytest

from sparkcurate.classifiers import DomainClassifier, QualityClassifier
from sparkcurate.classifiers.fineweb import FineWebEduClassifier
from sparkcurate.pipeline import JobOptions, run
from tests.conftest import SAMPLES
from tests.fixtures.tiny_models import QUALITY_LABELS, make_deberta_classifier, make_fineweb_edu_classifier


@pytest.fixture(scope="module")
def models(tmp_path_factory, deberta_dir):
    root = tmp_path_factory.mktemp("models")
    quality = make_deberta_classifier(root / "quality", QUALITY_LABELS, seed=5, head_spread=4.0, max_tokens=1024)
    fineweb = make_fineweb_edu_classifier(root / "fineweb", seed=1)
    return deberta_dir, quality, fineweb


def _classifiers(models, **filters):
    domain, quality, fineweb = models
    return [DomainClassifier(model=str(domain), device="cpu", filter_by=filters.get("domain")),
            QualityClassifier(model=str(quality), device="cpu", filter_by=filters.get("quality")),
            FineWebEduClassifier(model=str(fineweb), device="cpu")]


def _rows(spark, out):
    return {r["id"]: r.asDict(recursive=True) for r in spark.read.json(str(out)).collect()}


def test_one_pass_equals_separate_runs(spark, models, tmp_path):
    together = tmp_path / "together"
    run(spark, JobOptions(input=str(SAMPLES), output=str(together), classifiers=_classifiers(models)))
    combined = _rows(spark, together)
    assert len(combined) == 28
    for clf in _classifiers(models):
        out = tmp_path / clf.name
        run(spark, JobOptions(input=str(SAMPLES), output=str(out), classifiers=[clf]))
        alone = _rows(spark, out)
        assert set(alone) == set(combined)
        for col in [c.name for c in clf.output_columns()]:
            for key, row in alone.items():
                a, b = row[col], combined[key][col]
                if isinstance(a, float):
                    assert abs(a - b) < 1e-5, (col, key)
                elif isinstance(a, list):
                    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5, (col, key)
                else:
                    assert a == b, (col, key)


def test_combined_filter_is_and_across_classifiers(spark, models, tmp_path):
    out = tmp_path / "all"
    run(spark, JobOptions(input=str(SAMPLES), output=str(out), classifiers=_classifiers(models)))
    rows = _rows(spark, out).values()
    domains = sorted({r["domain_pred"] for r in rows})[:2]
    quality = sorted({r["quality_pred"] for r in rows})[:1]
    expected = {r["id"] for r in rows if r["domain_pred"] in domains and r["quality_pred"] in quality}
    filtered = tmp_path / "filtered"
    summary = run(spark, JobOptions(input=str(SAMPLES), output=str(filtered),
                                    classifiers=_classifiers(models, domain=domains, quality=quality)))
    assert expected, "the sample should keep some rows under this filter"
    assert set(_rows(spark, filtered)) == expected
    assert summary["filtered_records"] == 28 - len(expected)


def _counting_tokenize(monkeypatch) -> list[tuple]:
    """Record every (documents, max_tokens, max_chars) the engines send to the tokenizer."""
    from sparkcurate.engine import runner

    calls: list[tuple] = []
    original = runner.tokenize

    def counting(tokenizer, texts, max_tokens, max_chars=None):
        calls.append((len(texts), max_tokens, max_chars))
        return original(tokenizer, texts, max_tokens, max_chars)

    monkeypatch.setattr(runner, "tokenize", counting)
    return calls


def test_shared_tokenizer_tokenizes_once(deberta_dir, sample_texts, monkeypatch):
    """Two classifiers with the same tokenizer and limits share one tokenization per batch."""
    import pyarrow as pa

    from sparkcurate.spark import stage

    a = DomainClassifier(model=str(deberta_dir), device="cpu")
    b = DomainClassifier(model=str(deberta_dir), device="cpu", pred_column="domain_pred_2")
    for c in (a, b):
        c.preflight()
    calls = _counting_tokenize(monkeypatch)
    fn = stage.make_partition_function([a, b])
    batch = pa.RecordBatch.from_pydict({"text": sample_texts})
    (out,) = list(fn(iter([batch])))
    assert calls == [(len(sample_texts), 512, 2000)]
    assert out.column(out.schema.get_field_index("domain_pred")).to_pylist() == \
        out.column(out.schema.get_field_index("domain_pred_2")).to_pylist()


def test_same_tokenizer_other_limits_tokenizes_once_and_exactly(deberta_dir, sample_texts, monkeypatch):
    """Domain (2000 chars / 512 tokens) and quality-like limits (6000 / 1024) on one tokenizer: one tokenization
    under the larger limits, the smaller derived from it; only documents that the 2000-character cut shortens are
    tokenized again. Every engine gets exactly the ids it would get on its own."""
    import random

    import numpy as np

    from sparkcurate.engine.runner import tokenize_shared

    rng = random.Random(3)
    words = " ".join(sample_texts).split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.choice([1, 5, 40, 300, 900, 2000]))) for _ in range(60)]
    texts += ["", "x" * 2500, ("a " * 1200).strip(), "é" * 1999 + " tail"]
    engines = []
    for chars, tokens in [(2000, 512), (6000, 1024), (2000, 128), (2000, 64)]:
        clf = DomainClassifier(model=str(deberta_dir), device="cpu", max_chars=chars, max_tokens=tokens)
        clf.preflight()
        engines.append(clf.load_engine("cpu"))
    want = [[np.asarray(x).tolist() for x in e.tokenize(texts).ids] for e in engines]
    calls = _counting_tokenize(monkeypatch)
    got = tokenize_shared(engines, texts)
    assert [[x.tolist() for x in t.ids] for t in got] == want
    assert all(list(t.lengths) == [len(x) for x in t.ids] for t in got)
    longer = sum(len(t) > 2000 for t in texts)
    # one tokenization under the largest limits (6000 / 1024), then only the documents longer than 2000
    # characters again, for each engine that cuts there
    assert longer and calls[0] == (len(texts), 1024, 6000)
    assert sorted(calls[1:]) == [(longer, 64, 2000), (longer, 128, 2000), (longer, 512, 2000)]


def _slow_to_load(deberta_dir, input_started, seen: list):
    """A domain classifier whose load waits (up to 5 s) for the task to start reading its input, and notes
    whether it did: the task reads its first batch while the model loads only if the load runs beside it."""
    from dataclasses import dataclass

    @dataclass
    class SlowToLoad(DomainClassifier):
        def load_engine(self, device: str):
            seen.append(input_started.wait(timeout=5))
            return super().load_engine(device)

    clf = SlowToLoad(model=str(deberta_dir), device="cpu")
    clf.preflight()
    return clf


def test_the_model_loads_while_the_first_batch_is_read(deberta_dir, sample_texts):
    import threading

    import pyarrow as pa

    from sparkcurate.spark import stage

    input_started, seen = threading.Event(), []
    clf = _slow_to_load(deberta_dir, input_started, seen)

    def batches():
        input_started.set()
        yield pa.RecordBatch.from_pydict({"text": sample_texts})

    stats = {}

    class Stats:
        def add(self, value):
            stats.update(value)

    (out,) = list(stage.make_partition_function([clf], task_stats=Stats())(batches()))
    assert seen == [True]  # the input was being read while the model loaded
    assert out.num_rows == len(sample_texts) and None not in out.column(out.schema.get_field_index(
        "domain_pred")).to_pylist()
    assert stats["model_load_s"] > 0 and stats["docs"] == len(sample_texts)


def test_a_load_error_still_fails_the_task_and_an_empty_partition_still_loads(deberta_dir):
    import threading

    from sparkcurate.models.loading import ModelArtifactError
    from sparkcurate.spark import stage

    loads = []

    class Broken(DomainClassifier):
        def load_engine(self, device: str):
            loads.append(device)
            raise ModelArtifactError("the weights are gone")

    broken = Broken(model=str(deberta_dir), device="cpu")
    with pytest.raises(ModelArtifactError, match="the weights are gone"):
        list(stage.make_partition_function([broken])(iter([])))
    assert loads == ["cpu"]
    clf = _slow_to_load(deberta_dir, threading.Event(), [])
    assert list(stage.make_partition_function([clf])(iter([]))) == []
