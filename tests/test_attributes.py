"""Attribute files (``--output-mode attributes``): a key and the predictions of every input record, by
``file_name``, so a join with the input gives every record exactly one attribute row and none extra.

The corpus is the repository's samples/web plus generated files with duplicate ids, malformed and blank lines,
read with tiny input splits, so files are cut into many splits packed together in tasks (the record positions
must survive that), and the join is made here from the input files themselves (plain Python), not from Spark.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from sparkcurate.pipeline import JobOptions, run
from tests.conftest import SAMPLES
from tests.test_bad_input import LengthClassifier


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("attr") / "in"
    shutil.copytree(SAMPLES, root / "web")
    big = []
    for i in range(3000):
        text = "x" * (i % 11)  # "long" (more than 5 characters) depends on the line
        big.append(json.dumps({"id": f"d{i % 1000}", "text": text, "pad": "p" * (i % 37)}))
        if i % 97 == 0:
            big.append("{broken line")
        if i % 131 == 0:
            big.append("")  # blank lines are not records
    _write(root / "gen" / "big.jsonl", big)
    _write(root / "gen" / "dups.jsonl", ['{"text": "same text"}'] * 50 + ['{"text": ""}', "[1, 2]"])
    # every record rejected: its attribute rows must still be written (and survive the clean-up of stale outputs)
    _write(root / "gen" / "all_bad.jsonl", ["{bad", "[]", '{"text": ""}', '{"id": "no text"}'])
    return root


def _input_records(root: Path) -> dict[tuple[str, int], tuple[str | None, str | None]]:
    """(file_name, record) -> (expected prediction, expected reject reason), from the files, in plain Python:
    records are the non-blank lines, numbered from 1 in file order."""
    want = {}
    for path in sorted(root.rglob("*.jsonl")):
        n = 0
        for line in path.read_text(encoding="utf-8").split("\n"):
            if not line.strip():
                continue
            n += 1
            try:
                value = json.loads(line)
            except ValueError:
                value = None
            if not isinstance(value, dict):
                want[(str(path.relative_to(root)), n)] = (None, "malformed_json")
            elif value.get("text") is None:
                want[(str(path.relative_to(root)), n)] = (None, "text_missing")
            elif not value["text"].strip():
                want[(str(path.relative_to(root)), n)] = (None, "text_empty")
            else:
                want[(str(path.relative_to(root)), n)] = ("long" if len(value["text"]) > 5 else "short", None)
    return want


def _attribute_rows(out: Path) -> list[dict]:
    from urllib.parse import unquote

    rows = []
    for part in sorted(out.glob("file_name=*/part-*.json")):
        name = unquote(part.parent.name.split("=", 1)[1])
        rows.extend({**json.loads(line), "file_name": name} for line in part.read_text(encoding="utf-8").splitlines())
    return rows


@pytest.fixture
def tiny_splits(spark):
    """Spark's own splitting with 16 KB splits (the job keeps a user's minPartitionNum): big.jsonl is cut in
    several splits and small files share tasks."""
    keys = {"spark.sql.files.maxPartitionBytes": "16384", "spark.sql.files.minPartitionNum": "1",
            "spark.sql.files.openCostInBytes": "1024"}
    before = {k: spark.conf.get(k, None) for k in keys}
    for k, v in keys.items():
        spark.conf.set(k, v)
    yield
    for k, v in before.items():
        spark.conf.unset(k) if v is None else spark.conf.set(k, v)


@pytest.mark.slow
def test_join_on_the_key_gives_every_input_record_exactly_once(spark, corpus, tmp_path, tiny_splits):
    out = tmp_path / "out"
    opts = JobOptions(input=str(corpus), output=str(out), output_mode="attributes", report=False,
                      classifiers=[LengthClassifier(device="cpu")])
    run(spark, opts)
    summary = run(spark, opts)  # a re-run replaces, never adds
    want = _input_records(corpus)
    rows = _attribute_rows(out)
    assert summary["attribute_key"] == ["file_name", "record"]  # ids repeat in big.jsonl, samples have none
    keys = Counter((r["file_name"], r["record"]) for r in rows)
    assert set(keys) == set(want) and set(keys.values()) == {1}  # every input record once, none extra
    got = {(r["file_name"], r["record"]): (r["length_pred"], r["reason"]) for r in rows}
    assert got == want  # and each row is that record's (positions kept across splits)
    assert set(rows[0]) == {"file_name", "record", "length_pred", "reason"}
    assert summary["input_records"] == len(want) and summary["output_mode"] == "attributes"


def _parsable(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def test_unique_ids_are_the_key(spark, corpus, tmp_path):
    """The samples' lines that parse (a malformed line has no id one could join on; the run above shows the
    samples as they are fall back to the record position): ids unique in each file, rejects included."""
    src = tmp_path / "in"
    for path in (corpus / "web").rglob("*.jsonl"):
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if _parsable(line)]
        _write(src / path.relative_to(corpus / "web"), lines)
    out = tmp_path / "out"
    summary = run(spark, JobOptions(input=str(src), output=str(out), output_mode="attributes", report=False,
                                    classifiers=[LengthClassifier(device="cpu")]))
    assert summary["attribute_key"] == ["file_name", "id"]
    ids = Counter((str(p.relative_to(src)), json.loads(line)["id"]) for p in src.rglob("*.jsonl")
                  for line in p.read_text(encoding="utf-8").splitlines() if line.strip())
    rows = _attribute_rows(out)
    assert Counter((r["file_name"], r["id"]) for r in rows) == ids
    assert "record" not in rows[0]


def test_attribute_files_are_smaller_than_the_records(spark, corpus, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(corpus / "web", src)
    full = run(spark, JobOptions(input=str(src), output=str(tmp_path / "full"), report=False,
                                 classifiers=[LengthClassifier(device="cpu")]))
    attrs = run(spark, JobOptions(input=str(src), output=str(tmp_path / "attrs"), output_mode="attributes",
                                  report=False, classifiers=[LengthClassifier(device="cpu")]))
    on_disk = sum(p.stat().st_size for p in (tmp_path / "attrs").glob("file_name=*/part-*"))
    assert attrs["output_bytes"] == on_disk > 0
    assert attrs["output_bytes"] * 4 < full["output_bytes"]


def test_filter_by_is_refused_with_attributes(spark, tmp_path):
    with pytest.raises(ValueError, match="filter-by does not apply"):
        run(spark, JobOptions(input=str(SAMPLES), output=str(tmp_path / "o"), output_mode="attributes",
                              classifiers=[LengthClassifier(device="cpu", filter_by=["long"])]))


def test_parquet_input_gets_record_positions(spark, tmp_path):
    """A file format other than JSONL numbers its rows the same way (the file source's positions)."""
    src = tmp_path / "in"
    rows = [(f"t{i}", "x" * (i % 9)) for i in range(40)]
    spark.createDataFrame(rows, "id string, text string").coalesce(1).write.parquet(str(src / "a"))
    out = tmp_path / "out"
    summary = run(spark, JobOptions(input=str(src), output=str(out), input_format="parquet", id_field=None,
                                    output_mode="attributes", report=False,
                                    classifiers=[LengthClassifier(device="cpu")]))
    assert summary["attribute_key"] == ["file_name", "record"]
    got = sorted((r["record"], r["length_pred"], r["reason"]) for r in _attribute_rows(out))
    want = [(i + 1, None if i % 9 == 0 else ("long" if i % 9 > 5 else "short"),
             "text_empty" if i % 9 == 0 else None) for i in range(40)]
    assert got == want
