"""JSONL kept byte for byte (``--jsonl-mode exact``): every kept output line is its input line, with only the
prediction fields appended before the closing brace; nothing else changes, no field appears that the record did
not have. Checked on hostile JSON (big integers, odd floats, escapes and raw UTF-8, nested objects of different
shapes, duplicate keys, a 5 MB line, CRLF, a BOM, whitespace), with the rejects keeping their original line.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from sparkcurate.pipeline import JobOptions, run
from tests.test_bad_input import LengthClassifier

LONG_TEXT = ("word " * 1_100_000).strip()  # about 5.5 MB on one line

# Lines that are records: each must come back as itself + ,"length_pred":"...".
KEPT = [
    '{"text": "big integers", "a": 18446744073709551617, "b": -9223372036854775808, '
    '"c": 123456789012345678901234567890}',
    '{"text": "odd floats", "f": 1e-320, "g": 1.10, "h": -0.0, "i": 1E+2, "j": 0.1000000000000000055511151231257827}',
    '{"text": "caf\\u00e9 \\ud83d\\ude00 escapes", "esc": "\\"\\\\\\/\\b\\f\\n\\r\\t", "u": "\\u0041\\u00E9"}',
    '{"text": "raw UTF-8: café 😀 日本語 עברית", "raw": "ü\u2028"}',
    '{"meta": {"a": [1, {"b": null}], "c": {}}, "text": "nested one"}',
    '{"meta": [1, "two", [3]], "text": "nested two", "extra": true}',
    '{"meta": "a string now", "text": "nested three"}',
    '{"text": "first value", "text": "second value wins", "id": 1, "id": 2}',
    '  {  "text" : "spaces around"  ,  "k" : [ 1 , 2 ]  }',
    '\t{"text":\t"tabs inside"\t}',
    '{"text":"no spaces at all","n":-0}',
    '{"": "empty key", "text": "an empty key"}',
    '{"text": "not a number", "v": NaN}',
    '{"text": 42}',  # a non-string text is classified as its JSON text, as Spark's reader does (reliability.md)
    json.dumps({"id": "long", "text": LONG_TEXT}),
]
# Lines that are not records, and why (their original line goes to OUT/_rejects).
REJECTED = [
    ('{not json', "malformed_json"),
    ('[{"text": "an array of objects"}]', "malformed_json"),
    ('5', "malformed_json"),
    ('"a string"', "malformed_json"),
    ('{"text": "complete object"} junk after it', "malformed_json"),
    ('{"text": "two objects"}{"text": "on one line"}', "malformed_json"),
    ('{"text": "x"}] [{"other": 1}', "malformed_json"),
    ('{"text": "trailing comma",}', "malformed_json"),
    ("{'text': 'single quotes'}", "malformed_json"),
    ('{"text": "raw \x01 control"}', "malformed_json"),
    ('{"text": "last brace missing"', "malformed_json"),
    ('{"text": "a \\u0000sparkcurate_end marker", "\\u0000sparkcurate_end": 1} {"b": 1}', "malformed_json"),
    ('{}', "text_missing"),
    ('{ }', "text_missing"),
    ('{"id": 7}', "text_missing"),
    ('{"TEXT": "upper case key"}', "text_missing"),
    ('{"text": null}', "text_missing"),
    ('{"text": "   "}', "text_empty"),
    ('{"text": "raw \x00 NUL"}', "nul_bytes"),
]
BAD_UTF8 = b'{"text": "bad \xff\xfe bytes"}'


def _body(line: str) -> str:
    """The part of the line the output keeps: a leading BOM and trailing whitespace are not part of it."""
    return line.lstrip("\ufeff").rstrip(" \t\r\n")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    (root / "in" / "sub").mkdir(parents=True)
    lines = KEPT + [line for line, _ in REJECTED]
    (root / "in" / "lf.jsonl").write_bytes(("\n".join(lines) + "\n\n   \n").encode("utf-8") + BAD_UTF8 + b"\n")
    # CRLF line ends, a BOM at the file start, trailing blanks, no newline at the end
    crlf = ['{"text": "crlf one", "k": 1}', '{"text": "crlf two"}  ', '{"text": "crlf three", "z": [] }']
    (root / "in" / "sub" / "crlf.jsonl").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(crlf).encode("utf-8"))
    return root


def _pairs(line: str) -> list:
    return json.loads(line, object_pairs_hook=list)


def _output_lines(out: Path, pattern: str = "file_name=*/part-*.json") -> dict[str, list[str]]:
    from urllib.parse import unquote

    found: dict[str, list[str]] = {}
    for part in sorted(out.glob(pattern)):
        name = unquote(part.parent.name.split("=", 1)[1])
        found.setdefault(name, []).extend(part.read_bytes().decode("utf-8").split("\n")[:-1])
    return found


@pytest.fixture(scope="module")
def exact_run(spark, hostile, tmp_path_factory):
    out = tmp_path_factory.mktemp("exact") / "out"
    summary = run(spark, JobOptions(input=str(hostile / "in"), output=str(out), jsonl_mode="exact", report=False,
                                    classifiers=[LengthClassifier(device="cpu")]))
    return out, summary


def _expected(line: str) -> str:
    text = dict(_pairs(_body(line)))["text"]  # the last "text" wins (Python, Jackson and Spark alike)
    text = text if isinstance(text, str) else json.dumps(text)
    pred = "long" if len(text) > 5 else "short"
    return _body(line)[:-1] + f',"length_pred":"{pred}"}}'


def test_every_kept_line_is_its_input_line_with_the_prediction_appended(exact_run):
    out, summary = exact_run
    got = _output_lines(out)
    crlf = ['{"text": "crlf one", "k": 1}', '{"text": "crlf two"}  ', '{"text": "crlf three", "z": [] }']
    assert sorted(got["lf.jsonl"]) == sorted(_expected(line) for line in KEPT)
    assert sorted(got["sub/crlf.jsonl"]) == sorted(_expected(line) for line in crlf)
    for lines in got.values():
        for line in lines:
            pairs = _pairs(line)
            assert pairs[-1][0] == "length_pred" and [k for k, _ in pairs].count("length_pred") == 1
    assert summary["output_records"] == len(KEPT) + 3 and summary["jsonl_mode"] == "exact"


def test_the_parsed_records_equal_the_input_records_plus_the_prediction(exact_run):
    out, _ = exact_run
    by_text = {}
    for line in _output_lines(out)["lf.jsonl"]:
        pairs = _pairs(line)
        by_text[json.dumps(pairs[:-1])] = pairs[-1]
    for line in KEPT:
        assert json.dumps(_pairs(_body(line))) in by_text  # same keys, same order, same values (dupes included)
    big = json.loads(next(line for line in _output_lines(out)["lf.jsonl"] if "big integers" in line))
    assert big["a"] == 2**64 + 1 and big["b"] == -2**63 and big["c"] == 123456789012345678901234567890


def test_rejects_keep_their_original_line_and_reason(exact_run):
    out, summary = exact_run
    rejects = [json.loads(line) for p in sorted((out / "_rejects").glob("*.json"))
               for line in p.read_text(encoding="utf-8").splitlines()]
    got = sorted((r["line"], r["reason"]) for r in rejects if r["reason"] != "invalid_utf8")
    assert got == sorted(REJECTED)
    assert [r["reason"] for r in rejects].count("invalid_utf8") == 1
    assert all(r["file_name"] == "lf.jsonl" and r.get("record") is None for r in rejects)
    assert summary["rejected_records"] == len(REJECTED) + 1
    assert summary["input_records"] == summary["output_records"] + summary["filtered_records"] + len(rejects)


def test_mirror_layout_and_gzip_keep_lines_too(spark, hostile, tmp_path):
    out = tmp_path / "out"
    run(spark, JobOptions(input=str(hostile / "in"), output=str(out), jsonl_mode="exact", layout="mirror",
                          compression="gzip", report=False, classifiers=[LengthClassifier(device="cpu")]))
    lines = gzip.decompress((out / "sub" / "crlf.jsonl.gz").read_bytes()).decode("utf-8").split("\n")[:-1]
    assert lines == [_expected(line) for line in ['{"text": "crlf one", "k": 1}', '{"text": "crlf two"}',
                                                  '{"text": "crlf three", "z": [] }']]


def test_filtered_lines_are_left_out_and_counted(spark, hostile, tmp_path):
    out = tmp_path / "out"
    summary = run(spark, JobOptions(input=str(hostile / "in" / "sub"), output=str(out), jsonl_mode="exact",
                                    report=False, classifiers=[LengthClassifier(device="cpu", filter_by=["long"])]))
    assert summary["output_records"] == 3 and summary["filtered_records"] == 0  # "crlf one" etc. are long
    summary = run(spark, JobOptions(input=str(hostile / "in" / "sub"), output=str(out), jsonl_mode="exact",
                                    report=False, classifiers=[LengthClassifier(device="cpu", filter_by=["short"])]))
    assert summary["output_records"] == 0 and summary["filtered_records"] == 3
    assert not list(out.glob("file_name=*"))  # a re-run that keeps nothing removes the earlier output


def test_reserialize_stays_the_default(spark, hostile, tmp_path):
    """The parsed-record path is the default: it reads what exact mode refuses (arrays of objects, trailing
    junk; docs/reliability.md), so switching is the user's choice (docs/formats.md)."""
    summary = run(spark, JobOptions(input=str(hostile / "in" / "sub"), output=str(tmp_path / "o"), report=False,
                                    classifiers=[LengthClassifier(device="cpu")]))
    assert summary["jsonl_mode"] == "reserialize"
    line = _output_lines(tmp_path / "o")["crlf.jsonl"][0]
    assert "length_pred" in json.loads(line) and not line.startswith('{"text": ')  # re-serialized by Spark


@pytest.mark.parametrize("arrow", [True, False], ids=["arrow_udf", "pandas_udf"])
def test_lines_stay_in_the_jvm_only_the_text_goes_to_python(spark, hostile, arrow, monkeypatch):
    """A source read line by line holds each record twice (the line and its text): the classify stage sends
    Python the text alone (a column-level UDF, not mapInArrow, which would move the line there and back), and
    gives the same predictions, each row classified once, rejects not at all. Both UDF forms (Arrow on Spark 4.1
    and later, pandas before) are run."""
    from sparkcurate.io.sources.jsonl import JsonlSource
    from sparkcurate.io.sources.base import REASON_COLUMN
    from sparkcurate.spark import stage
    from sparkcurate.spark.outcome import classified_rows

    real = stage.column_udf
    monkeypatch.setattr(stage, "column_udf", lambda fn, struct: real(fn, struct, arrow=arrow))
    source = JsonlSource()
    source.keep_lines = True
    listing = source.list_files(spark, str(hostile / "in"))
    df = source.read(spark, listing, "text", "file_name")
    clf = LengthClassifier(device="cpu")
    clf.preflight()
    counter = spark.sparkContext.accumulator(0)
    rows = classified_rows(df, [clf], counter)
    plan = rows._jdf.queryExecution().executedPlan().toString()
    assert "MapInArrow" not in plan and "ArrowEvalPython" in plan, plan
    python_input = [line for line in plan.splitlines() if "ArrowEvalPython" in line][0]
    assert "__sparkcurate_line" not in python_input, python_input  # the line is not a UDF argument
    got = rows.select("text", REASON_COLUMN, "length_pred").collect()
    assert counter.value == sum(1 for r in got if r[REASON_COLUMN] is None) == len(KEPT) + 3  # + the CRLF file
    for r in got:
        if r[REASON_COLUMN] is None:
            assert r["length_pred"] == ("long" if len(r["text"]) > 5 else "short"), r
        else:
            assert r["length_pred"] is None


def test_exact_mirror_refuses_two_inputs_on_one_output_name(spark, tmp_path):
    """The exact lines go through the mirror layout's one writer (io/sinks/mirror.py), with its check: inputs
    ``x.jsonl`` and ``x.jsonl.gz`` would both become ``x.jsonl``; the write is refused and nothing is moved (no
    input's lines silently replace the other's)."""
    from sparkcurate.io.sinks.jsonl import write_jsonl
    from sparkcurate.io.sources.base import RAW_LINE_COLUMN

    rows = [('{"text": "one"}', "x.jsonl", "short"), ('{"text": "two"}', "x.jsonl.gz", "short")]
    df = spark.createDataFrame(rows, [RAW_LINE_COLUMN, "file_name", "length_pred"])
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="'x.jsonl' and 'x.jsonl.gz' would both be written to 'x.jsonl'"):
        write_jsonl(df, str(out), layout="mirror")
    assert not out.exists() or list(out.iterdir()) == []  # the staged files are gone, nothing was moved
