"""Quiet outcomes made explicit (issue 25, class 10): a failed run leaves no empty OUT behind, a broken symbolic
link under the input is listed with its reason, an empty label file is an error (never the 26 default labels),
and an empty label description means the same in every form."""

from __future__ import annotations

import json
import logging
import os

import pytest

from sparkcurate.cli import EXIT_INPUT, EXIT_OK, EXIT_USAGE, main
from tests.conftest import write_jsonl

# ------------------------------------------------------------------------------------------------------------
# (a) a run that fails before writing leaves OUT as it found it: absent stays absent
# ------------------------------------------------------------------------------------------------------------


def test_run_failing_before_writing_creates_no_output_folder(spark, deberta_dir, tmp_path):
    """Failures after the run took hold of OUT (missing input, exit 4; a clashing field, exit 2) used to leave an
    empty OUT folder behind."""
    common = ["--classifier", "domain", "--model", str(deberta_dir), "--device", "cpu", "--quiet", "--no-report"]
    out = tmp_path / "deep" / "out"
    assert main(["classify", "--input", str(tmp_path / "nowhere"), "--output", str(out), *common]) == EXIT_INPUT
    assert not out.exists()
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": "Stocks rallied.", "domain_pred": "mine"}])
    assert main(["classify", "--input", str(tmp_path / "in"), "--output", str(out), *common]) == EXIT_USAGE
    assert not out.exists()


def test_run_failing_before_writing_keeps_an_existing_output_folder(spark, deberta_dir, tmp_path):
    """An OUT that was there before (empty, or with an earlier run's files) is left exactly as it was."""
    common = ["--classifier", "domain", "--model", str(deberta_dir), "--device", "cpu", "--quiet", "--no-report"]
    empty, full = tmp_path / "empty", tmp_path / "full"
    empty.mkdir()
    (full / "file_name=a.jsonl").mkdir(parents=True)
    (full / "file_name=a.jsonl" / "part-0.json").write_text('{"text": "old"}\n')
    (full / "_summary.json").write_text('{"output_records": 1}\n')  # an earlier run's (else OUT is not ours)
    for out in (empty, full):
        before = sorted(p.relative_to(out) for p in out.rglob("*"))
        assert main(["classify", "--input", str(tmp_path / "nowhere"), "--output", str(out), *common]) == \
            EXIT_INPUT
        assert out.is_dir() and sorted(p.relative_to(out) for p in out.rglob("*")) == before


# ------------------------------------------------------------------------------------------------------------
# (b) broken symbolic links are listed in ignored_files
# ------------------------------------------------------------------------------------------------------------


def _tree_with_broken_links(root):
    write_jsonl(root / "a.jsonl", [{"text": "Stocks rallied."}])
    write_jsonl(root / "sub" / "b.jsonl", [{"text": "A late goal."}])
    os.symlink(root / "gone.jsonl", root / "dangling.jsonl")
    os.symlink("/nonexistent/x.jsonl", root / "sub" / "far.jsonl")
    os.symlink(root / "sub", root / "linked")  # a folder link: its broken link is found once, not twice
    os.symlink(root, root / "sub" / "loop")  # a loop: the walk still ends


def test_broken_links_are_found_once_and_the_walk_ends(tmp_path):
    from sparkcurate.io.listing import broken_links

    _tree_with_broken_links(tmp_path / "in")
    found = broken_links(str(tmp_path / "in"))
    names = sorted(os.path.relpath(p, tmp_path / "in") for p, _ in found)
    assert names in (["dangling.jsonl", "linked/far.jsonl"], ["dangling.jsonl", "sub/far.jsonl"])
    assert all("broken symbolic link" in why for _, why in found)
    assert any("/nonexistent/x.jsonl" in why for _, why in found)
    assert broken_links(f"file://{tmp_path / 'in'}") == found


def test_broken_link_under_the_input_is_listed_in_ignored_files(spark, deberta_dir, tmp_path):
    """Hadoop's listing passes over a link that points nowhere: the summary now names it with the reason."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": "Stocks rallied."}])
    write_jsonl(tmp_path / "in" / "sub" / "b.jsonl", [{"text": "A late goal."}])
    os.symlink(tmp_path / "in" / "gone.jsonl", tmp_path / "in" / "sub" / "dangling.jsonl")
    out = tmp_path / "out"
    assert main(["classify", "--input", str(tmp_path / "in"), "--output", str(out), "--classifier", "domain",
                 "--model", str(deberta_dir), "--device", "cpu", "--quiet", "--no-report"]) == EXIT_OK
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["input_records"] == 2
    [entry] = [e for e in summary["ignored_files"] if e["file"] == "sub/dangling.jsonl"]
    assert "broken symbolic link" in entry["why"] and "gone.jsonl" in entry["why"]


# ------------------------------------------------------------------------------------------------------------
# (c) no silent fall-back to the default labels; (d) empty descriptions mean the same in every form
# ------------------------------------------------------------------------------------------------------------


def _labels(value: str):
    from sparkcurate.cli import build_parser, make_classifiers

    args = build_parser().parse_args(["classify", "--input", "in", "--output", "out", "--classifier", "zero-shot",
                                      "--labels", value])
    [classifier] = make_classifiers(args)
    return classifier.label_descriptions


@pytest.mark.parametrize("content", ["{}", '{"Only": "one label"}', "[]"])
def test_label_file_without_two_labels_is_a_usage_error(tmp_path, monkeypatch, caplog, content):
    """``{}`` used to give the 26 default labels without a word."""
    import sparkcurate.spark.session

    monkeypatch.setattr(sparkcurate.spark.session, "get_session", lambda *a, **k: pytest.fail("Spark started"))
    path = tmp_path / "labels.json"
    path.write_text(content)
    code = main(["classify", "--input", str(tmp_path), "--output", str(tmp_path / "out"), "--classifier",
                 "zero-shot", "--labels", str(path)])
    assert code == EXIT_USAGE
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(path) in errors[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["", " ", ";"])
def test_empty_inline_labels_are_an_error_not_the_defaults(value):
    with pytest.raises(ValueError, match="at least two labels"):
        _labels(value)


def test_empty_label_descriptions_in_python_are_an_error_not_the_defaults():
    from sparkcurate.classifiers.zero_shot import ZeroShotClassifier

    with pytest.raises(ValueError, match="at least two labels"):
        ZeroShotClassifier(label_descriptions={})
    assert len(ZeroShotClassifier().labels) == 26  # only None means the defaults


def test_an_empty_description_means_the_label_name_in_every_form(tmp_path):
    """The same labels written in each form, one of them without a description or with an empty one: the same
    descriptions. (JSON once refused ``""`` while the other forms used the name.)"""
    want = {"Sports_Talk": ["Sports Talk"], "News": ["news reports"]}
    json_file, text_file = tmp_path / "labels.json", tmp_path / "labels.txt"
    forms = []
    for description in ("", "   "):
        json_file.write_text(json.dumps({"Sports_Talk": description, "News": "news reports"}))
        forms.append(_labels(str(json_file)))
        text_file.write_text(f"Sports_Talk:{description}\nNews: news reports\n")
        forms.append(_labels(str(text_file)))
        forms.append(_labels(f"Sports_Talk={description};News=news reports"))
    text_file.write_text("Sports_Talk\nNews: news reports\n")
    forms += [_labels(str(text_file)), _labels("Sports_Talk;News=news reports")]
    from sparkcurate.classifiers.zero_shot import ZeroShotClassifier

    forms.append(ZeroShotClassifier(label_descriptions={"Sports_Talk": "", "News": "news reports"})
                 .label_descriptions)
    assert all(f == want for f in forms), forms


@pytest.mark.parametrize("bad", [{"Sports": [], "News": "n"}, {"Sports": ["x", ""], "News": "n"},
                                 {"": "empty name", "News": "n"}, {"Sports": None, "News": "n"}])
def test_malformed_descriptions_are_still_errors(bad):
    from sparkcurate.classifiers.zero_shot import ZeroShotClassifier

    with pytest.raises(ValueError):
        ZeroShotClassifier(label_descriptions=bad)
