"""Every bad input of docs/reliability.md through the whole job: each record ends kept, filtered or rejected with
its reason, and the totals are checked against counts this test makes itself (from the lines it wrote), never
against the summary alone.

Most cases share one messy folder and one run with ``LengthClassifier`` (a rule, no model: fast); what depends
on a real tokenizer (special tokens, one-character and near-limit documents, a 12 MB line) runs the tiny DeBERTa.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.rule_classifier import LengthClassifier, LengthEngine  # noqa: F401 (the rule; other tests import it from here)
from sparkcurate.io.failures import InputError
from sparkcurate.pipeline import JobOptions, run
from tests.fixtures.no_spark import classify_texts

OK = "ok"  # classified: kept or filtered


# ---------------------------------------------------------------------------------------------------------------
# The messy folder: every file declares what each of its lines must become
# ---------------------------------------------------------------------------------------------------------------


def _lines(*pairs) -> tuple[bytes, list[str]]:
    """(content, outcomes) from (line, outcome...) pairs; an outcome per record the line holds."""
    data = b""
    outcomes: list[str] = []
    for line, *outs in pairs:
        data += (line.encode("utf-8") if isinstance(line, str) else line) + b"\n"
        outcomes.extend(outs)
    return data, outcomes


CASES: dict[str, tuple[bytes, list[str]]] = {
    "malformed.jsonl": _lines(('{"text": "good one"}', OK), ("{not json", "malformed_json"),
                              ('{"text": "unterminated"', "malformed_json"), ("'single quotes'", "malformed_json"),
                              ('{"text": "trailing comma",}', "malformed_json"), ('{"text": "x" "y": 1}', "malformed_json"),
                              ("}", "malformed_json")),
    # Choice: a complete object followed by junk is read as the object (Jackson stops after one value).
    "trailing.jsonl": _lines(('{"text": "complete object"} junk after it', OK)),
    "scalars.jsonl": _lines(("5", "malformed_json"), ('"a string"', "malformed_json"), ("null", "malformed_json"),
                            ("true", "malformed_json"), ('{"text": "object"}', OK)),
    # Choice: a top-level array of objects is one record per object; [] holds none; anything else is malformed.
    "arrays.jsonl": _lines(('[{"text": "array one"}, {"text": "array two"}]', OK, OK), ("[]",),
                           ("[1, 2]", "malformed_json"), ('[{"text": "mixed"}, 5]', "malformed_json")),
    # Blank and whitespace-only lines are not records.
    "blank.jsonl": _lines(('{"text": "before blank"}', OK), ("",), ("   ",), ("\t",), ('{"text": "after"}', OK)),
    # Choice: duplicate keys, the last one wins; "TEXT" is not "text" -> text_missing.
    "keys.jsonl": _lines(('{"text": "first", "text": "second wins"}', OK), ('{"TEXT": "upper case key"}', "text_missing"),
                         ('{"Text": "capitalised", "id": 1}', "text_missing")),
    "text_kinds.jsonl": _lines(('{"id": 1}', "text_missing"), ('{"text": null}', "text_missing"),
                               ('{"text": ""}', "text_empty"), ('{"text": "  \\n\\t "}', "text_empty"),
                               ('{"text": "\\u200b\\u200c\\u2060\\ufeff"}', "text_empty"),
                               ('{"text": "\\u0000\\u0001\\u001f"}', "text_empty"),
                               # Choice: a number/bool/object/array in the text field is classified as its JSON text.
                               ('{"text": 42}', OK), ('{"text": {"a": 1}}', OK), ('{"text": [1, "x"]}', OK),
                               ('{"text": true}', OK)),
    "ids.jsonl": _lines(('{"text": "no id at all"}', OK), ('{"id": null, "text": "null id"}', OK),
                        ('{"id": {"x": 1}, "text": "object id"}', OK),
                        ('{"id": 123456789012345678901234567890, "text": "huge id"}', OK),
                        ('{"id": "dup", "text": "same id 1"}', OK), ('{"id": "dup", "text": "same id 2"}', OK)),
    "utf8.jsonl": _lines(('{"text": "valid before"}', OK), (b'{"text": "bad \xff\xfe bytes"}', "invalid_utf8"),
                         (b'{"text": "overlong \xc0\xaf"}', OK),  # Jackson decodes it leniently
                         ('{"text": "valid after"}', OK)),
    "bom.jsonl": _lines((b'\xef\xbb\xbf{"text": "bom at start"}', OK), (b'\xef\xbb\xbf{"text": "bom mid-file"}', OK)),
    "crlf.jsonl": (b'{"text": "windows one"}\r\n{"text": "windows two"}\r\n', [OK, OK]),
    "unicode.jsonl": _lines(('{"text": "line\u2028sep\u2029para"}', OK), ('{"text": "lone \\ud800 surrogate"}', OK),
                            ('{"text": "pair \\ud83d\\ude00 emoji"}', OK), ('{"text": "RTL \u202e עברית"}', OK),
                            ('{"text": "e\u0301 combining"}', OK)),
    "control.jsonl": _lines((b'{"text": "raw \x00 NUL"}', "nul_bytes"), (b'{"text": "raw \x01 control"}', "malformed_json"),
                            ('{"text": "escaped \\u0000 NUL"}', OK)),
    # UTF-16: Jackson detects the encoding of each line; splitting on the newline byte leaves a NUL fragment.
    "utf16.jsonl": ('{"text": "sixteen bits"}\n{"text": "second"}\n'.encode("utf-16"), [OK, OK, "nul_bytes"]),
    "empty.jsonl": (b"", []),
    "all_rejected.jsonl": _lines(("{bad", "malformed_json"), ('{"text": ""}', "text_empty"), ('{"x": 1}', "text_missing")),
    "deep/er/nested.jsonl": _lines(('{"text": "nested file"}', OK)),
    "gz/part.jsonl.gz": (gzip.compress(b'{"text": "gzipped one"}\n{broken\n'), [OK, "malformed_json"]),
}


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("messy")
    for name, (data, _) in CASES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "empty_dir" / "inner_empty").mkdir(parents=True)
    (root / "README.txt").write_text("not data")
    (root / "_SUCCESS").write_text("")
    (root / ".hidden.jsonl").write_text('{"text": "hidden"}\n')
    return root


@pytest.fixture(scope="module")
def messy_run(spark, messy, tmp_path_factory):
    out = tmp_path_factory.mktemp("messy_out") / "out"
    summary = run(spark, JobOptions(input=str(messy), output=str(out), classifiers=[
        LengthClassifier(filter_by=["long"], device="cpu")]))
    return out, summary


def _python_records(data: bytes) -> int:
    """Records in a file counted by plain Python: non-blank lines, a JSON array counting its objects."""
    n = 0
    for raw in data.split(b"\n"):
        line = raw.strip(b"\r \t")
        if not line:
            continue
        try:
            value = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            n += 1
            continue
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            n += len(value)
        elif isinstance(value, list) and not value:
            continue
        else:
            n += 1
    return n


def _rejects(out: Path) -> list[dict]:
    return [json.loads(line) for p in sorted((out / "_rejects").glob("*.json")) for line in p.read_text(encoding="utf-8").split("\n") if line]


def _output(out: Path) -> list[dict]:
    from urllib.parse import unquote

    rows = []
    for p in out.glob("file_name=*/*.json"):
        name = unquote(p.parent.name.split("=", 1)[1])
        rows.extend({**json.loads(line), "file_name": name}
                    for line in p.read_text(encoding="utf-8").split("\n") if line)
    return rows


def test_totals_match_an_independent_count(messy_run):
    out, summary = messy_run
    declared = sum(len(outs) for _, outs in CASES.values())
    plain = {name: _python_records(gzip.decompress(d) if name.endswith(".gz") else d) for name, (d, _) in CASES.items()}
    plain["utf16.jsonl"] = 3  # two records and the NUL fragment the newline split leaves (see CASES)
    assert sum(plain.values()) == declared
    assert summary["input_records"] == declared
    assert summary["input_records"] == (summary["output_records"] + summary["filtered_records"]
                                        + summary["rejected_records"])
    assert len(_output(out)) == summary["output_records"]
    assert len(_rejects(out)) == summary["rejected_records"]
    assert summary["rejected_records"] == sum(o != OK for _, outs in CASES.values() for o in outs)
    on_disk = json.loads((out / "_summary.json").read_text())
    assert on_disk["input_records"] == declared and not (out / "_RUNNING.json").exists()


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_file_ends_as_declared(messy_run, name):
    out, summary = messy_run
    _, outcomes = CASES[name]
    entry = summary["by_file"][name]
    assert entry["input"] == len(outcomes)
    assert entry["output"] + entry["filtered"] == outcomes.count(OK)
    got = Counter(r["reason"] for r in _rejects(out) if r["file_name"] == name)
    assert got == Counter(o for o in outcomes if o != OK)
    kept = [r for r in _output(out) if r["file_name"] == name]
    assert len(kept) == entry["output"] and all(r["length_pred"] == "long" for r in kept)


def test_rejects_carry_reason_file_and_original(messy_run):
    out, _ = messy_run
    rejects = _rejects(out)
    assert all(r["reason"] and r["file_name"] in CASES for r in rejects)
    for r in rejects:
        if r["reason"] in ("malformed_json", "invalid_utf8", "nul_bytes"):
            assert r.get("line"), r  # the raw line
        else:
            assert r.get("record") is not None, r  # the parsed record
    assert any(r.get("line") == "{not json" for r in rejects)
    assert any((r.get("record") or {}).get("id") == "1" for r in rejects if r["reason"] == "text_missing")


def test_values_survive_as_read(messy_run):
    out, _ = messy_run
    texts = {r["text"] for r in _output(out)}
    assert {"second wins", "bom at start", "bom mid-file", "windows one", "line\u2028sep\u2029para",
            "pair \U0001F600 emoji", "escaped \x00 NUL", "sixteen bits"} <= texts
    # An object in the text field: Spark 4 keeps its JSON text as written, Spark 3.5 re-writes it compactly.
    import pyspark

    assert ('{"a": 1}' if int(pyspark.__version__.split(".")[0]) >= 4 else '{"a":1}') in texts
    assert "lone ? surrogate" in texts  # Java's UTF-8 encoder writes an escaped lone surrogate as '?'
    assert not any(t.startswith("\ufeff") for t in texts)


def test_files_not_read_are_reported(messy_run):
    _, summary = messy_run
    ignored = {e["file"] for e in summary["ignored_files"]}
    assert {"README.txt", "_SUCCESS", ".hidden.jsonl"} <= ignored
    assert summary["empty_files"] == ["empty.jsonl"]
    assert "all_rejected.jsonl" in summary["by_file"] and summary["by_file"]["all_rejected.jsonl"]["output"] == 0


def test_python_run_writes_the_report(messy_run):
    """``run`` itself writes OUT/_report/index.html (the README's "rejects, summary and report"), not only the CLI."""
    out, summary = messy_run
    page = (out / "_report" / "index.html").read_text(encoding="utf-8")
    assert "all_rejected.jsonl" in page and f"{summary['input_records']:,}" in page


def test_python_run_without_report(spark, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"text": "one"}\n', encoding="utf-8")
    out = tmp_path / "out"
    run(spark, JobOptions(input=str(tmp_path / "in"), output=str(out), classifiers=[LengthClassifier()],
                          report=False))
    assert (out / "_summary.json").is_file() and not (out / "_report").exists()


def test_read_jsonl_leaves_out_only_rejects(spark, messy):
    from sparkcurate.io.sources.jsonl import read_jsonl

    df = read_jsonl(spark, str(messy))
    assert df.count() == sum(o == OK for _, outs in CASES.values() for o in outs)


def test_empty_input_directory_is_a_normal_run(spark, tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "e.jsonl").write_bytes(b"")
    out = tmp_path / "out"
    summary = run(spark, JobOptions(input=str(tmp_path / "in"), output=str(out), classifiers=[LengthClassifier()]))
    assert (summary["input_records"], summary["output_records"], summary["rejected_records"]) == (0, 0, 0)
    assert json.loads((out / "_summary.json").read_text())["empty_files"] == ["e.jsonl"]


def test_missing_input_is_a_clear_error(spark, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        run(spark, JobOptions(input=str(tmp_path / "nope"), output=str(tmp_path / "o"),
                              classifiers=[LengthClassifier()]))


# ---------------------------------------------------------------------------------------------------------------
# Compressed files: truncated .gz fails clearly and writes nothing; .zst needs Hadoop's native library
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hadoop_reads_zstd(spark, tmp_path_factory) -> bool:
    """Whether this Spark's Hadoop decompresses .zst: Spark 4 does; Spark 3.5's Hadoop 3.3 needs a native
    libhadoop built with zstd (pip's pyspark 3.5 has none)."""
    import pyspark

    path = tmp_path_factory.mktemp("zstd_probe") / "probe.jsonl.zst"
    path.write_bytes(_zstd(b'{"text": "probe"}\n', path.parent))
    try:
        reads = spark.read.text(str(path)).count() == 1
    except Exception:
        reads = False
    assert reads or int(pyspark.__version__.split(".")[0]) < 4, "Spark 4 must read .zst without native Hadoop"
    return reads


def _codec_failure(suffix: str, reads_zstd: bool) -> str:
    """What a run that cannot read a ``suffix`` file must say: why (the file name is checked by the caller)."""
    return "zstd" if suffix == ".zst" and not reads_zstd else "truncated"


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_truncated_compressed_file_fails_naming_the_file_and_keeps_old_output(spark, tmp_path, suffix,
                                                                             hadoop_reads_zstd):
    src = tmp_path / "in"
    src.mkdir()
    (src / "good.jsonl").write_text('{"text": "a good document"}\n' * 5)
    out = tmp_path / "out"
    first = run(spark, JobOptions(input=str(src), output=str(out), classifiers=[LengthClassifier()]))
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    data = b'{"text": "compressed document"}\n' * 3000 + b"".join(b'{"text": "%d"}\n' % i for i in range(5000))
    whole = gzip.compress(data) if suffix == ".gz" else _zstd(data, tmp_path)
    (src / f"cut.jsonl{suffix}").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=rf"cut\.jsonl\{suffix}.*{_codec_failure(suffix, hadoop_reads_zstd)}"):
        run(spark, JobOptions(input=str(src), output=str(out), classifiers=[LengthClassifier()]))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == before
    assert json.loads((out / "_summary.json").read_text())["input_records"] == first["input_records"] == 5
    assert not (out / "_RUNNING.json").exists()


def _zstd(data: bytes, tmp: Path) -> bytes:
    """zstd-compressed bytes, from the zstd command (CI images have it) or the zstandard package."""
    import shutil
    import subprocess

    if shutil.which("zstd"):
        return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout
    zstd = pytest.importorskip("zstandard")
    return zstd.ZstdCompressor().compress(data)


def test_zstd_file_is_read_or_fails_clearly(spark, tmp_path, hadoop_reads_zstd):
    src = tmp_path / "in"
    src.mkdir()
    (src / "z.jsonl.zst").write_bytes(_zstd(b'{"text": "zstd document"}\n' * 4, tmp_path))
    options = JobOptions(input=str(src), output=str(tmp_path / "out"), classifiers=[LengthClassifier()])
    if not hadoop_reads_zstd:  # Spark 3.5 without native zstd: the run names the file and says why
        with pytest.raises(InputError, match=r"z\.jsonl\.zst: this Spark's Hadoop cannot decompress zstd"):
            run(spark, options)
        return
    summary = run(spark, options)
    assert summary["input_records"] == summary["output_records"] == 4


# Spark 3.5's codec failure names no file ("Lost task ... java.io.EOFException: Unexpected end of input stream" with
# a Hadoop codec in the trace); these run the driver-side search on any Spark, so Spark 4 tests it too.
_SPARK35_EOF = ("An error occurred while calling o233.json.\n: org.apache.spark.SparkException: Job aborted due to "
                "stage failure: Lost task 0.0 in stage 27.0: java.io.EOFException: Unexpected end of input stream\n"
                "\tat org.apache.hadoop.io.compress.DecompressorStream.decompress(DecompressorStream.java:165)")


def _two_gz_inputs(spark, tmp_path):
    from sparkcurate.io.sources.jsonl import JsonlSource

    src = tmp_path / "in"
    src.mkdir()
    (src / "a-good.jsonl.gz").write_bytes(gzip.compress(b'{"text": "fine"}\n' * 100))
    whole = gzip.compress(b"".join(b'{"text": "%d"}\n' % i for i in range(20000)))
    (src / "b-cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    (src / "c-plain.jsonl").write_text('{"text": "plain"}\n')
    return JsonlSource().list_files(spark, str(src))


def test_codec_failure_without_a_file_name_is_traced_to_the_file(spark, tmp_path):
    from sparkcurate.io.failures import explain_failure

    listing = _two_gz_inputs(spark, tmp_path)
    error = explain_failure(RuntimeError(_SPARK35_EOF), spark, listing)
    assert isinstance(error, InputError)
    assert "b-cut.jsonl.gz: it is truncated" in str(error) and "a-good" not in str(error)
    assert explain_failure(RuntimeError(_SPARK35_EOF)) is None  # no listing: nothing to check


def test_codec_failure_past_the_check_budget_says_so(spark, tmp_path, monkeypatch):
    import sparkcurate.io.failures as failures
    from sparkcurate.io.failures import explain_failure

    listing = _two_gz_inputs(spark, tmp_path)
    assert failures.find_undecodable_file(spark, listing.files, max_bytes=1) == (None, False)
    monkeypatch.setattr(failures, "PROBE_MAX_BYTES", 1)
    error = explain_failure(RuntimeError(_SPARK35_EOF), spark, listing)
    assert isinstance(error, InputError) and "one of the 2 compressed input files" in str(error)


def test_codec_failure_where_every_file_decompresses_is_not_blamed_on_the_input(spark, tmp_path):
    from sparkcurate.io.failures import explain_failure
    from sparkcurate.io.sources.jsonl import JsonlSource

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ok.jsonl.gz").write_bytes(gzip.compress(b'{"text": "fine"}\n'))
    listing = JsonlSource().list_files(spark, str(tmp_path / "in"))
    assert explain_failure(RuntimeError(_SPARK35_EOF), spark, listing) is None


@pytest.mark.parametrize("message", [
    "[PATH_NOT_FOUND] Path does not exist: file:/data/in/goes.jsonl.",  # Spark 3.5
    "[PATH_NOT_FOUND] Path does not exist: file:/data/in/goes.jsonl. SQLSTATE: 42K03",  # Spark 4
])
def test_missing_path_messages_of_both_spark_versions_name_the_file(message):
    from sparkcurate.io.failures import explain_failure

    error = explain_failure(RuntimeError(message))
    assert isinstance(error, InputError) and "input file file:/data/in/goes.jsonl: it was deleted" in str(error)


# ---------------------------------------------------------------------------------------------------------------
# Files that vanish between listing and reading
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["after_listing", "after_spark_listing"])
def test_file_deleted_mid_run_fails_clearly(spark, tmp_path, monkeypatch, when):
    from sparkcurate.io.sources.jsonl import JsonlSource

    src = tmp_path / "in"
    src.mkdir()
    (src / "stays.jsonl").write_text('{"text": "still here"}\n')
    (src / "goes.jsonl").write_text('{"text": "about to vanish"}\n')
    target = "list_files" if when == "after_listing" else "read"
    original = getattr(JsonlSource, target)

    def then_delete(*args, **kwargs):
        result = original(*args, **kwargs)
        (src / "goes.jsonl").unlink()
        return result

    monkeypatch.setattr(JsonlSource, target, then_delete)
    out = tmp_path / "out"
    with pytest.raises(InputError, match="goes.jsonl.*(deleted|moved)"):
        run(spark, JobOptions(input=str(src), output=str(out), classifiers=[LengthClassifier()]))
    assert not (out / "_summary.json").exists() and not (out / "_RUNNING.json").exists()


# ---------------------------------------------------------------------------------------------------------------
# What a real tokenizer sees: one-character and special-token documents, near-limit documents, a 12 MB line
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_odd_documents_through_the_real_model(spark, deberta_dir, tmp_path):
    from sparkcurate.classifiers import DomainClassifier

    src = tmp_path / "in"
    src.mkdir()
    docs = [{"id": f"c{i}", "text": ch} for i, ch in enumerate("a.7ü😀")]
    docs += [{"id": f"s{i}", "text": t} for i, t in enumerate(["[CLS] [SEP] [PAD] [MASK]", "[PAD]" * 600,
                                                               "[UNK][SEP][CLS]", "<s></s><pad><mask>"])]
    docs += [{"id": f"n{i}", "text": ("word%d " % i) * 330} for i in range(60)]  # ~2000 chars: at the cut
    with open(src / "docs.jsonl", "w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps(d) + "\n")
    big = "Sports news. " * (12 * 2**20 // 13)
    (src / "big.jsonl").write_text(json.dumps({"id": "big", "text": big}) + "\n")
    out = tmp_path / "out"
    clf = DomainClassifier(model=str(deberta_dir), device="cpu", prob_column="p")
    summary = run(spark, JobOptions(input=str(src), output=str(out), classifiers=[clf]))
    rows = {r["id"]: r for r in _output(out)}
    assert summary["input_records"] == len(docs) + 1 == len(rows)
    assert summary["rejected_records"] == 0
    assert all(abs(sum(r["p"]) - 1) < 1e-4 and r["domain_pred"] in clf.labels for r in rows.values())
    assert len(rows["big"]["text"]) == len(big)  # written whole; only the model's view is cut
    ref = classify_texts(clf, [big[:2000]])["domain_pred"][0]
    assert rows["big"]["domain_pred"] == ref
