"""Paths a hostile (or careless) user gives (issue 25, classes 1, 2, 4, 5): input names whose outputs would meet,
an output overlapping its input, folder links and loops under the input, and an input file named like the
files Spark hides. Each ends in a clear refusal before anything is written, or in counts that match the input.
"""

from __future__ import annotations

import gzip
import json
import unicodedata
from pathlib import Path

import pytest

from sparkcurate.cli import EXIT_USAGE, main
from sparkcurate.io.failures import InputError
from sparkcurate.io.listing import InputFile, InputListing, check_distinct_outputs, check_paths_apart, spark_skips
from sparkcurate.io.sinks.jsonl import JsonlSink
from sparkcurate.pipeline import JobOptions, run
from tests.test_bad_input import LengthClassifier


def _write(path: Path, n: int, tag: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps({"id": f"{tag}{i}", "text": f"record {tag} {i}"}) + "\n" for i in range(n))
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data.encode()))
    else:
        path.write_text(data)
    return path


def _run(spark, inp: Path | str, out: Path, **kw):
    return run(spark, JobOptions(input=str(inp), output=str(out), classifiers=[LengthClassifier()], quiet=True,
                                 report=False, **kw))


def _data_files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()
                  and not any(spark_skips(part) for part in p.relative_to(out).parts))


# --- class 1: every input gets its own output ---------------------------------------------------------------------


def _listing(*names: str) -> InputListing:
    return InputListing(root="/in", files=[InputFile(f"file:/in/{n}", n, 1) for n in names], source="/in")


def _mirror(compression=None):
    return lambda name: JsonlSink().mirror_name(name, compression)


@pytest.mark.parametrize("a, b, compression", [
    ("a.jsonl", "a.jsonl.gz", None),  # the compression suffix is dropped
    ("a.json", "a.json.bz2", None),
    ("a.jsonl.gz", "a.jsonl.zst", None),
    ("a.jsonl", "a.jsonl.gz", "gzip"),  # both a.jsonl.gz
    ("x.txt", "x.jsonl", None),  # a suffix that is not JSON becomes .jsonl
    ("x", "x.jsonl", None),
    ("a.jsonl.gz", "a.jsonl/x.jsonl", None),  # a file and a folder of one name
])
def test_mirror_names_that_meet_are_refused_naming_the_pair(a, b, compression):
    with pytest.raises(InputError) as err:
        check_distinct_outputs(_listing(a, b), _mirror(compression), "mirror")
    assert repr(a) in str(err.value) and repr(b) in str(err.value)


def test_names_differing_in_case_or_normalisation_meet_only_where_the_output_ignores_case():
    nfc, nfd = unicodedata.normalize("NFC", "café.jsonl"), unicodedata.normalize("NFD", "café.jsonl")
    target = lambda name: JsonlSink().target(None, "partitioned", "file_name", name, None)  # noqa: E731
    for pair in (("A.jsonl", "a.jsonl"), (nfc, nfd)):
        check_distinct_outputs(_listing(*pair), target, "partitioned")  # a case-sensitive store keeps both
        with pytest.raises(InputError, match="ignores case"):
            check_distinct_outputs(_listing(*pair), target, "partitioned", fold_case=True)


def test_colliding_mirror_inputs_write_nothing_and_keep_the_earlier_output(spark, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _write(inp / "a.jsonl", 10, "a")
    first = _run(spark, inp, out, layout="mirror")
    assert first["output_records"] == 10
    before = {p: (out / p).read_bytes() for p in _data_files(out)}
    _write(inp / "a.jsonl.gz", 7, "g")  # before the fix: one OUT/a.jsonl, 7 records lost, exit 0
    with pytest.raises(InputError, match="'a.jsonl' and 'a.jsonl.gz'"):
        _run(spark, inp, out, layout="mirror")
    assert {p: (out / p).read_bytes() for p in _data_files(out)} == before
    summary = _run(spark, inp, tmp_path / "out2")  # the partitioned layout keeps both names
    assert summary["output_records"] == 17 == spark.read.json(str(tmp_path / "out2")).count()


# --- class 2: output and input never overlap -----------------------------------------------------------------------


def test_overlapping_input_and_output_are_refused_both_ways(tmp_path, monkeypatch):
    inp = tmp_path / "in"
    _write(inp / "a.jsonl", 2, "a")
    (tmp_path / "link_to_in").symlink_to(inp)
    monkeypatch.chdir(tmp_path)
    overlapping = [
        (str(inp), str(inp)),  # the same folder
        (str(inp), str(inp / "out")),  # output inside the input
        (str(inp / "a.jsonl"), str(inp)),  # the input file inside the output
        (str(inp / "sub"), str(inp)),  # input inside the output
        ("in", f"file://{inp}/"),  # relative against a file: URI
        (str(inp), str(tmp_path / "link_to_in" / "out")),  # through a link
        (f"{inp}/*.jsonl", str(inp / "out")),  # a glob stands for its folder
        ("s3a://Bucket/data/", "s3://bucket/data/out"),  # one store, spelled twice
        ("hdfs://nn/data/x/../in", "hdfs://nn/data/in"),
    ]
    for a, b in overlapping:
        with pytest.raises(ValueError, match="--input|--output"):
            check_paths_apart(a, b)
        with pytest.raises(ValueError):
            check_paths_apart(b, a)
    for a, b in [(str(inp), str(tmp_path / "out")), (str(inp), str(tmp_path / "in2")),
                 ("s3a://bucket/in", "s3a://bucket/in2"), ("hdfs://a/data", "hdfs://b/data"), ("/data", "s3a://x/data")]:
        check_paths_apart(a, b)


def test_overlap_is_refused_before_anything_is_written(spark, tmp_path):
    inp = tmp_path / "in"
    _write(inp / "a.jsonl", 3, "a")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    for out in (inp, inp / "out"):  # before the fix: the mirror run replaced a.jsonl, or re-read its own output
        assert main(["classify", "--input", str(inp), "--output", str(out), "--classifier", "domain"]) == EXIT_USAGE
        with pytest.raises(ValueError, match="inside|is the input"):
            _run(spark, inp, out, layout="mirror")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before


def test_a_link_under_the_input_into_the_output_is_refused(spark, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _write(inp / "a.jsonl", 3, "a")
    _run(spark, inp, out)
    (inp / "back").symlink_to(out)
    with pytest.raises(InputError, match="through a link, inside --output"):
        _run(spark, inp, out)


# --- class 4: folder links, loops --------------------------------------------------------------------------------


def test_folder_link_loop_is_read_once(spark, tmp_path):
    inp = tmp_path / "in"
    _write(inp / "a" / "x.jsonl", 4, "x")
    (inp / "a" / "b").symlink_to(inp / "a")  # a/b -> a: before the fix, 4 records read 41 times
    (inp / "a" / "up").symlink_to(inp)  # a link to the input folder itself
    (inp / "a" / "above").symlink_to(tmp_path)  # a folder that holds the input: never walked
    summary = _run(spark, inp, tmp_path / "out")
    assert summary["input_records"] == summary["output_records"] == 4
    assert set(summary["by_file"]) == {"a/x.jsonl"}
    why = {e["file"]: e["why"] for e in summary["ignored_files"]}
    assert "loop" in why["a/b"] and "loop" in why["a/up"] and "loop" in why["a/above"]
    assert spark.read.json(str(tmp_path / "out")).count() == 4


def test_links_to_a_sibling_an_outside_folder_and_a_file_read_each_file_once(spark, tmp_path):
    inp, outside = tmp_path / "in", tmp_path / "outside"
    _write(inp / "a" / "x.jsonl", 3, "x")
    (inp / "b").symlink_to(inp / "a")  # a sibling: read once, as a/x.jsonl
    _write(outside / "y.jsonl", 5, "y")
    (inp / "ext").symlink_to(outside)  # outside the input: followed once
    (inp / "ext2").symlink_to(outside)  # ... and not twice
    (outside / "back").symlink_to(inp / "a")  # from the followed folder back into the input
    (inp / "same.jsonl").symlink_to(inp / "a" / "x.jsonl")  # a file read already
    (inp / "broken").symlink_to(tmp_path / "nowhere")
    summary = _run(spark, inp, tmp_path / "out")
    assert summary["input_records"] == summary["output_records"] == 8
    assert set(summary["by_file"]) == {"a/x.jsonl", "ext/y.jsonl"}
    why = {e["file"]: e["why"] for e in summary["ignored_files"]}
    assert set(why) == {"b", "ext2", "ext/back", "same.jsonl", "broken"}
    assert "read already" in why["b"] and "same file" in why["same.jsonl"] and "broken" in why["broken"]
    assert spark.read.json(str(tmp_path / "out")).count() == 8


# --- class 5: a named file Spark would hide ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["_x.jsonl", ".x.jsonl"])
@pytest.mark.parametrize("schema", [None, "id string, text string"])
def test_named_hidden_file_is_refused_with_the_reason(spark, tmp_path, name, schema):
    path = _write(tmp_path / "in" / name, 3, "h")
    out = tmp_path / "out"
    # before the fix: 0 records and exit 0 with --schema, a schema-inference traceback without
    with pytest.raises(InputError, match="starts with '_' or '.'"):
        _run(spark, path, out, schema=schema)
    assert not (out / "_summary.json").exists() and not (out.exists() and _data_files(out))


def test_names_follow_sparks_own_hidden_rule(spark, tmp_path):
    assert spark_skips("_x.jsonl") and spark_skips(".x") and spark_skips("x.jsonl._COPYING_")
    assert not spark_skips("_k=v.jsonl") and not spark_skips("_metadata")
    inp = tmp_path / "in"
    _write(inp / "_k=v.jsonl", 2, "p")  # Spark reads it ('=': a partition-like name); it used to be listed as not read
    _write(inp / "a.jsonl", 3, "a")
    summary = _run(spark, inp, tmp_path / "out")
    assert summary["input_records"] == summary["output_records"] == 5
    assert set(summary["by_file"]) == {"_k=v.jsonl", "a.jsonl"} and not summary["ignored_files"]


def test_partition_folder_names_are_sparks_own_with_or_without_the_jvm(spark):
    """The job names one partition folder per input file (for the collision check and the manifest); names Spark
    never escapes skip the JVM, the others ask Spark: both must be exactly what ``partitionBy`` writes."""
    from sparkcurate.io.names import partition_dir_name

    utils = spark.sparkContext._jvm.org.apache.spark.sql.catalyst.catalog.ExternalCatalogUtils
    for name in ["a.jsonl", "A-Z_09.jsonl.gz", "café.jsonl", "e\u0301.jsonl", "x/y.jsonl", "a b.jsonl", "k=v",
                 "100%.jsonl", "a+b~c.jsonl", "tab\there", "q?{[]}^'\"#:*.jsonl", "\U0001f600.jsonl"]:
        assert partition_dir_name(spark, "file_name", name) == f"file_name={utils.escapePathName(name)}", name


# --- file names without a join (issue 23): the path rule, its exceptions, the join when they are many -----------


def _names_by_rule_and_join(spark, listing: InputListing, paths: list[str]):
    """Each path's file_name through ``with_file_names`` (the rule) and through the listing joined as a table."""
    from pyspark.sql import functions as F

    from sparkcurate.io import listing as L

    df = spark.read.text([L.glob_escape(p) for p in paths])
    by_rule = {(r["p"], r["file_name"]) for r in L.with_file_names(spark, df, listing, "file_name")
               .select(F.expr(L.RECORD_PATH_SQL).alias("p"), "file_name").collect()}
    names = spark.createDataFrame([(L.canonical_path(f.path), f.file_name) for f in listing.files],
                                  "p string, n string")
    joined = {(r["p"], r["n"]) for r in df.select(F.expr(L.RECORD_PATH_SQL).alias("p")).join(names, "p").collect()}
    return by_rule, joined


@pytest.mark.parametrize("glob", [False, True])
def test_file_names_from_the_path_equal_the_listings_without_a_join(spark, tmp_path, glob):
    from sparkcurate.io.listing import list_input_files, name_rule

    src = tmp_path / "in put+%20é"
    names = ["a.jsonl", "sub dir/b+c%41.jsonl", "ü/ß €😀.jsonl", "/".join(["x" * 90] * 3) + ".jsonl",
             "q'[1]{x}.jsonl"]
    for i, n in enumerate(names):
        _write(src / n, 1, f"t{i}")
    path = str(src) + "/*" if glob else str(src)
    listing = list_input_files(spark, path, (".jsonl",), "JSON lines")
    rule = name_rule(listing)
    assert rule is not None and len(rule.exceptions) == 1  # only the name shortened to fit a partition folder
    by_rule, joined = _names_by_rule_and_join(spark, listing, [f.path for f in listing.files])
    assert by_rule == joined and len(joined) == len(listing.files)
    from sparkcurate.io.listing import glob_escape, with_file_names

    df = spark.read.text([glob_escape(f.path) for f in listing.files])
    plan = with_file_names(spark, df, listing, "file_name")._jdf.queryExecution().optimizedPlan().toString()
    assert "Join" not in plan


def test_file_names_from_whole_paths_and_many_exceptions(spark, tmp_path, monkeypatch):
    from sparkcurate.io import listing as L

    for root in ("r1", "r2"):
        for n in ("a.jsonl", "b.jsonl"):
            _write(tmp_path / root / "in" / n, 1, root)
    found = L.list_input_files(spark, str(tmp_path / "r*" / "in" / "*.jsonl"), (".jsonl",), "JSON lines")
    # The names a glob over several roots gets when relative names meet (list_input_files): whole paths.
    whole = L.InputListing(root=found.root, source=found.source, files=[
        L.InputFile(f.path, L.canonical_path(f.path).lstrip("/"), f.size) for f in found.files])
    assert L.name_rule(whole) == L.NameRule(None)
    by_rule, joined = _names_by_rule_and_join(spark, whole, [f.path for f in whole.files])
    assert by_rule == joined and len(joined) == 4
    renamed = L.InputListing(root=found.root, source=found.source, files=[
        L.InputFile(f.path, f"n{i}", f.size) for i, f in enumerate(found.files)])
    monkeypatch.setattr(L, "MAX_NAME_EXCEPTIONS", 3)  # four names no rule gives: the listing is joined
    assert L.name_rule(renamed) is None
    by_join, joined = _names_by_rule_and_join(spark, renamed, [f.path for f in renamed.files])
    assert by_join == joined and {n for _, n in joined} == {"n0", "n1", "n2", "n3"}
    monkeypatch.setattr(L, "MAX_NAME_EXCEPTIONS", 4)
    assert len(L.name_rule(renamed).exceptions) == 4
    by_rule, _ = _names_by_rule_and_join(spark, renamed, [f.path for f in renamed.files])
    assert by_rule == joined
