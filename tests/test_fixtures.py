"""Tests of the tiny-model fixtures: every builder writes loadable artifacts in the published layout, and the
reference math runs and behaves as the published models do (probabilities, label order, decisive heads)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

try:  # `python -m pytest` puts the repo root on sys.path; plain `pytest` (rootdir insertion) puts tests/ there
    from tests.fixtures import reference_math as rm
    from tests.fixtures import tiny_models as tm
except ModuleNotFoundError:  # pragma: no cover - depends on how pytest was started
    from fixtures import reference_math as rm  # type: ignore[no-redef]
    from fixtures import tiny_models as tm  # type: ignore[no-redef]

TEXTS = tm.SAMPLE_TEXTS + list(tm.topic_texts().values())


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _safetensors_keys(path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


# ---------------------------------------------------------------------------------------------------- tokenizer


def test_deberta_tokenizer_files_and_special_ids(tmp_path):
    from transformers import AutoTokenizer

    out = tm.make_deberta_tokenizer(tmp_path / "tok")
    assert out == (tmp_path / "tok").resolve()
    for name in tm.DEBERTA_TOKENIZER_FILES:
        assert (out / name).is_file(), name
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok("The football team won the match.")["input_ids"]
    assert ids[0] == tok.cls_token_id == 1 and ids[-1] == tok.sep_token_id == 2
    assert tok.pad_token_id == 0 and tok.unk_token_id == 3
    assert len(ids) > 4 and tok.unk_token_id not in ids
    added = json.loads((out / "added_tokens.json").read_text())
    assert added == {"[MASK]": tok.mask_token_id}
    assert tok.mask_token_id == len(tok) - 1 == tm.deberta_tokenizer_length() - 1
    assert 500 <= len(tok) <= 1000


def test_deberta_tokenizer_is_deterministic_and_truncates(tmp_path):
    from transformers import AutoTokenizer

    a = tm.make_deberta_tokenizer(tmp_path / "a")
    b = tm.make_deberta_tokenizer(tmp_path / "b", model_max_length=1024)
    assert (a / "spm.model").read_bytes() == (b / "spm.model").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert json.loads((b / "tokenizer_config.json").read_text())["model_max_length"] == 1024
    tok = AutoTokenizer.from_pretrained(str(a))
    ids = tok(TEXTS[10], truncation=True, max_length=16)["input_ids"]
    assert len(ids) == 16 and ids[0] == 1 and ids[-1] == 2


# ---------------------------------------------------------------------------------------------- backbone config


def test_backbone_config_is_v3_shaped(tmp_path):
    from transformers import AutoConfig, AutoModel

    out = tm.make_deberta_backbone_config(tmp_path / "bb", hidden=32, layers=1, heads=2, intermediate=64)
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    raw = json.loads((out / "config.json").read_text())
    assert raw["model_type"] == "deberta-v2" and raw["position_biased_input"] is False
    assert raw["vocab_size"] >= tm.deberta_tokenizer_length()
    cfg = AutoConfig.from_pretrained(str(out))
    assert cfg.model_type == "deberta-v2" and cfg.relative_attention and cfg.share_att_key
    assert list(cfg.pos_att_type) == ["p2c", "c2p"] and cfg.norm_rel_ebd == "layer_norm"
    assert cfg.hidden_size == 32 and cfg.num_hidden_layers == 1
    model = AutoModel.from_config(cfg)
    assert type(model).__name__ == "DebertaV2Model"
    assert not any("position_embeddings" in k for k in model.state_dict())


# ---------------------------------------------------------------------------------------------- DeBERTa head


def _expected_deberta_keys(base_model: str, prefix: str) -> set[str]:
    from transformers import AutoConfig, AutoModel

    model = AutoModel.from_config(AutoConfig.from_pretrained(base_model))
    return {prefix + k for k in model.state_dict()}


def test_deberta_classifier_layout(tmp_path):
    out = tm.make_deberta_classifier(tmp_path / "q", tm.QUALITY_LABELS)
    for name in ("config.json", "model.safetensors", *tm.DEBERTA_TOKENIZER_FILES):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["fc_dropout"] == 0.2 and cfg["model_type"] == "deberta-v2"
    assert os.path.isabs(cfg["base_model"]) and os.path.isfile(os.path.join(cfg["base_model"], "config.json"))
    assert cfg["id2label"] == {"0": "High", "1": "Medium", "2": "Low"}
    assert cfg["label2id"] == {"High": 0, "Medium": 1, "Low": 2}
    ids_in_json_order = list(cfg["label2id"].values())
    assert ids_in_json_order != sorted(ids_in_json_order), "label2id must be written out of id order"
    keys = _safetensors_keys(out / "model.safetensors")
    assert set(keys) == _expected_deberta_keys(cfg["base_model"], "model.") | {"fc.weight", "fc.bias"}
    assert len(keys) == len(set(keys))
    assert not any("position_ids" in k for k in keys)


def test_deberta_classifier_optional_config_fields(tmp_path):
    out = tm.make_deberta_classifier(tmp_path / "d", tm.DOMAIN_LABELS, with_labels_in_config=False,
                                     with_model_type=False, base_model=str(tm.make_deberta_backbone_config(
                                         tmp_path / "shared_base")))
    cfg = json.loads((out / "config.json").read_text())
    assert "id2label" not in cfg and "label2id" not in cfg and "model_type" not in cfg
    assert cfg["base_model"] == str((tmp_path / "shared_base").resolve())
    assert not (out / "base_model").exists()
    from safetensors.torch import load_file

    assert load_file(str(out / "model.safetensors"))["fc.weight"].shape[0] == len(tm.DOMAIN_LABELS)


def test_deberta_classifier_is_deterministic_per_seed(tmp_path):
    from safetensors.torch import load_file

    base = str(tm.make_deberta_backbone_config(tmp_path / "base"))
    a = load_file(str(tm.make_deberta_classifier(tmp_path / "a", ["x", "y"], seed=5, base_model=base)
                      / "model.safetensors"))
    b = load_file(str(tm.make_deberta_classifier(tmp_path / "b", ["x", "y"], seed=5, base_model=base)
                      / "model.safetensors"))
    c = load_file(str(tm.make_deberta_classifier(tmp_path / "c", ["x", "y"], seed=6, base_model=base)
                      / "model.safetensors"))
    assert all(bool((a[k] == b[k]).all()) for k in a)
    assert not bool((a["fc.weight"] == c["fc.weight"]).all())


def test_reference_probs_sum_to_one_and_vary(tmp_path):
    out = tm.make_deberta_classifier(tmp_path / "q", tm.QUALITY_LABELS)
    probs = rm.reference_deberta_probs(out, TEXTS, max_chars=6000, max_tokens=1024)
    assert probs.shape == (len(TEXTS), 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs >= 0).all()
    assert len(set(probs.argmax(axis=1).tolist())) >= 2, "tiny model must not predict one label for everything"


def test_reference_label_order_follows_label2id_ids(tmp_path):
    """Columns follow the ids, whatever order label2id's keys are written in."""
    import torch
    from safetensors.torch import load_file

    labels = ["zeta", "alpha", "mid"]  # not sorted: a name-sorting bug would permute columns
    out = tm.make_deberta_classifier(tmp_path / "c", labels, head_spread=4.0)
    assert rm.labels_by_id(out) == labels
    cfg = json.loads((out / "config.json").read_text())
    assert list(cfg["label2id"]) == ["mid", "alpha", "zeta"]
    probs = rm.reference_deberta_probs(out, TEXTS[:3], max_chars=None, max_tokens=512)
    # Make label 2 ("mid") win by a wide margin through its bias only: column 2 must be the winner.
    state = load_file(str(out / "model.safetensors"))
    state["fc.bias"] = torch.tensor([0.0, 0.0, 50.0])
    from safetensors.torch import save_file

    save_file(state, str(out / "model.safetensors"))
    boosted = rm.reference_deberta_probs(out, TEXTS[:3], max_chars=None, max_tokens=512)
    assert (boosted.argmax(axis=1) == 2).all()
    assert not np.allclose(probs, boosted)


def test_reference_applies_max_chars_before_tokenizing(tmp_path):
    out = tm.make_deberta_classifier(tmp_path / "q", tm.QUALITY_LABELS)
    long_text = TEXTS[10]
    clipped = rm.reference_deberta_probs(out, [long_text], max_chars=30, max_tokens=512)
    direct = rm.reference_deberta_probs(out, [long_text[:30]], max_chars=None, max_tokens=512)
    full = rm.reference_deberta_probs(out, [long_text], max_chars=None, max_tokens=512)
    np.testing.assert_allclose(clipped, direct, atol=1e-7)
    assert not np.allclose(clipped, full, atol=1e-4)


def _margins(probs: np.ndarray) -> np.ndarray:
    top = np.sort(probs, axis=1)
    return top[:, -1] - top[:, -2]


def _min_margin(probs: np.ndarray) -> float:
    return float(_margins(probs).min())


def test_head_spread_makes_predictions_decisive(tmp_path):
    base = str(tm.make_deberta_backbone_config(tmp_path / "base"))
    soft = tm.make_deberta_classifier(tmp_path / "s", tm.QUALITY_LABELS, base_model=base, head_spread=1.0)
    hard = tm.make_deberta_classifier(tmp_path / "h", tm.QUALITY_LABELS, base_model=base, head_spread=4.0)
    p_soft = rm.reference_deberta_probs(soft, TEXTS, max_chars=6000, max_tokens=1024)
    p_hard = rm.reference_deberta_probs(hard, TEXTS, max_chars=6000, max_tokens=1024)
    assert (p_soft.argmax(1) == p_hard.argmax(1)).all(), "scaling fc.weight keeps the ranking of labels"
    assert p_hard.max(axis=1).mean() > p_soft.max(axis=1).mean() + 0.1
    # Logit gaps scale with head_spread (a temperature), so most texts get a wide probability margin; texts
    # near a tie stay near a tie, so tests needing stable argmax should pick texts by reference margin.
    assert _min_margin(p_hard) > _min_margin(p_soft)
    assert np.mean(_margins(p_hard) > 0.1) >= 0.8


# ---------------------------------------------------------------------------------------------- legacy .pth


@pytest.mark.parametrize("wrap", ["model_state_dict", None])
@pytest.mark.parametrize("module_prefix", [False, True])
@pytest.mark.parametrize("with_position_ids", [True, False])
def test_legacy_pth_variants(tmp_path, wrap, module_prefix, with_position_ids):
    import torch

    base = str(tm.make_deberta_backbone_config(tmp_path / "base"))
    out = tm.make_legacy_pth_classifier(tmp_path / "legacy", tm.QUALITY_LABELS, wrap=wrap,
                                        module_prefix=module_prefix, with_position_ids=with_position_ids,
                                        base_model=base)
    assert not (out / "model.safetensors").exists()
    for name in ("config.json", *tm.DEBERTA_TOKENIZER_FILES):
        assert (out / name).is_file(), name
    payload = torch.load(str(out / tm.LEGACY_PTH_NAME), map_location="cpu", weights_only=True)
    state = payload[wrap] if wrap else payload
    if wrap:
        assert list(payload) == [wrap]
    prefix = "module." if module_prefix else ""
    assert all(k.startswith(prefix + "model.") or k in (prefix + "fc.weight", prefix + "fc.bias") for k in state)
    expected = {prefix + k for k in _expected_deberta_keys(base, "model.") | {"fc.weight", "fc.bias"}}
    if with_position_ids:
        expected.add(prefix + "model.embeddings.position_ids")
        assert state[prefix + "model.embeddings.position_ids"].shape == (1, 512)
    assert set(state) == expected


def test_legacy_pth_has_same_math_as_safetensors(tmp_path):
    base = str(tm.make_deberta_backbone_config(tmp_path / "base"))
    new = tm.make_deberta_classifier(tmp_path / "new", tm.QUALITY_LABELS, seed=3, base_model=base)
    old = tm.make_legacy_pth_classifier(tmp_path / "old", tm.QUALITY_LABELS, seed=3, base_model=base,
                                        module_prefix=True)
    np.testing.assert_allclose(rm.reference_deberta_probs(new, TEXTS, 2000, 512),
                               rm.reference_deberta_probs(old, TEXTS, 2000, 512), atol=1e-7)


# ---------------------------------------------------------------------------------------------- FineWeb-Edu


def test_fineweb_edu_classifier_loads_and_spreads(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tm.make_fineweb_edu_classifier(tmp_path / "fw")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["problem_type"] == "regression" and cfg["architectures"] == ["BertForSequenceClassification"]
    model = AutoModelForSequenceClassification.from_pretrained(str(out))
    assert model.config.num_labels == 1
    keys = set(_safetensors_keys(out / "model.safetensors"))
    assert {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight"} <= keys
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok("The Football team won!")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and tok.unk_token_id not in ids
    scores = rm.reference_fineweb_scores(out, TEXTS, max_tokens=512)
    assert scores.shape == (len(TEXTS),) and np.isfinite(scores).all()
    clipped = np.clip(scores, 0, 5)
    assert clipped.min() < 2.0 and clipped.max() > 3.5 and len(np.unique(np.round(clipped))) >= 3
    # reference is deterministic and respects max_chars
    again = rm.reference_fineweb_scores(out, [TEXTS[10]], max_chars=25)
    np.testing.assert_allclose(again, rm.reference_fineweb_scores(out, [TEXTS[10][:25]]), atol=1e-7)


# ---------------------------------------------------------------------------------------------- prompt complexity


def test_prompt_complexity_layout_and_reference(tmp_path):
    out = tm.make_prompt_complexity_classifier(tmp_path / "pc")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["target_sizes"] == tm.PROMPT_TARGET_SIZES
    assert [cfg["task_type_map"][str(i)] for i in range(11)] == tm.PROMPT_TASK_TYPES
    for target, size in cfg["target_sizes"].items():
        if target != "task_type":
            assert len(cfg["weights_map"][target]) == size and cfg["divisor_map"][target] > 0
    keys = set(_safetensors_keys(out / "model.safetensors"))
    heads = {f"head_{i}.fc.{p}" for i in range(len(tm.PROMPT_TARGET_SIZES)) for p in ("weight", "bias")}
    assert keys == _expected_deberta_keys(cfg["base_model"], "backbone.") | heads
    probs = rm.reference_prompt_complexity(out, TEXTS[:6])
    assert list(probs) == list(tm.PROMPT_TARGET_SIZES)
    for target, size in tm.PROMPT_TARGET_SIZES.items():
        assert probs[target].shape == (6, size)
        np.testing.assert_allclose(probs[target].sum(axis=1), 1.0, atol=1e-5)
    scores = rm.prompt_complexity_scores(out, probs)
    assert set(scores) == set(tm.PROMPT_OUTPUT_COLUMNS)
    assert all(name in tm.PROMPT_TASK_TYPES for name in scores["task_type_1"])
    assert all(name in tm.PROMPT_TASK_TYPES + ["NA"] for name in scores["task_type_2"])
    for target in ("creativity_scope", "reasoning", "contextual_knowledge", "number_of_few_shots",
                   "domain_knowledge", "constraint_ct", "prompt_complexity_score"):
        assert all(0.0 <= s <= 1.0 for s in scores[target]), target
    assert scores["no_label_reason"] == [0.0] * 6


# ---------------------------------------------------------------------------------------------- instruction guard


def test_instruction_guard_head_layout_and_spread(tmp_path):
    import torch
    from safetensors.torch import load_file

    out = tm.make_instruction_guard_head(tmp_path / "g", hidden=32)
    assert json.loads((out / "config.json").read_text()) == {"dropout": 0.7, "input_dim": 32}
    state = load_file(str(out / "model.safetensors"))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes == {
        "input_layer.weight": (32, 32), "input_layer.bias": (32,),
        "hidden_layer_0.weight": (2000, 32), "hidden_layer_0.bias": (2000,),
        "hidden_layer_1.weight": (500, 2000), "hidden_layer_1.bias": (500,),
        "hidden_layer_2.weight": (1, 500), "hidden_layer_2.bias": (1,),
    }
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(3))
    scores = tm.instruction_guard_forward(out, x).flatten()
    assert ((scores > 0) & (scores < 1)).all()
    assert (scores >= 0.5).any() and (scores < 0.5).any()
    # normalize() first: the score does not depend on the input's scale
    torch.testing.assert_close(scores, tm.instruction_guard_forward(out, 7.0 * x).flatten())


# ---------------------------------------------------------------------------------------------- Llama + LoRA


def test_tiny_llama_with_lora(tmp_path):
    pytest.importorskip("peft")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir, adapter_dir = tm.make_tiny_llama_with_lora(tmp_path / "llama")
    assert (base_dir / "model.safetensors").is_file() and (adapter_dir / "adapter_model.safetensors").is_file()
    adapter_cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 4 and set(adapter_cfg["target_modules"]) == {"q_proj", "v_proj"}
    assert adapter_cfg["base_model_name_or_path"] == str(base_dir)
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 0)
    enc = tok("Is this text safe?", return_tensors="pt")
    assert enc["input_ids"][0, 0].item() == tok.bos_token_id
    assert tok.decode(enc["input_ids"][0], skip_special_tokens=True) == "Is this text safe?"
    base = AutoModelForCausalLM.from_pretrained(str(base_dir)).eval()
    with torch.no_grad():
        plain = base(**enc).logits
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir)), str(adapter_dir))
    with torch.no_grad():
        adapted = tuned.eval()(**enc).logits
    assert plain.shape == (1, enc["input_ids"].shape[1], len(tok))
    assert float((plain - adapted).abs().max()) > 1e-2


def test_decisive_texts_keeps_only_wide_margins(tmp_path):
    out = tm.make_deberta_classifier(tmp_path / "q", tm.QUALITY_LABELS, head_spread=4.0)
    probs = rm.reference_deberta_probs(out, TEXTS, 2000, 512)
    margins = rm.top2_margins(probs)
    kept = rm.decisive_texts(out, TEXTS, 2000, 512, min_margin=0.1)
    assert kept == [t for t, m in zip(TEXTS, margins) if m >= 0.1]
    assert 0 < len(kept) <= len(TEXTS)


def test_reference_loads_strictly(tmp_path):
    """A checkpoint whose keys do not match the backbone must fail loudly, not leave random weights."""
    from safetensors.torch import load_file, save_file

    out = tm.make_deberta_classifier(tmp_path / "q", tm.QUALITY_LABELS)
    state = load_file(str(out / "model.safetensors"))
    state["model.encoder.LayerNorm.weightX"] = state.pop("model.encoder.LayerNorm.weight")
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(RuntimeError, match="LayerNorm"):
        rm.reference_deberta_probs(out, TEXTS[:1], 2000, 512)


def test_quality_shaped_model_runs_past_512_tokens(tmp_path):
    """Like DeBERTa-v3 (no absolute positions), the tiny backbone runs 1024-token inputs with 512 positions."""
    from transformers import AutoTokenizer

    out = tm.make_deberta_classifier(tmp_path / "q", tm.QUALITY_LABELS, max_tokens=1024)
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 1024
    text = "The scientist measured every particle in the laboratory. " * 120
    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok(text[:6000], truncation=True, max_length=1024)["input_ids"]) == 1024
    p1024 = rm.reference_deberta_probs(out, [text], 6000, 1024)
    p512 = rm.reference_deberta_probs(out, [text], 6000, 512)
    np.testing.assert_allclose(p1024.sum(), 1.0, atol=1e-5)
    assert not np.allclose(p1024, p512, atol=1e-4)
