"""The job end to end in local Spark: nested inputs with the same file name, exactly-once output, filters,
probabilities against the reference math, rejects and the summary's invariant."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sparkcurate.classifiers import DomainClassifier
from sparkcurate.pipeline import JobOptions, run
from tests.conftest import write_jsonl
from tests.fixtures.reference_math import reference_deberta_probs


@pytest.fixture(scope="module")
def nested_input(tmp_path_factory, sample_texts) -> Path:
    """Two folders holding a file of the same name, a gzip file, a file with bad lines, an empty file."""
    import gzip

    root = tmp_path_factory.mktemp("input")
    docs = [{"id": f"d{i}", "text": t, "meta": {"n": i}} for i, t in enumerate(sample_texts)]
    write_jsonl(root / "a" / "part.jsonl", docs[:10])
    write_jsonl(root / "b" / "part.jsonl", docs[10:20], raw_lines=["{not json", '{"id": "nt"}', '{"text": ""}'])
    with gzip.open(root / "b" / "c" / "more.jsonl.gz", "wt", encoding="utf-8") if (root / "b" / "c").mkdir() is None \
            else None as fh:
        for d in docs[20:]:
            fh.write(json.dumps(d) + "\n")
    (root / "empty.jsonl").write_text("")
    return root


def _read_output(spark, out: Path):
    return {r["id"]: r.asDict(recursive=True) for r in spark.read.json(str(out)).collect()}


def test_every_document_exactly_once_with_reference_probabilities(spark, nested_input, deberta_dir, tmp_path,
                                                                  sample_texts):
    out = tmp_path / "out"
    clf = DomainClassifier(model=str(deberta_dir), prob_column="domain_prob", device="cpu")
    summary = run(spark, JobOptions(input=str(nested_input), output=str(out), classifiers=[clf]))
    rows = _read_output(spark, out)
    assert len(rows) == len(sample_texts)  # every classifiable document, once
    assert {r["file_name"] for r in rows.values()} == {"a/part.jsonl", "b/part.jsonl", "b/c/more.jsonl.gz"}
    assert rows["d0"]["file_name"] == "a/part.jsonl" and rows["d10"]["file_name"] == "b/part.jsonl"
    assert rows["d3"]["meta"] == {"n": 3}  # other fields kept as they came
    ids = sorted(rows, key=lambda k: int(k[1:]))
    ref = reference_deberta_probs(deberta_dir, [sample_texts[int(k[1:])] for k in ids], 2000, 512)
    got = np.array([rows[k]["domain_prob"] for k in ids])
    np.testing.assert_allclose(got, ref, atol=1e-3)
    assert [rows[k]["domain_pred"] for k in ids] == [clf.labels[i] for i in ref.argmax(axis=1)]
    assert summary["input_records"] == len(sample_texts) + 3
    assert summary["rejected_by_reason"] == {"malformed_json": 1, "text_missing": 1, "text_empty": 1}
    assert summary["input_records"] == summary["output_records"] + summary["filtered_records"] + \
        summary["rejected_records"]
    assert summary["empty_files"] == ["empty.jsonl"]
    stats = summary["task_stats"]  # every row went through the classify stage once (rejects pass through)
    assert stats["docs"] == summary["input_records"] and stats["tasks"] >= 1
    assert 0 <= stats["model_load_s_max"] <= stats["task_s_max"] <= summary["elapsed_s"]
    assert stats["wait_input_s"] + stats["classify_s"] + stats["model_load_s"] <= stats["task_s"] + 1e-3
    assert json.loads((out / "_summary.json").read_text())["output_records"] == len(sample_texts)
    assert not (out / "_RUNNING.json").exists()
    rejects = [json.loads(line) for p in (out / "_rejects").glob("*.json") for line in p.read_text().splitlines()]
    assert sorted(r["reason"] for r in rejects) == ["malformed_json", "text_empty", "text_missing"]
    assert all(r["file_name"] == "b/part.jsonl" for r in rejects)
    assert any(r.get("line") == "{not json" for r in rejects)


def test_filter_by_keeps_exactly_those_labels(spark, nested_input, deberta_dir, tmp_path, sample_texts):
    clf = DomainClassifier(model=str(deberta_dir), device="cpu")
    clf.preflight()
    preds = clf.postprocess(clf.load_engine("cpu").predict(sample_texts))["domain_pred"]
    wanted = sorted(set(preds))[:2]
    out = tmp_path / "filtered"
    summary = run(spark, JobOptions(input=str(nested_input), output=str(out), classifiers=[
        DomainClassifier(model=str(deberta_dir), device="cpu", filter_by=wanted)]))
    rows = _read_output(spark, out)
    expected = {f"d{i}" for i, p in enumerate(preds) if p in wanted}
    assert set(rows) == expected and all(r["domain_pred"] in wanted for r in rows.values())
    assert summary["filtered_records"] == len(sample_texts) - len(expected)
    assert sum(summary["by_label"]["domain"].values()) == len(sample_texts)


def test_rerun_replaces_without_duplicates(spark, nested_input, deberta_dir, tmp_path):
    out = tmp_path / "rerun"
    opts = JobOptions(input=str(nested_input), output=str(out),
                      classifiers=[DomainClassifier(model=str(deberta_dir), device="cpu")])
    run(spark, opts)
    first = sorted(_read_output(spark, out))
    run(spark, opts)
    assert sorted(_read_output(spark, out)) == first
    assert spark.read.json(str(out)).count() == len(first)


def test_mirror_layout_one_file_per_input(spark, nested_input, deberta_dir, tmp_path, sample_texts):
    out = tmp_path / "mirror"
    run(spark, JobOptions(input=str(nested_input), output=str(out), layout="mirror",
                          classifiers=[DomainClassifier(model=str(deberta_dir), device="cpu")]))
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.jsonl"))
    assert files == ["a/part.jsonl", "b/c/more.jsonl", "b/part.jsonl"]
    lines = [json.loads(line) for f in files for line in (out / f).read_text().splitlines()]
    assert len(lines) == len(sample_texts)
    assert not (out / "_staging").exists()


def test_dataframe_api(spark, nested_input, deberta_dir):
    from sparkcurate.io.sources.jsonl import read_jsonl

    df = read_jsonl(spark, str(nested_input))
    out = DomainClassifier(model=str(deberta_dir), device="cpu")(df)
    assert "domain_pred" in out.columns and out.count() == df.count()


def test_stats_accumulator_adds_sums_and_keeps_maxima():
    from sparkcurate.spark.stage import StatsParam

    param = StatsParam()
    total = param.zero({})
    for task in ({"tasks": 1, "task_s": 2.0, "task_s_max": 2.0}, {"tasks": 1, "task_s": 5.0, "task_s_max": 5.0},
                 {"tasks": 1, "task_s": 1.0, "task_s_max": 1.0}):
        total = param.addInPlace(total, task)
    assert total == {"tasks": 3, "task_s": 8.0, "task_s_max": 5.0}


def test_count_rows_in_one_job_equals_separate_group_bys(spark):
    """The counts (partitions counted in their tasks, added up on the driver) equal plain per-kind group-bys
    (labels and histograms of classified rows only), from one job of one stage."""
    import random
    from types import SimpleNamespace

    from pyspark.sql import functions as F

    from sparkcurate.io.sources import REASON_COLUMN
    from sparkcurate.report.summary import HISTOGRAM_BINS, count_rows
    from sparkcurate.spark.outcome import STATUS_COLUMN
    from sparkcurate.spark.stage import confidence_column

    clfs = [SimpleNamespace(name="domain", pred_column="domain_pred"),
            SimpleNamespace(name="fineweb-edu", pred_column="fineweb-edu-score-int")]
    rng = random.Random(7)
    rows = []
    for i in range(500):
        status = rng.choice(["kept", "kept", "filtered", "rejected"])
        rejected = status == "rejected"
        rows.append((f"dir/f{i % 4}.jsonl", status, rng.choice(["malformed_json", "text_empty"]) if rejected else None,
                     None if rejected else rng.choice(["News", "Sports", None]),
                     None if rejected else rng.randint(0, 5),
                     None if rejected else rng.choice([rng.random(), 1.0, 0.0, None]),
                     None if rejected else rng.random()))
    df = spark.createDataFrame(spark.sparkContext.parallelize(rows, 3),
                               f"file_name string, {STATUS_COLUMN} string, {REASON_COLUMN} string, "
                               f"domain_pred string, `fineweb-edu-score-int` long, "
                               f"{confidence_column(clfs[0])} float, {confidence_column(clfs[1])} float")
    df = df.persist()
    assert df.count() == 500 and df.rdd.getNumPartitions() == 3
    sc = spark.sparkContext
    group = "test-count-rows"
    sc.setJobGroup(group, group)
    try:
        got = count_rows(df, clfs, "file_name")
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    jobs = sc.statusTracker().getJobIdsForGroup(group)
    assert len(jobs) == 1 and len(sc.statusTracker().getJobInfo(jobs[0]).stageIds) == 1

    want_status = sorted((r[0], r[1], r[2], r[3]) for r in
                         df.groupBy("file_name", STATUS_COLUMN, REASON_COLUMN).count().collect())
    assert sorted(got.by_status_file, key=str) == sorted(want_status, key=str)
    classified = df.filter(F.col(STATUS_COLUMN) != "rejected")
    for c in clfs:
        want = [(r[0], r[1], r[2], r[3]) for r in classified.groupBy(
            "file_name", F.col(f"`{c.pred_column}`").cast("string"), STATUS_COLUMN).count().collect()]
        assert sorted(got.labels[c.name], key=str) == sorted(want, key=str)
        conf = [r[0] for r in classified.select(confidence_column(c)).collect() if r[0] is not None]
        hist = [0] * HISTOGRAM_BINS
        for v in conf:
            hist[min(int(v * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)] += 1
        assert got.histograms[c.name] == hist and sum(hist) == len(conf)


def test_local_path_only_for_the_local_file_system(tmp_path):
    from sparkcurate.io.fs import local_path

    assert local_path(str(tmp_path)) == tmp_path and local_path("rel/out") == Path("rel/out")
    assert local_path(f"file://{tmp_path}") == tmp_path and local_path("file:/x/y") == Path("/x/y")
    assert all(local_path(u) is None for u in ("s3a://bucket/x", "s3://b/x", "hdfs://nn:8020/x", "gs://b/x",
                                               "abfss://c@a.dfs.core.windows.net/x", "file://otherhost/x"))
