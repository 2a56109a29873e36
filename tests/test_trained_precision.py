"""benchmarks/trained_precision.py: the corpus rules on a fake site-packages, the training helpers, and a CPU smoke
of the whole harness (train, save in the published layout, load as the domain classifier, measure every row)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from benchmarks import trained_precision as tp
from tests.conftest import REPO

WORDS = " ".join(f"word{i}" for i in range(25))  # inside the 20-400 word range


def _package(root: Path, name: str, files: dict[str, str]) -> None:
    for rel, source in {"__init__.py": "", **files}.items():
        path = root / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))


def test_docstrings_finds_nested_definitions_with_their_names():
    import ast

    tree = ast.parse(textwrap.dedent('''
        """module doc"""
        class A:
            """class doc"""
            def f(self):
                """method doc"""
                def inner():
                    """inner doc"""
        if True:
            def g():
                """conditional doc"""
        try:
            class B:
                """in try"""
        except ImportError:
            pass
        def h():
            pass
    '''))
    assert dict(tp.docstrings(tree)) == {"<module>": "module doc", "A": "class doc", "A.f": "method doc",
                                         "A.f.inner": "inner doc", "g": "conditional doc", "B": "in try"}


def test_corpus_rules_on_a_fake_site_packages(tmp_path, monkeypatch):
    """Word range, vendored code skipped, a text in two packages dropped from both, repeats kept once, an
    unparsable file counted (not silently lost), labels by size with a floor, a stable hash split."""
    site = tmp_path / "site-packages"
    many = "\n".join(f'def f{i}():\n    """{WORDS} alpha{i}"""\n' for i in range(12))
    _package(site, "alpha", {"mod.py": many + 'def short():\n    """too short"""\n',
                             "sub/more.py": f'def shared():\n    """{WORDS} shared"""\n'
                                            f'def again():\n    """{WORDS} alpha0"""\n',
                             "_vendor/other.py": f'def v():\n    """{WORDS} vendored"""\n',
                             "broken.py": "def (:\n"})
    _package(site, "beta", {"mod.py": "\n".join(f'def g{i}():\n    """{WORDS} beta{i}"""\n' for i in range(10))
                            + f'def shared():\n    """{WORDS} shared"""\n'})
    _package(site, "gamma", {"mod.py": f'def g():\n    """{WORDS} gamma"""\n'})  # under --min-docs
    monkeypatch.setattr(tp, "site_package_dirs", lambda: [site])
    args = tp.parse_args(["--min-docs", "5", "--max-per-label", "11", "--heldout-pct", "30", "--workers", "1"])
    docs, facts = tp.build_corpus(args)
    assert facts["labels"] == ["alpha", "beta"]
    assert facts["packages_below_min_docs"] == {"gamma": 1}
    read = facts["read"]
    assert read["files"] == 8  # 3 packages' __init__.py, alpha's mod, sub/more and broken, beta's mod; no _vendor
    assert read["unreadable_files"] == 1 and "broken.py" in read["unreadable_examples"][0]
    assert read["outside_word_range"] == 1 and read["repeats_in_package"] == 1 and read["in_several_packages"] == 2
    texts = [d.text for d in docs]
    assert not any("shared" in t or "vendored" in t for t in texts)
    assert facts["per_label"]["alpha"]["available"] == 12 and sum(d.label == "alpha" for d in docs) == 11
    assert {d.split for d in docs} == {"train", "heldout"}
    assert all(d.split == tp.split_of(d.text, 30) for d in docs)
    again, _ = tp.build_corpus(args)
    assert again == docs  # the same packages give the same corpus, in the same order


def test_choose_labels_takes_the_largest_then_sorts_by_name():
    by_label = {"b": dict.fromkeys("123"), "a": dict.fromkeys("12"), "c": dict.fromkeys("1234"), "d": {}}
    assert tp.choose_labels(by_label, max_labels=2, min_docs=2) == ["b", "c"]
    assert tp.choose_labels(by_label, max_labels=5, min_docs=3) == ["b", "c"]


def test_epoch_batches_cover_every_document_once_under_the_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 300, size=1000)
    batches = tp.epoch_batches(lengths, budget=2048, max_rows=32, rng=np.random.default_rng(1))
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(1000))
    assert all(len(b) <= 32 and (len(b) == 1 or len(b) * lengths[b].max() <= 2048) for b in batches)
    again = tp.epoch_batches(lengths, budget=2048, max_rows=32, rng=np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))


def test_learning_rate_warms_up_then_decays_to_zero():
    assert tp.lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert tp.lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert tp.lr_at(10, 1.0, 10, None) == 1.0  # step count not fixed yet: no decay
    assert tp.lr_at(55, 1.0, 10, 100) == pytest.approx(0.5)
    assert tp.lr_at(100, 1.0, 10, 100) == 0.0


def test_compare_counts_documents_past_the_target():
    ref = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    probs = np.array([[0.905, 0.095], [0.45, 0.55], [0.2, 0.8]])
    out = tp.compare(probs, ref, np.array([0, 0, 1]))
    assert out["docs_over_1e2"] == 1 and out["argmax_disagreements"] == 1
    assert out["argmax_agreement_pct"] == pytest.approx(100 * 2 / 3, abs=1e-3)
    assert out["max_prob_abs_diff"] == pytest.approx(0.15) and out["accuracy"] == pytest.approx(2 / 3, abs=1e-4)


@pytest.mark.slow
def test_smoke_trains_saves_loads_and_measures_every_row(tmp_path):
    """The whole harness on the CPU: a tiny model trained above the majority label's share, saved in the published
    layout and loaded back by the domain classifier (same probabilities), every precision row measured. The engine
    rows take the lean load (forced on for the CPU): its modules and Rust tokenizer against transformers' fp32
    forward and tokenizer on a trained model."""
    import os

    out, keep = tmp_path / "tp.json", tmp_path / "keep"
    res = subprocess.run([sys.executable, "-m", "benchmarks.trained_precision", "--smoke", "--out", str(out),
                          "--keep", str(keep)], capture_output=True, text=True, timeout=1200, cwd=REPO,
                         env={**os.environ, "SPARKCURATE_LEAN_LOAD": "on"})
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["status"] == "done" and doc["device"] == "cpu" and "--smoke" in doc["command"]
    assert set(doc["phases_s"]) == {"corpus", "tokenizer", "training", "checkpoint", "reference", "engine"}
    corpus, training = doc["corpus"], doc["training"]
    assert corpus["n_labels"] >= 2 and corpus["measured_docs"] == corpus["heldout_docs"] > 0
    assert doc["tokenizer"]["heldout_tokens"]["mean"] > 10 and doc["tokenizer"]["unk_share"] < 0.05
    assert training["heldout_accuracy_fp32"] > training["majority_share"]
    assert doc["roundtrip"]["max_prob_abs_diff_vs_trained_model"] < 1e-4
    rows = {r["name"]: r for r in doc["rows"]}
    assert set(rows) == {"hf_fp32_reference", "hf_autocast_fp16_nemo", "engine_fp16", "engine_bf16",
                         "engine_fp16_split", "engine_fp32"}
    for r in rows.values():
        assert r["docs"] == corpus["measured_docs"] and r["docs_per_s"] > 0
        assert 0 <= r["docs_over_1e2"] <= r["docs"] and 0 <= r["argmax_agreement_pct"] <= 100
    assert rows["hf_fp32_reference"]["max_prob_abs_diff"] == 0
    assert rows["engine_fp32"]["max_prob_abs_diff"] < 1e-4 and rows["engine_fp32"]["argmax_agreement_pct"] == 100
    assert rows["engine_bf16"]["max_prob_abs_diff"] > 0  # the half-precision rows really ran in half precision
    assert [r["default"] for n, r in rows.items() if n.startswith("engine")] == [False, False, False, True]
    assert rows["engine_fp16_split"]["precision"] == "fp16-split"
    for name in ("engine_fp16", "engine_bf16", "engine_fp16_split", "engine_fp32"):
        assert rows[name]["backbone"].startswith("sparkcurate.") and rows[name]["engine_tokens_equal"], rows[name]
    lines = (keep / "heldout" / "part-00000.jsonl").read_text().splitlines()
    assert len(lines) == corpus["measured_docs"] and set(json.loads(lines[0])) == {"id", "text", "label"}
    probs = np.load(keep / "heldout_fp32_probs.npy", allow_pickle=False)
    assert probs.shape == (corpus["measured_docs"], corpus["n_labels"])
    for name in ("config.json", "model.safetensors", "base_model/config.json", "tokenizer.json"):
        assert (keep / "model" / name).is_file(), name
    assert json.loads((keep / "model" / "config.json").read_text())["base_model"] == "base_model"


def test_a_diverged_loss_stops_the_run():
    import torch

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(FloatingPointError, match="step 7"):
        tp.log_progress(7, 10, 0, torch.tensor(float("nan")), torch.tensor(0), 4, opt, 0.0, 4)


@pytest.mark.slow
def test_time_budget_fixes_the_step_count_and_decays_to_zero(monkeypatch):
    """``--train-minutes``: the step count is set from the pace of the first steps, recorded, and the learning rate
    reaches ~0 at the last step; a separable toy task is learnt."""
    import argparse

    import torch

    from benchmarks.gpu_stage import backbone_config
    from sparkcurate.engine.tokenize import Tokenized
    from sparkcurate.models.heads import ClsHeadModel

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    ids = [np.concatenate([[1], rng.integers(10 + 30 * c, 40 + 30 * c, size=10), [2]]).astype(np.int32) for c in y]
    tokens = Tokenized(ids, np.array([len(i) for i in ids]))
    monkeypatch.setattr(tp, "PROBE_STEPS", 14)  # the pace of steps 10-14: fixed before the budget on a busy machine
    args = argparse.Namespace(seed=0, lr=2e-3, train_minutes=0.25, train_steps=None, warmup_steps=5,
                              train_token_budget=192, train_max_rows=16, log_every=10)
    torch.manual_seed(0)
    model = ClsHeadModel(backbone_config(True, 128), 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a second thread only adds waiting on a busy machine
    try:
        facts = tp.train(model, tokens, y, args, torch.device("cpu"), pad_id=0)
    finally:
        torch.set_num_threads(threads)
    assert facts["planned_steps"] > tp.PROBE_STEPS and facts["repeat_with"] == f"--train-steps {facts['steps']}"
    last = facts["history"][-1]
    assert last["step"] == facts["steps"]
    if facts["stopped_at_time_limit"]:  # a machine slower after the pace was measured: stopped at 115% of the budget
        assert facts["seconds"] >= 1.15 * 60 * args.train_minutes and facts["steps"] < facts["planned_steps"]
    else:
        assert facts["steps"] == facts["planned_steps"] and last["lr"] < 0.1 * args.lr
    assert last["loss"] < facts["history"][0]["loss"] and not model.training


def _kept_run(keep: Path) -> np.ndarray:
    """A --keep directory as the harness leaves it: held-out JSONL, fp32 probabilities, the config's labels."""
    (keep / "heldout").mkdir(parents=True)
    (keep / "model").mkdir()
    docs = [{"id": f"d{i}", "text": f"text {i}", "label": "b" if i % 3 else "a"} for i in range(6)]
    (keep / "heldout" / "part-00000.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.45, 0.55], [0.1, 0.9]])
    np.save(keep / "heldout_fp32_probs.npy", ref, allow_pickle=False)
    (keep / "model" / "config.json").write_text(json.dumps({"id2label": {"0": "a", "1": "b"}}))
    return ref


def _job_file(path: Path, ref: np.ndarray, rows: list[int], shift: float = 0.0) -> None:
    import gzip

    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in rows:
        probs = ref[i] + np.array([shift, -shift]) * (i == 4)
        lines.append(json.dumps({"id": f"d{i}", "text": "t", "pred": "ab"[int(probs.argmax())],
                                 "probs": probs.tolist()}) + "\n")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as fh:
        fh.write("".join(lines))


def test_compare_job_matches_documents_by_id_across_files(tmp_path):
    """A job's partitioned output (a gzipped part too; _summary, _rejects and .crc files skipped) against the kept
    reference: the one document moved past 0.5 is the one disagreement and the one past 1e-2."""
    keep, out = tmp_path / "keep", tmp_path / "job"
    ref = _kept_run(keep)
    _job_file(out / "file_name=a" / "part-00000-x.c000.json", ref, [5, 0, 1], shift=0.1)
    _job_file(out / "file_name=b" / "part-00001-x.c000.json.gz", ref, [2, 3, 4], shift=0.1)
    (out / "_summary.json").write_text("{}")
    (out / "_rejects").mkdir()
    (out / "file_name=a" / ".part-00000-x.c000.json.crc").write_text("crc")
    r = tp.compare_job(keep, out, "pred", "probs")
    assert r["docs"] == 6 and r["argmax_disagreements"] == 1 and r["docs_over_1e2"] == 1
    assert r["max_prob_abs_diff"] == pytest.approx(0.1) and r["accuracy"] == pytest.approx(5 / 6, abs=1e-4)
    labels_only = tp.compare_job(keep, out, "pred", None)
    assert labels_only["argmax_disagreements"] == 1 and "max_prob_abs_diff" not in labels_only


def test_compare_job_refuses_missing_repeated_or_unknown_documents(tmp_path):
    keep = tmp_path / "keep"
    ref = _kept_run(keep)
    _job_file(tmp_path / "missing" / "part.json", ref, [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="5 of 6 documents; missing e.g. \\['d5'\\]"):
        tp.compare_job(keep, tmp_path / "missing", "pred", "probs")
    _job_file(tmp_path / "twice" / "a.json", ref, [0, 1, 2, 3, 4, 5])
    _job_file(tmp_path / "twice" / "b.json", ref, [3])
    with pytest.raises(ValueError, match="'d3' written twice"):
        tp.compare_job(keep, tmp_path / "twice", "pred", "probs")
    _job_file(tmp_path / "other" / "a.parquet", ref, [0])
    with pytest.raises(ValueError, match="not a JSONL output file"):
        tp.compare_job(keep, tmp_path / "other", "pred", "probs")
