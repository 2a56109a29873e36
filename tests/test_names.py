"""Input file names that are hard for output paths: spaces, '=', '%', '..', NFC vs NFD, 200+ characters, the same
name in two folders, characters that sanitising removes. Every input gets its own output, inside OUT, in both
layouts, and no record is lost or doubled."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

from sparkcurate.io.names import partition_safe_name, safe_relative_path
from sparkcurate.pipeline import JobOptions, run
from tests.test_bad_input import LengthClassifier

NAMES = [
    "with space.jsonl",
    "key=value.jsonl",
    "100%25 done%.jsonl",
    "..dots..jsonl",
    "a..b.jsonl",
    unicodedata.normalize("NFC", "café.jsonl"),
    unicodedata.normalize("NFD", "café.jsonl"),
    "L" * 230 + ".jsonl",
    "one/same.jsonl",
    "two/same.jsonl",
    "tab\there.jsonl",
    "tabhere.jsonl",
    "back\\slash.jsonl",
    "plus+sign [1] {x}.jsonl",
]


@pytest.fixture(scope="module")
def named_input(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("names")
    for i, name in enumerate(NAMES):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"id": f"{i}-{j}", "text": f"document {i} {j}"}) + "\n"
                                for j in range(i + 1)), encoding="utf-8")
    return root


def _inside(out: Path, path: Path) -> bool:
    return out.resolve() in path.resolve().parents


@pytest.mark.parametrize("layout", ["partitioned", "mirror"])
def test_every_name_gets_a_distinct_safe_output(spark, named_input, tmp_path, layout):
    out = tmp_path / layout
    summary = run(spark, JobOptions(input=str(named_input), output=str(out), layout=layout,
                                    classifiers=[LengthClassifier()]))
    hidden = [n for n in NAMES if n.startswith((".", "_"))]  # Spark never reads these: reported, not lost
    assert {e["file"] for e in summary["ignored_files"]} == set(hidden) == {"..dots..jsonl"}
    read = [n for n in NAMES if n not in hidden]
    expected_records = sum(i + 1 for i, n in enumerate(NAMES) if n in read)
    assert summary["input_records"] == summary["output_records"] == expected_records
    # file_name is the relative name, shortened with a hash when its partition folder would pass 255 bytes
    assert set(summary["by_file"]) == {partition_safe_name(n) for n in read}
    assert any("~" in n for n in summary["by_file"])
    data_files = [p for p in out.rglob("*") if p.is_file() and not any(
        part.startswith(("_", ".")) for part in p.relative_to(out).parts)]
    assert all(_inside(out, p) for p in data_files)
    ids_by_output: dict[str, set[str]] = {}
    for p in data_files:
        key = p.parent.name if layout == "partitioned" else p.relative_to(out).as_posix()
        ids = {json.loads(line)["id"] for line in p.read_text(encoding="utf-8").split("\n") if line}
        ids_by_output.setdefault(key, set()).update(ids)
    assert len(ids_by_output) == len(read)  # one output per input, none shared
    for ids in ids_by_output.values():
        assert len({i.split("-")[0] for i in ids}) == 1  # never two inputs in one output
    assert sum(len(v) for v in ids_by_output.values()) == expected_records
    if layout == "partitioned":
        back = {unquote(k.split("=", 1)[1]) for k in ids_by_output}
        assert back == set(summary["by_file"])
        from sparkcurate.io.sources.jsonl import read_jsonl

        assert spark.read.json(str(out)).count() == expected_records
        assert read_jsonl(spark, str(out)).count() == expected_records


@pytest.mark.parametrize("name", ["/etc/passwd", "../../escape.jsonl", "a/../../b.jsonl", "..", ".", "",
                                  "C:\\windows\\x.jsonl", "_hidden.jsonl", ".dot.jsonl", "x\x00y.jsonl",
                                  "é" * 300 + ".jsonl"])
def test_safe_relative_path_stays_inside(name, tmp_path):
    rel = safe_relative_path(name)
    assert not rel.startswith("/") and ".." not in rel.split("/")
    assert all(not part.startswith(("_", ".")) for part in rel.split("/"))
    assert all(len(part.encode()) <= 255 for part in rel.split("/"))
    assert _inside(tmp_path, tmp_path / rel)


def test_names_differing_only_in_removed_characters_stay_apart():
    pairs = [("tab\there.jsonl", "tabhere.jsonl"), ("a\x01.jsonl", "a.jsonl"), ("x/../y.jsonl", "x/_/y.jsonl"),
             ("L" * 300 + "1.jsonl", "L" * 300 + "2.jsonl")]
    for a, b in pairs:
        assert safe_relative_path(a) != safe_relative_path(b), (a, b)
