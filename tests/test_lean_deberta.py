"""The lean DeBERTa load (``models.lean``, ``engine.deberta``): transformers' outputs without its imports.

The published tiny checkpoint (tests/fixtures/tiny_models.py) is loaded both ways and compared on the CPU in fp32:
the padded forward op for op, the packed forward through the reference and Triton (interpreted) back-ends, the
tokenizer's ids; the strict load's errors are the full loader's; and a fresh interpreter that loads and runs the
lean engine never imports transformers' models package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from sparkcurate.classifiers import DomainClassifier  # noqa: E402
from sparkcurate.engine.tokenize import tokenize  # noqa: E402
from sparkcurate.models import lean  # noqa: E402
from sparkcurate.models.loading import ModelArtifactError  # noqa: E402
from tests.conftest import DOMAIN_TEST_LABELS, triton_interpreter_problem  # noqa: E402
from tests.fixtures.tiny_models import SAMPLE_TEXTS, corpus_sentences  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TEXTS = SAMPLE_TEXTS + corpus_sentences(3) + ["", "  spaced\t\tout \n text  ", "Ünïcödé — “quotes” 123,456.7"]


@pytest.fixture()
def lean_on(monkeypatch):
    monkeypatch.setenv("SPARKCURATE_LEAN_LOAD", "on")


def both_ways(model_dir: Path):
    """(transformers' module, the lean module, transformers' tokenizer, the lean tokenizer), fp32, eval mode."""
    clf = DomainClassifier(model=str(model_dir), device="cpu")
    full = clf.load_module(model_dir).eval()
    module, tokenizer = clf.load_lean(model_dir, "cpu")
    return full, module.eval(), clf.load_tokenizer(model_dir), tokenizer


def padded(tokens):
    ids = torch.zeros(len(tokens.ids), int(tokens.lengths.max()), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(tokens.ids):
        ids[row, : len(seq)] = torch.from_numpy(seq)
        mask[row, : len(seq)] = 1
    return ids, mask


def logits(module, ids, mask):
    hidden = module.model(input_ids=ids, attention_mask=mask).last_hidden_state
    return module.fc(hidden[:, 0])


def test_lean_modules_give_transformers_logits(deberta_dir, lean_on):
    full, module, _, tokenizer = both_ways(deberta_dir)
    assert type(module.model).__module__ == "sparkcurate.engine.deberta"
    assert type(full.model).__module__.startswith("transformers.")
    assert module.state_dict().keys() == full.state_dict().keys()
    ids, mask = padded(tokenize(tokenizer, TEXTS, 64))
    with torch.no_grad():
        expected, got = logits(full, ids, mask), logits(module, ids, mask)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(module(ids, mask), full(ids, mask), rtol=1e-5, atol=1e-6)
    assert (got.max(dim=1).values - got.min(dim=1).values).min() > 0.1  # a real signal, not constant logits


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_packed_forward_on_lean_modules_matches_padded_transformers(deberta_dir, lean_on, impl):
    if impl == "triton" and triton_interpreter_problem():
        pytest.skip(triton_interpreter_problem())
    full, module, _, tokenizer = both_ways(deberta_dir)
    tokens = tokenize(tokenizer, TEXTS[:12], 48)
    ids, mask = padded(tokens)
    flat = torch.from_numpy(np.concatenate(tokens.ids).astype(np.int64))
    cu = torch.zeros(len(tokens) + 1, dtype=torch.int32)
    cu[1:] = torch.from_numpy(np.cumsum(tokens.lengths))
    with torch.no_grad():
        expected = torch.softmax(logits(full, ids, mask), dim=-1)
        got = module.forward_packed(flat, cu, int(tokens.lengths.max()), attention_impl=impl)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_lean_tokenizer_gives_transformers_ids(deberta_dir, lean_on):
    _, _, full_tok, tokenizer = both_ways(deberta_dir)
    assert type(tokenizer).__name__ == "RustTokenizer" and tokenizer.pad_token_id == full_tok.pad_token_id
    for limit, chars in ((512, None), (8, None), (512, 20)):
        expected, got = tokenize(full_tok, TEXTS, limit, chars), tokenize(tokenizer, TEXTS, limit, chars)
        assert [x.tolist() for x in got.ids] == [x.tolist() for x in expected.ids]


def test_log_buckets_are_transformers(lean_on):
    from transformers.models.deberta_v2 import modeling_deberta_v2 as hf

    from sparkcurate.engine import deberta

    distance = torch.arange(-3000, 3001)
    for buckets, max_pos in ((256, 512), (32, 512), (64, 128), (256, 1024)):
        assert torch.equal(deberta.make_log_bucket_position(distance, buckets, max_pos),
                           hf.make_log_bucket_position(distance, buckets, max_pos))
    sample = torch.empty(1, 700, 4)
    assert torch.equal(deberta.build_relative_position(sample, sample, 256, 512),
                       hf.build_relative_position(sample, sample, 256, 512))


def _rewrite_safetensors(path: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    change(state)
    save_file(state, str(path))


@pytest.mark.parametrize("change", [
    lambda s: s.pop("fc.bias"),
    lambda s: s.update({"extra.weight": torch.zeros(2)}),
    lambda s: s.update({"model.encoder.rel_embeddings.weight": torch.zeros(3, 64)}),
], ids=["missing", "unexpected", "wrong-shape"])
def test_strict_load_errors_are_the_full_loaders(deberta_dir, tmp_path, monkeypatch, change):
    model_dir = tmp_path / "model"
    shutil.copytree(deberta_dir, model_dir)
    _rewrite_safetensors(model_dir / "model.safetensors", change)
    clf = DomainClassifier(model=str(model_dir), device="cpu", labels=DOMAIN_TEST_LABELS)
    with pytest.raises(ModelArtifactError) as full:
        clf.load_module(model_dir)
    monkeypatch.setenv("SPARKCURATE_LEAN_LOAD", "on")
    with pytest.raises(ModelArtifactError) as lean_error:
        clf.load_lean(model_dir, "cpu")
    assert str(lean_error.value) == str(full.value) and "\n" not in str(full.value)


def test_when_the_lean_load_applies(deberta_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("SPARKCURATE_LEAN_LOAD", raising=False)
    assert lean.lean_problem("cuda:0", "auto", "auto", deberta_dir) is None
    assert "device cpu" in lean.lean_problem("cpu", "auto", "auto", deberta_dir)
    assert "fp32" in lean.lean_problem("cuda:0", "fp32", "auto", deberta_dir)
    assert "packed=off" in lean.lean_problem("cuda:0", "fp16", "off", deberta_dir)
    assert DomainClassifier(model=str(deberta_dir)).load_lean(deberta_dir, "cpu") is None  # the CPU: transformers'
    monkeypatch.setenv("SPARKCURATE_LEAN_LOAD", "off")
    assert "off" in lean.lean_problem("cuda:0", "auto", "auto", deberta_dir)
    monkeypatch.setenv("SPARKCURATE_LEAN_LOAD", "on")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    assert "safetensors" in lean.lean_problem("cpu", "auto", "auto", pickled)


def test_unsupported_backbones_keep_transformers_modules(deberta_dir, tmp_path, lean_on):
    model_dir = tmp_path / "model"
    shutil.copytree(deberta_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    base = tmp_path / "base"  # the fixture's base_model is an absolute path shared by the session: a copy
    base.mkdir()
    base_config = json.loads((Path(config["base_model"]) / "config.json").read_text())
    base_config["conv_kernel_size"] = 3
    (base / "config.json").write_text(json.dumps(base_config))
    config["base_model"] = str(base)
    (model_dir / "config.json").write_text(json.dumps(config))
    assert DomainClassifier(model=str(model_dir), device="cpu").load_lean(model_dir, "cpu") is None


def test_without_tokenizer_json_transformers_loads_the_tokenizer(deberta_dir, tmp_path, lean_on):
    model_dir = tmp_path / "model"
    shutil.copytree(deberta_dir, model_dir)
    (model_dir / "tokenizer.json").unlink()
    _, tokenizer = DomainClassifier(model=str(model_dir), device="cpu").load_lean(model_dir, "cpu")
    assert type(tokenizer).__name__ != "RustTokenizer"
    assert lean.lean_tokenizer(model_dir) is None


LEAN_RUN = """
import json, sys
import numpy as np, torch
from sparkcurate.classifiers import DomainClassifier
from sparkcurate.engine.deberta_packed import packed_last_hidden
engine = DomainClassifier(model=sys.argv[1], device="cpu", precision="fp32").load_engine("cpu")
print(json.dumps("torch._dynamo" in sys.modules))
out = engine.predict(["The football team won the match.", "Stocks fell as inflation rose."])
tokens = engine.tokenize(["The football team won.", "A long day at the bank."])
flat = torch.from_numpy(np.concatenate(tokens.ids).astype(np.int64))
cu = torch.tensor([0, *np.cumsum(tokens.lengths)], dtype=torch.int32)
for impl in ("reference", "triton") if sys.argv[2] == "interpret-triton" else ("reference",):
    packed_last_hidden(engine.model.model, flat, cu, int(tokens.lengths.max()), impl, rows="first")
print(type(engine.model.model).__module__, out.shape)
print(json.dumps(sorted(name for name in sys.modules if name == "transformers" or name.startswith("transformers."))))
"""


@pytest.mark.slow
def test_a_fresh_interpreter_loads_and_runs_the_lean_engine_without_transformers(deberta_dir):
    """The point of the lean load: no transformers import (its models package cost a fresh worker 10 s)."""
    env = {**os.environ, "SPARKCURATE_LEAN_LOAD": "on", "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    # The tile kernel through Triton's interpreter only where it works (Triton >= 3.9; GPU images may have older).
    triton = "reference-only" if triton_interpreter_problem() else "interpret-triton"
    done = subprocess.run([sys.executable, "-c", LEAN_RUN, str(deberta_dir), triton], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    dynamo, module_line, imported = done.stdout.strip().splitlines()[-3:]
    assert json.loads(dynamo) is False  # nor torch._dynamo (4 s), which a meta-device embedding init imports
    assert module_line.startswith("sparkcurate.engine.deberta ")
    assert not [name for name in json.loads(imported) if name.startswith("transformers.models")], imported
    assert json.loads(imported) == [], imported  # not even transformers' top-level package (1.5 s)


def test_lean_preflight_checks_the_same_names_and_shapes_as_transformers(deberta_dir, monkeypatch):
    """The driver's pre-flight of a GPU job checks the weights against the lean head's meta build: it must expect
    exactly the parameters transformers' head has, or a checkpoint one accepts the other would refuse."""
    from sparkcurate.models.lean import build_cls_head, lean_config
    from sparkcurate.models.loading import backbone_config_dict, expected_shapes, read_json

    monkeypatch.delenv("SPARKCURATE_LEAN_LOAD", raising=False)
    clf = DomainClassifier(model=str(deberta_dir))
    config = read_json(deberta_dir / "config.json")
    backbone, _ = lean_config(backbone_config_dict(config, deberta_dir, clf.load_options), deberta_dir)
    labels = clf.resolve_labels(config)
    lean_shapes = expected_shapes(lambda: build_cls_head(backbone, len(labels), 0.2))
    full_shapes = expected_shapes(lambda: clf.build_module(deberta_dir, config))
    assert lean_shapes == full_shapes
    assert clf.lean_preflight(deberta_dir, config).startswith("sparkcurate's own modules")
    assert DomainClassifier(model=str(deberta_dir), device="cpu").lean_preflight(deberta_dir, config) is None
    assert DomainClassifier(model=str(deberta_dir), precision="fp32").lean_preflight(deberta_dir, config) is None
    # what the check used is no output option: the same preflight_info (the units' fingerprint) either way
    assert clf.preflight() == DomainClassifier(model=str(deberta_dir), device="cpu").preflight()


@pytest.mark.parametrize("change", [
    lambda s: s.pop("fc.bias"),
    lambda s: s.update({"model.encoder.rel_embeddings.weight": torch.zeros(3, 64)}),
], ids=["missing", "wrong-shape"])
def test_lean_preflight_refuses_what_the_full_preflight_refuses(deberta_dir, tmp_path, monkeypatch, change):
    monkeypatch.delenv("SPARKCURATE_LEAN_LOAD", raising=False)
    model_dir = tmp_path / "model"
    shutil.copytree(deberta_dir, model_dir)
    _rewrite_safetensors(model_dir / "model.safetensors", change)
    with pytest.raises(ModelArtifactError) as full:
        DomainClassifier(model=str(model_dir), device="cpu", labels=DOMAIN_TEST_LABELS).preflight()
    with pytest.raises(ModelArtifactError) as lean_error:
        DomainClassifier(model=str(model_dir), labels=DOMAIN_TEST_LABELS).preflight()
    assert str(lean_error.value) == str(full.value)


def test_lean_preflight_refuses_a_broken_tokenizer_json(deberta_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("SPARKCURATE_LEAN_LOAD", raising=False)
    model_dir = tmp_path / "model"
    shutil.copytree(deberta_dir, model_dir)
    (model_dir / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"}}')
    with pytest.raises(ModelArtifactError, match="tokenizer.json"):
        DomainClassifier(model=str(model_dir), labels=DOMAIN_TEST_LABELS).preflight()


LEAN_PREFLIGHT = """
import json, sys
from sparkcurate.classifiers import DomainClassifier
info = DomainClassifier(model=sys.argv[1]).preflight()
print(json.dumps([info["classifier"], sorted(n for n in sys.modules if n.split(".")[0] == "transformers")]))
"""


def test_a_gpu_jobs_preflight_imports_no_transformers(deberta_dir):
    env = {k: v for k, v in os.environ.items() if k != "SPARKCURATE_LEAN_LOAD"}
    done = subprocess.run([sys.executable, "-c", LEAN_PREFLIGHT, str(deberta_dir)], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(REPO)}, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    name, imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert name == "domain" and imported == []
