"""The command: help, exit codes, list, and the classify job through ``main``."""

from __future__ import annotations

import json
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


def test_classify_through_main(spark, deberta_dir, tmp_path):
    out = tmp_path / "out"
    code = main(["classify", "--input", str(SAMPLES), "--output", str(out), "--classifier", "domain",
                 "--model", str(deberta_dir), "--device", "cpu", "--prob-column", "domain_prob",
                 "--filter-by", "Finance,Sports,Science,News,Games", "--quiet"])
    assert code == EXIT_OK
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["input_records"] == 31 and summary["rejected_records"] == 3
    assert summary["output_records"] + summary["filtered_records"] == 28
    assert (out / "_report" / "index.html").exists()
    rows = spark.read.json(str(out)).collect()
    assert len(rows) == summary["output_records"] and all(len(r["domain_prob"]) == 5 for r in rows)
    assert main(["report", str(out)]) == EXIT_OK


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
