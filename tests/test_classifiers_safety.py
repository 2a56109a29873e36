"""Aegis and the instruction-data guard with a tiny Llama + LoRA adapter: the pipeline's generations equal plain
transformers + peft ``generate`` on the same prompt, the guard's scores equal NeMo Curator's left-padded
``hidden_states[0][-1][:, -1]`` through the MLP, and the prompt, parsing and artifact checks are exact."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

pytest.importorskip("peft")

from sparkcurate.classifiers import AEGIS_LABELS, AegisClassifier, InstructionDataGuardClassifier
from sparkcurate.classifiers.aegis import format_aegis, parse_aegis_response
from sparkcurate.models.loading import ModelArtifactError

try:
    from tests.fixtures import tiny_models as tm
    from tests.fixtures.no_spark import classify_texts
except ModuleNotFoundError:  # pragma: no cover - depends on how pytest was started
    from fixtures import tiny_models as tm  # type: ignore[no-redef]
    from fixtures.no_spark import classify_texts  # type: ignore[no-redef]

TEXTS = [tm.SAMPLE_TEXTS[0], tm.SAMPLE_TEXTS[8], tm.SAMPLE_TEXTS[4] + " " + tm.SAMPLE_TEXTS[6]]
NEW_TOKENS = 12  # enough to compare generations; the default (100) is checked on the declaration
# sha256 of NeMo Curator's format_aegis("MSG") (nemo_curator/utils/aegis_utils.py), computed from its source.
NEMO_PROMPT_SHA256 = "4d3a2e5e5bd5b97a3f6fdfdda078df4d4a1a8b9ed03e64692b7ff35d6c7fb7e5"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Generation runs thousands of tiny matmuls: on a busy 2-core machine, OpenMP threads spinning for each one
    cost ~40x; one thread keeps these tests fast (results are the same)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm")
    base, adapter = tm.make_tiny_llama_with_lora(root)
    head = tm.make_instruction_guard_head(root / "guard", hidden=32)
    return base, adapter, head


@pytest.fixture(scope="module")
def reference_lm(llm):
    """Plain transformers + peft, as NeMo Curator loads it (fp32 here)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, adapter, _ = llm
    tok = AutoTokenizer.from_pretrained(str(base))
    tok.pad_token = tok.unk_token
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    return tok, PeftModel.from_pretrained(model, str(adapter)).eval()


# ------------------------------------------------------------------------------------------------ declarations


def test_prompt_is_nemo_exact():
    prompt = format_aegis("MSG")
    assert hashlib.sha256(prompt.encode()).hexdigest() == NEMO_PROMPT_SHA256
    assert prompt.startswith("[INST] Task: Check if there is unsafe content in 'User' messages")
    assert prompt.endswith("list of violated categories. [/INST]")
    assert "\n\n    User: MSG\n\n<END CONVERSATION>" in prompt
    assert "<BEGIN UNSAFE CONTENT CATEGORIES>\n    O1: Violence.\n" in prompt
    for i, name in [(3, "Criminal Planning/Confessions"), (8, "Hate /identity hate"), (13, "Needs Caution")]:
        assert prompt.count(f"\nO{i}: {name}.\n") == 1


@pytest.mark.parametrize("raw,expected", [
    ("safe", "safe"), (" safe\n", "safe"), ("unsafe\nO3", "O3"), ("unsafe\n O13 \nmore", "O13"),
    ("unsafe", "unknown"), ("unsafe\nO14", "unknown"), ("unsafe\nO3,O5", "unknown"), ("", "unknown"),
    ("Safe", "unknown"), ("blah\nsafe", "unknown"),
])
def test_parse_response(raw, expected):
    assert parse_aegis_response(raw) == expected


def test_declarations():
    aegis = AegisClassifier()
    assert (aegis.model, aegis.adapter_id) == (
        "meta-llama/LlamaGuard-7b", "nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0")
    permissive = AegisClassifier(adapter="Permissive").adapter_id
    assert permissive == "nvidia/Aegis-AI-Content-Safety-LlamaGuard-Permissive-1.0"
    assert aegis.max_chars == 6000 and aegis.max_tokens == 4096 and aegis.max_new_tokens == 100
    assert [c.name for c in aegis.output_columns()] == ["aegis_pred"]
    assert [c.name for c in AegisClassifier(keep_raw_pred=True).output_columns()] == ["aegis_pred", "_aegis_raw_pred"]
    assert AegisClassifier(base_model="/some/dir").model == "/some/dir"
    with pytest.raises(ValueError, match="differ"):
        AegisClassifier(model="a/b", base_model="c/d")
    guard = InstructionDataGuardClassifier(filter_by=["false"])
    assert guard.filter_by == [False] and guard.max_chars is None and guard.max_tokens == 4096
    assert [(c.name, c.kind) for c in guard.output_columns()] == [
        ("instruction_data_guard_poisoning_score", "float"), ("is_poisoned", "bool")]
    with pytest.raises(ValueError, match="true/false"):
        InstructionDataGuardClassifier(filter_by=["maybe"])


def test_right_to_left_padding():
    import torch

    from sparkcurate.models.llm import right_to_left_padding

    ids = torch.tensor([[5, 6, 7], [8, 9, 0], [4, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    left_ids, left_mask = right_to_left_padding(ids, mask, pad_id=0)
    assert left_ids.tolist() == [[5, 6, 7], [0, 8, 9], [0, 0, 4]]
    assert left_mask.tolist() == [[1, 1, 1], [0, 1, 1], [0, 0, 1]]


# ------------------------------------------------------------------------------------------------------ Aegis


def _short_prompt(text: str) -> str:
    return f"[INST] Is this safe? {text} [/INST]"


class ShortPromptAegis(AegisClassifier):
    """Aegis with a short prompt: the tiny tokenizer turns the real one into ~5,200 tokens, too slow for
    batched generation tests on a CPU."""

    def prompt(self):
        return _short_prompt


def _reference_generations(reference_lm, prompts: list[str], new_tokens: int) -> list[list[int]]:
    """transformers + peft ``generate``, one prompt at a time (no padding at all)."""
    import torch

    tok, model = reference_lm
    out_ids = []
    for prompt in prompts:
        enc = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        out_ids.append(out[0, enc["input_ids"].shape[1]:].tolist())
    return out_ids


def test_engine_tokenizes_the_aegis_prompt(llm, reference_lm):
    """The engine encodes format_aegis(text[:6000]), truncated to max_tokens, with the BOS token."""
    base, adapter, _ = llm
    tok, _ = reference_lm
    long_text = "word " * 2000
    clf = AegisClassifier(model=str(base), adapter=str(adapter), max_tokens=20000)
    engine = clf.load_engine("cpu")
    tokens = engine.tokenize([TEXTS[0], long_text])
    assert tokens.ids[0].tolist() == tok(format_aegis(TEXTS[0]))["input_ids"]
    assert tokens.ids[1].tolist() == tok(format_aegis(long_text[:6000]))["input_ids"]
    assert tokens.ids[0][0] == tok.bos_token_id
    short = AegisClassifier(model=str(base), adapter=str(adapter)).load_engine("cpu").tokenize([TEXTS[0]])
    assert short.lengths.tolist() == [4096]


def test_aegis_generation_equals_transformers_peft(llm, reference_lm):
    """The real prompt, one document: the pipeline's tokens, raw text and verdict equal plain generate's."""
    base, adapter, _ = llm
    tok, _ = reference_lm
    clf = AegisClassifier(model=str(base), adapter=str(adapter), max_tokens=8192, max_new_tokens=NEW_TOKENS,
                          keep_raw_pred=True)
    clf.preflight()
    generated = clf.load_engine("cpu").predict(TEXTS[:1])
    assert generated.shape == (1, NEW_TOKENS)
    expected = _reference_generations(reference_lm, [format_aegis(TEXTS[0])], NEW_TOKENS)
    assert [int(t) for t in generated[0] if t >= 0] == expected[0]
    cols = clf.postprocess(generated)
    raw = tok.batch_decode(expected, skip_special_tokens=True)
    assert cols["_aegis_raw_pred"] == raw
    assert cols["aegis_pred"] == [parse_aegis_response(r) for r in raw]
    assert clf.confidence(generated) is None


def test_batched_generation_equals_one_at_a_time(llm, reference_lm):
    """One micro-batch of prompts of different lengths, re-packed from the engine's right padding to the left
    padding generation needs, gives each prompt's unpadded generation."""
    base, adapter, _ = llm
    texts = TEXTS + ["Hello there, friend.", tm.SAMPLE_TEXTS[10][:300]]
    clf = ShortPromptAegis(model=str(base), adapter=str(adapter), max_new_tokens=20, token_budget=1_000_000)
    engine = clf.load_engine("cpu")
    tokens = engine.tokenize(texts)
    assert len(set(tokens.lengths.tolist())) == len(texts), "the prompts should differ in length"
    generated = engine.predict_tokenized(tokens)
    expected = _reference_generations(reference_lm, [_short_prompt(t) for t in texts], 20)
    for row, ids in zip(generated, expected):
        assert [int(t) for t in row if t >= 0] == ids


def test_aegis_postprocess_decodes_verdicts(llm):
    base, adapter, _ = llm
    clf = AegisClassifier(model=str(base), adapter=str(adapter), keep_raw_pred=True)
    tok = clf.load_tokenizer(base)
    answers = ["safe", "unsafe\nO3", "unsafe\nO14", "the weather is nice"]
    rows = np.full((len(answers), 100), -1.0, dtype=np.float32)
    for i, text in enumerate(answers):
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id, 0, 0]  # eos, then padding
        rows[i, : len(ids)] = ids
    cols = clf.postprocess(rows)
    assert cols["aegis_pred"] == ["safe", "O3", "unknown", "unknown"]
    assert cols["_aegis_raw_pred"] == answers
    assert set(cols["aegis_pred"]) <= set(AEGIS_LABELS)


def test_classifier_pickles_without_its_tokenizer(llm):
    base, adapter, _ = llm
    clf = AegisClassifier(model=str(base), adapter=str(adapter))
    clf.decode_tokenizer()
    assert getattr(clf, "_tokenizer", None) is not None
    clone = pickle.loads(pickle.dumps(clf))
    assert "_tokenizer" not in clone.__dict__
    assert clone.cache_key() == clf.cache_key()
    assert clone.decode_tokenizer() is clf.decode_tokenizer()  # found in this worker's cache, not reloaded


def test_adapter_that_does_not_fit_is_refused(tmp_path, llm):
    from safetensors.torch import load_file, save_file

    base, adapter, _ = llm
    bad = tmp_path / "adapter"
    shutil.copytree(adapter, bad)
    state = load_file(str(bad / "adapter_model.safetensors"))
    key = next(k for k in state if "q_proj.lora_A" in k)
    state[key.replace("q_proj", "x_proj")] = state.pop(key)
    save_file(state, str(bad / "adapter_model.safetensors"))
    with pytest.raises(ModelArtifactError, match="x_proj"):
        AegisClassifier(model=str(base), adapter=str(bad)).preflight()
    with pytest.raises(ModelArtifactError, match="adapter_config.json"):
        AegisClassifier(model=str(base), adapter=str(base)).preflight()


def test_missing_base_weight_is_refused(tmp_path, llm):
    from safetensors.torch import load_file, save_file

    base, adapter, _ = llm
    bad = tmp_path / "base"
    shutil.copytree(base, bad)
    state = load_file(str(bad / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelArtifactError, match="up_proj"):
        AegisClassifier(model=str(bad), adapter=str(adapter)).preflight()


def test_missing_peft_gives_a_clear_error(monkeypatch):
    from sparkcurate.models.llm import attach_adapter

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r"sparkcurate\[peft\]"):
        attach_adapter(object(), "unused")


# ------------------------------------------------------------------------------------- instruction-data guard


def test_guard_scores_equal_nemo_reference(llm, reference_lm):
    """NeMo: left padding, pad = unk, ``generate(max_new_tokens=1, output_hidden_states=True)``, the last layer's
    state at the last position, then InstructionDataGuardNet."""
    import torch

    base, adapter, head = llm
    tok, model = reference_lm
    texts = [t for t in tm.SAMPLE_TEXTS if t] + list(tm.topic_texts().values())
    clf = InstructionDataGuardClassifier(model=str(base), adapter=str(adapter), guard_model=str(head), batch_size=4)
    out = classify_texts(clf, texts)
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=4096)
    with torch.no_grad():
        res = model.generate(**enc, max_new_tokens=1, pad_token_id=0, output_hidden_states=True,
                             return_dict_in_generate=True)
    ref = tm.instruction_guard_forward(head, res.hidden_states[0][-1][:, -1, :]).flatten().numpy()
    tok.padding_side = "right"
    np.testing.assert_allclose(out["instruction_data_guard_poisoning_score"], ref, atol=1e-4)
    assert 0 < (ref >= 0.5).sum() < len(ref), "the tiny head should flag some texts and not others"
    away = np.abs(ref - 0.5) > 1e-3
    assert (np.asarray(out["is_poisoned"])[away] == (ref >= 0.5)[away]).all()
    np.testing.assert_allclose(clf.confidence(ref.reshape(-1, 1).astype(np.float32)), ref, atol=1e-6)


def test_guard_head_must_fit_the_backbone(tmp_path, llm):
    base, adapter, _ = llm
    wrong = tm.make_instruction_guard_head(tmp_path / "wrong", hidden=16)
    with pytest.raises(ModelArtifactError, match="hidden size"):
        InstructionDataGuardClassifier(model=str(base), adapter=str(adapter), guard_model=str(wrong)).preflight()
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["input_dim"] = 32
    (wrong / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelArtifactError, match="wrong shape"):
        InstructionDataGuardClassifier(model=str(base), adapter=str(adapter), guard_model=str(wrong)).preflight()


# ------------------------------------------------------------------------------------------------------ Spark


def test_aegis_through_spark(llm, spark):
    """The DataFrame API: the classifier crosses to a Python worker without a tokenizer and decodes there."""
    base, adapter, _ = llm
    clf = AegisClassifier(model=str(base), adapter=str(adapter), max_tokens=256, max_new_tokens=4,
                          keep_raw_pred=True)
    expected = classify_texts(clf, TEXTS[:2])
    df = spark.createDataFrame([(i, t) for i, t in enumerate(TEXTS[:2])] + [(2, None)], "id int, text string")
    rows = sorted(clf(df).collect(), key=lambda r: r["id"])
    assert [r["aegis_pred"] for r in rows] == expected["aegis_pred"] + [None]
    assert [r["_aegis_raw_pred"] for r in rows] == expected["_aegis_raw_pred"] + [None]


@pytest.mark.parametrize("kind", ["aegis", "instruction-data-guard"])
def test_pipeline_does_not_repeat_the_preflight(llm, spark, tmp_path, kind):
    """The command pre-flights every classifier before Spark starts; ``pipeline.run`` then finds
    ``preflight_info`` set and does not check the 7B artifacts a second time."""
    from sparkcurate.io.listing import InputError
    from sparkcurate.pipeline import JobOptions, run

    base, adapter, head = llm
    if kind == "aegis":
        clf = AegisClassifier(model=str(base), adapter=str(adapter))
    else:
        clf = InstructionDataGuardClassifier(model=str(base), adapter=str(adapter), guard_model=str(head))
    calls = []
    checks = clf.preflight

    def counted():
        calls.append(1)
        return checks()

    clf.preflight = counted
    info = clf.preflight()  # as the command does
    assert clf.preflight_info == info and info["adapter"] == str(adapter) and info["fingerprint"]
    with pytest.raises(InputError):  # the run stops at listing the (missing) input, after its pre-flight step
        run(spark, JobOptions(input=str(tmp_path / "missing"), output=str(tmp_path / "out"), classifiers=[clf]))
    assert len(calls) == 1
