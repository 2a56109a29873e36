"""The command: help, exit codes, list, and the classify job through ``main``."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparkcurate.cli import EXIT_INPUT, EXIT_MODEL, EXIT_OK, EXIT_USAGE, main, parse_filters
from tests.conftest import REPO, SAMPLES

SPARKCURATE = [sys.executable, "-m", "sparkcurate.cli"]


def _run(args, timeout=120):
    return subprocess.run(SPARKCURATE + args, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_help():
    res = _run(["--help"])
    assert res.returncode == 0 and "classify" in res.stdout and "list" in res.stdout
    res = _run(["classify", "--help"])
    assert res.returncode == 0
    for option in ("--input", "--output", "--classifier", "--filter-by", "--layout", "--device", "--conf",
                   "--master", "--prob-column", "--max-chars", "--batch-size", "--text-field", "Exit codes"):
        assert option in res.stdout, option


def test_missing_arguments_exit_2():
    res = _run(["classify", "--input", "x"])
    assert res.returncode == EXIT_USAGE and "--output" in res.stderr


def test_unknown_classifier_exit_2(tmp_path):
    assert main(["classify", "--input", str(SAMPLES), "--output", str(tmp_path), "--classifier", "nope"]) == \
        EXIT_USAGE


def test_bad_model_exits_3_in_seconds_before_spark(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    start = time.monotonic()
    res = _run(["classify", "--input", str(SAMPLES), "--output", str(tmp_path / "out"), "--classifier", "domain",
                "--model", str(tmp_path / "model")])
    assert res.returncode == EXIT_MODEL, res.stderr
    assert "model check failed" in res.stderr
    assert time.monotonic() - start < 60
    assert not (tmp_path / "out").exists()  # no Spark job, nothing written


def test_missing_input_exits_4(spark, deberta_dir, tmp_path):
    assert main(["classify", "--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out"),
                 "--classifier", f"domain={deberta_dir}"]) == EXIT_INPUT


def test_list_shows_every_classifier():
    res = _run(["list"])
    assert res.returncode == 0
    for name in ("domain", "quality", "zero-shot", "nvidia/domain-classifier", "quality_prob", "1024 tokens"):
        assert name in res.stdout, name
    rows = json.loads(_run(["list", "--json"]).stdout)
    assert {"domain", "quality", "zero-shot"} <= {r["name"] for r in rows}


def test_parse_filters():
    assert parse_filters(["News,Sports"], ["domain"]) == {"domain": ["News", "Sports"]}
    assert parse_filters(["quality:High", "domain:News"], ["domain", "quality"]) == {
        "quality": ["High"], "domain": ["News"]}
    with pytest.raises(ValueError):
        parse_filters(["other:High"], ["domain", "quality"])
    with pytest.raises(ValueError):
        parse_filters([","], ["domain"])


def test_classify_through_main(spark, deberta_dir, tmp_path, monkeypatch):
    import sparkcurate.report

    built = []
    build_report = sparkcurate.report.build_report
    monkeypatch.setattr(sparkcurate.report, "build_report",
                        lambda out_dir: built.append(out_dir) or build_report(out_dir))
    out = tmp_path / "out"
    code = main(["classify", "--input", str(SAMPLES), "--output", str(out), "--classifier", "domain",
                 "--model", str(deberta_dir), "--device", "cpu", "--prob-column", "domain_prob",
                 "--filter-by", "Finance,Sports,Science,News,Games", "--quiet"])
    assert code == EXIT_OK
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["input_records"] == 31 and summary["rejected_records"] == 3
    assert summary["output_records"] + summary["filtered_records"] == 28
    assert (out / "_report" / "index.html").exists() and len(built) == 1  # by the job, not again by the command
    rows = spark.read.json(str(out)).collect()
    assert len(rows) == summary["output_records"] and all(len(r["domain_prob"]) == 5 for r in rows)
    assert main(["report", str(out)]) == EXIT_OK


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def test_console_and_summary_show_the_same_figures(spark, deberta_dir, tmp_path, caplog):
    """The README's samples (2 files, 7,749 bytes; the test session is local[2]): the classify phase's closing
    console line shows the summary's ``classify_docs_per_s``, the job's closing line its ``docs_per_s``;
    ``input_splits`` counts data bytes (not Spark's 4 MB open cost per file) and says the waves asked, planned
    and why they differ."""
    from sparkcurate.spark.planning import human_bytes

    caplog.set_level(logging.INFO, logger="sparkcurate")
    out = tmp_path / "out"
    code = main(["classify", "--input", str(SAMPLES), "--output", str(out), "--classifier", "domain",
                 "--model", str(deberta_dir), "--device", "cpu", "--no-report"])
    assert code == EXIT_OK
    summary = json.loads((out / "_summary.json").read_text())
    lines = [r.getMessage() for r in caplog.records]
    classified = summary["output_records"] + summary["filtered_records"]

    phase = re.search(r"classify: finished, ([\d,]+) docs in \S+, ([\d,.]+) docs/s",
                      next(ln for ln in lines if ln.startswith("classify: finished")))
    assert int(_number(phase[1])) == classified == 28
    assert _number(phase[2]) == summary["classify_docs_per_s"]
    assert summary["classify_docs_per_s"] == pytest.approx(classified / summary["classify_s"], abs=0.51)
    closing = re.search(r"whole run \S+, ([\d,.]+) docs/s", next(ln for ln in lines if "input records:" in ln))
    assert _number(closing[1]) == summary["docs_per_s"]
    assert summary["docs_per_s"] == pytest.approx(classified / summary["elapsed_s"], abs=0.51)

    splits = summary["input_splits"]
    assert splits["input_bytes"] == summary["input_bytes"] == 7_749
    assert splits["task_bytes"] * splits["tasks"] == pytest.approx(7_749, abs=splits["tasks"])
    assert (splits["slots"], splits["waves_asked"], splits["waves"]) == (2, 4, 1)
    assert "too small" in splits["waves_reason"]
    split_line = next(ln for ln in lines if ln.startswith("input split"))
    assert f"about {human_bytes(splits['task_bytes'])} of data each" in split_line
    assert "wave(s) of the 4 asked: the input (7.6 KB) is too small" in split_line


@pytest.mark.slow
def test_readme_main_command_offline(tmp_path):
    """The README's main command on the shipped samples, in a fresh process: sensible labels, no hub."""
    out = tmp_path / "out"
    res = subprocess.run([str(Path(sys.executable).parent / "sparkcurate"), "classify", "--input", "samples/web", "--output", str(out),
                          "--classifier", "zero-shot", "--master", "local[2]"],
                         capture_output=True, text=True, timeout=600, cwd=REPO,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "docs/s" in res.stderr  # progress lines
    parts = [p for p in out.rglob("part-*.json") if "_rejects" not in p.parts]
    records = [json.loads(line) for p in parts for line in p.read_text().splitlines()]
    assert len(records) == 28
    right = sum(r["zero_shot_pred"].lower() == r["url"].split("/")[3] for r in records)
    assert right >= 24, f"only {right}/28 sample documents got their topic"


def test_parse_params():
    from sparkcurate.cli import parse_params

    assert parse_params(["aegis:adapter=permissive", "aegis:max_new_tokens=20"], ["aegis"]) == {
        "aegis": {"adapter": "permissive", "max_new_tokens": 20}}
    assert parse_params(["temperature=0.1"], ["zero-shot"]) == {"zero-shot": {"temperature": 0.1}}
    with pytest.raises(ValueError, match="which classifier"):
        parse_params(["x=1"], ["domain", "quality"])


def test_unknown_param_is_a_usage_error(tmp_path):
    assert main(["classify", "--input", str(SAMPLES), "--output", str(tmp_path), "--classifier", "zero-shot",
                 "--param", "nonsense=1"]) == EXIT_USAGE


INTERNAL_STATE = {"model_fingerprint": '"abc"', "preflight_info": '{"labels": ["x"]}',
                  "target_sizes": '{"task_type": 2}', "task_type_map": '{"0": "a"}'}


@pytest.mark.parametrize("key", sorted(INTERNAL_STATE))
def test_internal_state_is_no_param(key):
    """What the pre-flight sets (fingerprint, its report, the prompt model's maps) is state, not an option: a
    ``--param`` naming it is refused with the list of real options, and the Python API refuses it too."""
    from sparkcurate.classifiers import registry
    from sparkcurate.cli import build_parser, make_classifiers

    for name, cls in registry.REGISTRY.items():
        args = build_parser().parse_args(["classify", "--input", "in", "--output", "out", "--classifier", name,
                                          "--param", f"{key}={INTERNAL_STATE[key]}"])
        with pytest.raises(ValueError, match=rf"{name} has no option \['{key}'\]; options: ") as err:
            make_classifiers(args)
        assert not set(INTERNAL_STATE) & set(str(err.value).split("options: ")[1].split(", ")), name
        with pytest.raises(TypeError, match=key):
            cls(**{key: None})


def test_precision_choices_reach_the_classifier():
    from sparkcurate.cli import build_parser, make_classifiers

    args = build_parser().parse_args(["classify", "--input", "in", "--output", "out", "--classifier", "domain",
                                      "--precision", "fp16-split"])
    assert [c.precision for c in make_classifiers(args)] == ["fp16-split"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["classify", "--input", "in", "--output", "out", "--classifier", "domain",
                                   "--precision", "fp8"])


def _zero_shot_labels(labels: str) -> dict[str, list[str]]:
    """The classifier's labels and their descriptions (each label's a list: one or several descriptions)."""
    from sparkcurate.cli import build_parser, make_classifiers

    args = build_parser().parse_args(["classify", "--input", "in", "--output", "out", "--classifier", "zero-shot",
                                      "--labels", labels])
    [classifier] = make_classifiers(args)
    return classifier.label_descriptions


def test_long_inline_labels_are_not_probed_as_a_path():
    """Inline labels past 255 characters (NAME_MAX) once failed with OSError "File name too long"."""
    want = {f"Label_{i:02d}": f"documents about topic number {i} and its neighbours" for i in range(26)}
    inline = ";".join(f"{k}={v}" for k, v in want.items())
    assert len(inline) > 1000
    assert _zero_shot_labels(inline) == {k: [v] for k, v in want.items()}
    # Without '=' (descriptions from the names) the inline form still needs ';', and is still long.
    names = ";".join(f"a_rather_long_label_name_number_{i}" for i in range(12))
    assert len(names) > 255 and len(_zero_shot_labels(names)) == 12


def test_labels_from_files(tmp_path):
    json_file = tmp_path / "labels.json"
    json_file.write_text(json.dumps({"News": "news reports", "Sports": "matches and athletes"}), encoding="utf-8")
    assert _zero_shot_labels(str(json_file)) == {"News": ["news reports"], "Sports": ["matches and athletes"]}
    text_file = tmp_path / "labels.txt"
    text_file.write_text("# comment\nNews: news reports\nSports_Talk\n", encoding="utf-8")
    assert _zero_shot_labels(str(text_file)) == {"News": ["news reports"], "Sports_Talk": ["Sports Talk"]}
    with pytest.raises(ValueError, match="not found"):
        _zero_shot_labels(str(tmp_path / "missing.json"))
    long_path = str(tmp_path / ("x" * 300 + ".json"))  # probing it raises OSError: an error of its own, not that
    with pytest.raises(ValueError, match="not found"):
        _zero_shot_labels(long_path)


@pytest.mark.parametrize("under", [False, True])
def test_output_that_is_a_file_is_a_usage_error_before_spark(tmp_path, monkeypatch, caplog, under):
    """--output naming an existing file (or a path under one): exit 2 with one line, before Spark starts (it once
    failed with exit 1 and a Py4J traceback after Spark's start), and nothing written."""
    import sparkcurate.spark.session

    def no_spark(*_args, **_kwargs):
        raise AssertionError("Spark must not start")

    monkeypatch.setattr(sparkcurate.spark.session, "get_session", no_spark)
    existing = tmp_path / "results.jsonl"
    existing.write_text("keep me\n", encoding="utf-8")
    output = existing / "out" if under else existing
    code = main(["classify", "--input", str(SAMPLES), "--output", str(output), "--classifier", "zero-shot"])
    assert code == EXIT_USAGE
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "existing file" in errors[0] and "\n" not in errors[0]
    assert existing.read_text(encoding="utf-8") == "keep me\n" and sorted(tmp_path.iterdir()) == [existing]


def test_filter_by_with_attribute_files_is_a_usage_error(tmp_path):
    """Attribute files hold a row for every record: a filter has nothing to drop, so it is refused before Spark."""
    assert main(["classify", "--input", str(SAMPLES), "--output", str(tmp_path / "o"), "--classifier", "domain",
                 "--output-mode", "attributes", "--filter-by", "News"]) == EXIT_USAGE
