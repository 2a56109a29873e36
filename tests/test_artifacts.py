"""Malformed model artifacts: every one is a ModelArtifactError of one line naming the file and the field.

Each case takes a valid tiny model of one family (built once per module), corrupts one field of one file (a
safetensors header entry, a config field, a label map, a base config, a tokenizer file, an adapter config, a
guard-head config) and runs the pre-flight check. Before the checks in ``sparkcurate.models.artifacts`` most of
these failed with a TypeError, KeyError, AttributeError or ZeroDivisionError and a traceback (exit 1).
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
from pathlib import Path
from typing import Any, Callable

import pytest

from sparkcurate.classifiers import (
    AegisClassifier,
    DomainClassifier,
    FineWebEduClassifier,
    InstructionDataGuardClassifier,
    PromptTaskComplexityClassifier,
)
from sparkcurate.cli import EXIT_MODEL, main
from sparkcurate.models.loading import ModelArtifactError
from tests.conftest import SAMPLES
from tests.fixtures import tiny_models as tm

LABELS = ["alpha", "beta", "gamma"]


# ----------------------------------------------------------------------------------------------------------
# Valid models, one per family, and copies that a case corrupts
# ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> Callable[[str], Path]:
    """A builder of valid models by family, each built once for the module, on first use."""
    root = tmp_path_factory.mktemp("valid")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            if family == "deberta":
                built[family] = tm.make_deberta_classifier(root / "deberta", LABELS, seed=5)
            elif family == "prompt":
                built[family] = tm.make_prompt_complexity_classifier(root / "prompt")
            elif family == "fineweb":
                built[family] = tm.make_fineweb_edu_classifier(root / "fineweb")
            elif family == "llama":
                tm.make_tiny_llama_with_lora(root / "llama")
                tm.make_instruction_guard_head(root / "llama" / "guard", hidden=32)
                built[family] = root / "llama"
        return built[family]

    return get


def _copy(src: Path, dst: Path) -> Path:
    """A copy whose config points at its own base model (the builders write absolute ``base_model`` paths)."""
    shutil.copytree(src, dst)
    for config in dst.rglob("config.json"):
        data = json.loads(config.read_text(encoding="utf-8"))
        if isinstance(data.get("base_model"), str) and data["base_model"].startswith(str(src)):
            data["base_model"] = str(dst) + data["base_model"][len(str(src)):]
            config.write_text(json.dumps(data), encoding="utf-8")
    return dst


def _classifier(family: str, model: Path):
    """The classifier whose pre-flight reads every artifact of ``model`` (for the Llama family: base model,
    adapter and guard head)."""
    if family == "deberta":
        return DomainClassifier(model=str(model))
    if family == "prompt":
        return PromptTaskComplexityClassifier(model=str(model))
    if family == "fineweb":
        return FineWebEduClassifier(model=str(model))
    if family == "llama":
        return InstructionDataGuardClassifier(model=str(model / "base"), adapter=str(model / "adapter"),
                                              guard_model=str(model / "guard"))
    if family == "aegis":
        return AegisClassifier(model=str(model / "base"), adapter=str(model / "adapter"))
    raise ValueError(family)


# ----------------------------------------------------------------------------------------------------------
# Corruptions: one field of one file
# ----------------------------------------------------------------------------------------------------------

_MISSING = object()


def set_json(key: str, value: Any) -> Callable[[Any], Any]:
    """Set (or with ``_MISSING`` delete) one top-level field of a JSON object."""

    def change(data: Any) -> Any:
        if value is _MISSING:
            data.pop(key, None)
        else:
            data[key] = value
        return data

    return change


def replace_json(value: Any) -> Callable[[Any], Any]:
    """Replace the whole JSON document."""
    return lambda _data: value


def first_tensor(key: str, value: Any) -> Callable[[Any], Any]:
    """Set (or with ``_MISSING`` delete) one field of the first tensor entry of a safetensors header."""

    def change(header: dict) -> dict:
        name = next(k for k in header if k != "__metadata__")
        if value is _MISSING:
            del header[name][key]
        else:
            header[name][key] = value
        return header

    return change


def first_entry(value: Any) -> Callable[[Any], Any]:
    def change(header: dict) -> dict:
        header[next(k for k in header if k != "__metadata__")] = value
        return header

    return change


def shifted_offsets(header: dict) -> dict:
    """Every tensor four bytes further on: a gap before the first one."""
    for name, info in header.items():
        if name != "__metadata__":
            info["data_offsets"] = [info["data_offsets"][0] + 4, info["data_offsets"][1] + 4]
    return header


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    path.write_text(json.dumps(change(data)), encoding="utf-8")


def edit_header(path: Path, change: Callable[[Any], Any], tail: bytes = b"") -> None:
    """Rewrite a safetensors file's JSON header (padded to 8 bytes as the format does), keeping its tensors."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = change(json.loads(data[8:8 + length]))
    raw = json.dumps(header).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:] + tail)


def write_index(weight_map: Any) -> Callable[[Any], Any]:
    """A sharded-checkpoint index (``model.safetensors.index.json``) with this ``weight_map``."""
    return replace_json({"metadata": {}, "weight_map": weight_map} if weight_map is not _MISSING else {"metadata": {}})


HEADER = "model.safetensors"
BASE = "base_model/config.json"

# (family, file relative to the model, change, kind of change, what the message must name besides the file)
CASES: dict[str, tuple[str, str, Callable[[Any], Any], str, str]] = {
    # safetensors headers
    "header_is_a_list": ("deberta", HEADER, replace_json([1, 2]), "header", "header"),
    "header_is_a_number": ("deberta", HEADER, replace_json(7), "header", "header"),
    "header_is_a_string": ("deberta", HEADER, replace_json("tensors"), "header", "header"),
    "header_is_null": ("deberta", HEADER, replace_json(None), "header", "header"),
    "entry_is_a_list": ("deberta", HEADER, first_entry([0, 4]), "header", "must be an object"),
    "entry_without_shape": ("deberta", HEADER, first_tensor("shape", _MISSING), "header", "'shape'"),
    "entry_without_dtype": ("deberta", HEADER, first_tensor("dtype", _MISSING), "header", "'dtype'"),
    "entry_without_offsets": ("deberta", HEADER, first_tensor("data_offsets", _MISSING), "header",
                              "'data_offsets'"),
    "shape_is_a_string": ("deberta", HEADER, first_tensor("shape", "64"), "header", "shape"),
    "shape_has_a_float": ("deberta", HEADER, first_tensor("shape", [2.5]), "header", "shape"),
    "shape_has_a_bool": ("deberta", HEADER, first_tensor("shape", [True, 3]), "header", "shape"),
    "shape_is_negative": ("deberta", HEADER, first_tensor("shape", [-3]), "header", "shape"),
    "dtype_is_a_number": ("deberta", HEADER, first_tensor("dtype", 4), "header", "dtype"),
    "dtype_is_unknown": ("deberta", HEADER, first_tensor("dtype", "F33"), "header", "dtype"),
    "offsets_are_a_string": ("deberta", HEADER, first_tensor("data_offsets", "0,12"), "header", "data_offsets"),
    "offsets_have_one_number": ("deberta", HEADER, first_tensor("data_offsets", [12]), "header", "data_offsets"),
    "offsets_are_strings": ("deberta", HEADER, first_tensor("data_offsets", ["0", "12"]), "header",
                            "data_offsets"),
    "offsets_run_backwards": ("deberta", HEADER, first_tensor("data_offsets", [12, 0]), "header", "data_offsets"),
    "offsets_leave_a_gap": ("deberta", HEADER, shifted_offsets, "header", "data_offsets"),
    "metadata_is_a_list": ("deberta", HEADER, set_json("__metadata__", ["pt"]), "header", "__metadata__"),
    "metadata_holds_a_number": ("deberta", HEADER, set_json("__metadata__", {"format": 1}), "header",
                                "__metadata__"),
    "adapter_header_is_a_list": ("aegis", "adapter/adapter_model.safetensors", replace_json([]), "header",
                                 "header"),
    "base_lm_shape_is_a_string": ("aegis", "base/model.safetensors", first_tensor("shape", "32"), "header",
                                  "shape"),
    "guard_head_entry_without_shape": ("llama", "guard/model.safetensors", first_tensor("shape", _MISSING),
                                       "header", "'shape'"),
    # the head's config.json and its label maps
    "label2id_is_a_list": ("deberta", "config.json", set_json("label2id", LABELS), "json", "label2id"),
    "label2id_ids_are_strings": ("deberta", "config.json", set_json("label2id", {"alpha": "0", "beta": "1",
                                                                                 "gamma": "2"}), "json", "label2id"),
    "label2id_ids_have_a_gap": ("deberta", "config.json", set_json("label2id", {"alpha": 0, "beta": 2,
                                                                                "gamma": 3}), "json", "label2id"),
    "label2id_ids_are_bools": ("deberta", "config.json", set_json("label2id", {"alpha": False, "beta": True}),
                               "json", "label2id"),
    "id2label_is_a_list": ("deberta", "config.json", set_json("id2label", LABELS), "json", "id2label"),
    "id2label_is_a_string": ("deberta", "config.json", set_json("id2label", "alpha,beta"), "json", "id2label"),
    "id2label_keys_are_names": ("deberta", "config.json", set_json("id2label", {"a": "alpha", "b": "beta"}),
                                "json", "id2label"),
    "id2label_labels_are_numbers": ("deberta", "config.json", set_json("id2label", {"0": 0, "1": 1, "2": 2}),
                                    "json", "id2label"),
    "id2label_skips_an_id": ("deberta", "config.json", set_json("id2label", {"0": "alpha", "2": "gamma"}),
                             "json", "id2label"),
    "fc_dropout_is_a_string": ("deberta", "config.json", set_json("fc_dropout", "0.2"), "json", "fc_dropout"),
    "fc_dropout_above_one": ("deberta", "config.json", set_json("fc_dropout", 1.5), "json", "fc_dropout"),
    "base_model_is_a_number": ("deberta", "config.json", set_json("base_model", 5), "json", "base_model"),
    "base_model_is_a_list": ("deberta", "config.json", set_json("base_model", ["microsoft/deberta-v3-base"]),
                             "json", "base_model"),
    "model_type_is_a_list": ("deberta", "config.json", set_json("model_type", ["deberta-v2"]), "json",
                             "model_type"),
    "architectures_is_a_string": ("deberta", "config.json", set_json("architectures", "DebertaV2Model"), "json",
                                  "architectures"),
    "config_is_a_list": ("deberta", "config.json", replace_json([{"base_model": "x"}]), "json", "JSON object"),
    # the base model's config
    "base_heads_zero": ("deberta", BASE, set_json("num_attention_heads", 0), "json", "num_attention_heads"),
    "base_hidden_size_is_a_string": ("deberta", BASE, set_json("hidden_size", "64"), "json", "hidden_size"),
    "base_hidden_size_is_a_float": ("deberta", BASE, set_json("hidden_size", 64.0), "json", "hidden_size"),
    "base_heads_do_not_divide": ("deberta", BASE, set_json("num_attention_heads", 3), "json",
                                 "num_attention_heads"),
    "base_layers_null": ("deberta", BASE, set_json("num_hidden_layers", None), "json", "num_hidden_layers"),
    "base_vocab_negative": ("deberta", BASE, set_json("vocab_size", -5), "json", "vocab_size"),
    "base_intermediate_is_a_bool": ("deberta", BASE, set_json("intermediate_size", True), "json",
                                    "intermediate_size"),
    "base_positions_is_a_string": ("deberta", BASE, set_json("max_position_embeddings", "512"), "json",
                                   "max_position_embeddings"),
    "base_model_type_unknown": ("deberta", BASE, set_json("model_type", "not-a-model"), "json", "model_type"),
    "base_model_type_missing": ("deberta", BASE, set_json("model_type", _MISSING), "json", "model_type"),
    "base_eps_zero": ("deberta", BASE, set_json("layer_norm_eps", 0), "json", "layer_norm_eps"),
    "base_dropout_is_a_string": ("deberta", BASE, set_json("hidden_dropout_prob", "0.1"), "json",
                                 "hidden_dropout_prob"),
    "base_type_vocab_negative": ("deberta", BASE, set_json("type_vocab_size", -1), "json", "type_vocab_size"),
    "base_hidden_act_is_a_number": ("deberta", BASE, set_json("hidden_act", 1), "json", "hidden_act"),
    # fields only transformers reads: its refusal, naming the file (and the field, where transformers does)
    "base_initializer_range_is_a_string": ("deberta", BASE, set_json("initializer_range", "x"), "json",
                                           "initializer_range"),
    "generation_early_stopping_is_a_string": ("aegis", "base/generation_config.json",
                                              set_json("early_stopping", "x"), "json", "early_stopping"),
    "fineweb_hidden_act_unknown": ("fineweb", "config.json", set_json("hidden_act", "no-such-act"), "json",
                                   "no-such-act"),
    "base_config_is_a_number": ("deberta", BASE, replace_json(3), "json", "JSON object"),
    # tokenizer files
    "tokenizer_config_is_a_list": ("deberta", "tokenizer_config.json", replace_json([]), "json", "JSON object"),
    "added_tokens_decoder_is_a_list": ("deberta", "tokenizer_config.json", set_json("added_tokens_decoder", []),
                                       "json", "added_tokens_decoder"),
    "config_pad_token_is_a_number": ("deberta", "tokenizer_config.json", set_json("pad_token", 0), "json",
                                     "pad_token"),
    "model_max_length_is_a_string": ("deberta", "tokenizer_config.json", set_json("model_max_length", "long"),
                                     "json", "model_max_length"),
    "special_token_is_a_number": ("deberta", "special_tokens_map.json", set_json("pad_token", 0), "json",
                                  "pad_token"),
    "added_token_id_is_a_string": ("deberta", "added_tokens.json", set_json("[MASK]", "800"), "json", "[MASK]"),
    "tokenizer_model_is_a_list": ("deberta", "tokenizer.json", set_json("model", []), "json", "model"),
    "tokenizer_added_tokens_is_an_object": ("deberta", "tokenizer.json", set_json("added_tokens", {}), "json",
                                            "added_tokens"),
    # a sharded checkpoint's index
    "index_weight_map_is_a_list": ("deberta", "model.safetensors.index.json", write_index(["model.safetensors"]),
                                   "json", "weight_map"),
    "index_weight_map_leaves_the_folder": ("deberta", "model.safetensors.index.json",
                                           write_index({"fc.bias": "../model.safetensors"}), "json", "weight_map"),
    "index_without_weight_map": ("deberta", "model.safetensors.index.json", write_index(_MISSING), "json",
                                 "weight_map"),
    # the prompt task/complexity model's maps
    "target_sizes_is_a_list": ("prompt", "config.json", set_json("target_sizes", [11, 3]), "json",
                               "target_sizes"),
    "target_size_is_a_string": ("prompt", "config.json",
                                lambda c: {**c, "target_sizes": {**c["target_sizes"], "reasoning": "2"}}, "json",
                                "target_sizes"),
    "task_type_map_is_a_list": ("prompt", "config.json", set_json("task_type_map", ["Open QA"]), "json",
                                "task_type_map"),
    "weights_map_holds_a_string": ("prompt", "config.json",
                                   lambda c: {**c, "weights_map": {**c["weights_map"], "reasoning": "0,1"}}, "json",
                                   "weights_map"),
    "divisor_is_zero": ("prompt", "config.json",
                        lambda c: {**c, "divisor_map": {**c["divisor_map"], "reasoning": 0}}, "json",
                        "divisor_map"),
    # a full transformers model (FineWeb-Edu keeps its label maps)
    "fineweb_id2label_is_a_list": ("fineweb", "config.json", set_json("id2label", ["LABEL_0"]), "json",
                                   "id2label"),
    "fineweb_hidden_size_zero": ("fineweb", "config.json", set_json("hidden_size", 0), "json", "hidden_size"),
    # LlamaGuard base, PEFT adapter, guard head
    "llama_kv_heads_do_not_divide": ("aegis", "base/config.json", set_json("num_key_value_heads", 3), "json",
                                     "num_key_value_heads"),
    "llama_rms_eps_is_a_string": ("aegis", "base/config.json", set_json("rms_norm_eps", "1e-5"), "json",
                                  "rms_norm_eps"),
    "generation_config_is_a_list": ("aegis", "base/generation_config.json", replace_json([]), "json",
                                    "JSON object"),
    "generation_max_new_tokens_is_a_string": ("aegis", "base/generation_config.json",
                                              set_json("max_new_tokens", "ten"), "json", "max_new_tokens"),
    "generation_eos_is_a_string": ("aegis", "base/generation_config.json", set_json("eos_token_id", "</s>"),
                                   "json", "eos_token_id"),
    "llama_eos_id_is_an_object": ("aegis", "base/config.json", set_json("eos_token_id", {"id": 2}), "json",
                                  "eos_token_id"),
    "adapter_rank_is_a_string": ("aegis", "adapter/adapter_config.json", set_json("r", "4"), "json", "'r'"),
    "adapter_peft_type_is_a_list": ("aegis", "adapter/adapter_config.json", set_json("peft_type", ["LORA"]),
                                    "json", "peft_type"),
    "adapter_target_modules_is_a_number": ("aegis", "adapter/adapter_config.json", set_json("target_modules", 2),
                                           "json", "target_modules"),
    "adapter_config_is_a_list": ("aegis", "adapter/adapter_config.json", replace_json([]), "json",
                                 "JSON object"),
    "guard_input_dim_is_a_string": ("llama", "guard/config.json", set_json("input_dim", "32"), "json",
                                    "input_dim"),
    "guard_dropout_above_one": ("llama", "guard/config.json", set_json("dropout", 7), "json", "dropout"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_artifact_is_one_line_naming_file_and_field(case, valid, tmp_path):
    family, rel, change, kind, field = CASES[case]
    model = _copy(valid("llama" if family == "aegis" else family), tmp_path / "model")
    path = model / rel
    if kind == "header":
        edit_header(path, change)
    else:
        edit_json(path, change)
    with pytest.raises(ModelArtifactError) as info:
        _classifier(family, model).preflight()
    message = str(info.value)
    assert str(path) in message and field in message, message
    assert "\n" not in message


def test_bytes_after_the_last_tensor_are_refused(valid, tmp_path):
    """The safetensors library refuses a file that its tensors do not cover to the end: so does the pre-flight,
    on the driver, instead of the first task on an executor."""
    model = _copy(valid("deberta"), tmp_path / "model")
    edit_header(model / HEADER, lambda h: h, tail=b"\0" * 8)
    with pytest.raises(ModelArtifactError, match="8 bytes after the last tensor.*data_offsets"):
        _classifier("deberta", model).preflight()


@pytest.mark.parametrize("family", ["deberta", "prompt", "fineweb", "llama", "aegis"])
def test_valid_models_pass_the_checks(family, valid, tmp_path):
    """The checks refuse nothing that the builders (laid out as the published checkpoints) write."""
    model = _copy(valid("llama" if family == "aegis" else family), tmp_path / "model")
    assert _classifier(family, model).preflight()["fingerprint"]


def test_error_messages_are_one_line():
    """Wrapped errors (transformers' messages span lines) still print as one line."""
    assert str(ModelArtifactError("config.json: bad\n  field 'x'\n")) == "config.json: bad field 'x'"


def test_command_exits_3_with_one_line_and_writes_nothing(valid, tmp_path, monkeypatch, caplog):
    """The command turns a malformed artifact into exit 3 and one error line, no traceback, before Spark starts;
    the output folder is not created."""
    import sparkcurate.spark.session

    def no_spark(*_args, **_kwargs):
        raise AssertionError("Spark must not start")

    monkeypatch.setattr(sparkcurate.spark.session, "get_session", no_spark)
    model = _copy(valid("deberta"), tmp_path / "model")
    edit_json(model / BASE, set_json("num_attention_heads", 0))
    out = tmp_path / "out"
    caplog.set_level(logging.INFO)
    code = main(["classify", "--input", str(SAMPLES), "--output", str(out), "--classifier", "domain",
                 "--model", str(model), "--device", "cpu"])
    assert code == EXIT_MODEL
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is None, [r.getMessage() for r in errors]
    line = errors[0].getMessage()
    assert "\n" not in line and str(model / BASE) in line and "num_attention_heads" in line
    assert not out.exists()
