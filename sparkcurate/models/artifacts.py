"""Shape checks of what model artifacts hold: the JSON fields and safetensors header entries the package reads.

Why this module exists: model artifacts come from anywhere (a hub repository, a colleague's folder, a half-done
conversion). Read unchecked, a label map written as a list, a header entry without ``shape`` or a base config with
``num_attention_heads: 0`` fails deep inside transformers, torch or this package with a TypeError and a traceback.
Every artifact the package reads goes through the checks here where it is read (``loading.read_json``,
``loading.read_safetensors_header``), and a bad field is a ``ModelArtifactError`` of one line naming the file and
the field; the command turns it into exit 3.

The JSON checks are one table keyed by field name (``FIELD_CHECKS``), applied to every JSON object read as an
artifact: the names are specific enough (``label2id``, ``num_attention_heads``, ``peft_type``, ``weight_map``)
that a field means the same wherever it appears. Fields the package does not read are left to transformers.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

#: A field check: the problem with a value (completing "must ..."), or None when the value is fine.
Check = Callable[[Any], "str | None"]

#: The dtypes of the safetensors format and their sizes in bytes (None: packed below a byte, no size check).
SAFETENSORS_DTYPES: dict[str, int | None] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "C64": 8, "F64": 8, "I64": 8, "U64": 8,
    "F4": None, "F6_E2M3": None, "F6_E3M2": None,
}


class ModelArtifactError(ValueError):
    """A model directory that cannot be used as it is: the message says what is wrong and what to do.

    The message is kept to one line (wrapped errors from transformers or tokenizers may span several), because
    the command prints it as its single error line.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(" ".join(str(message).split()))


# ----------------------------------------------------------------------------------------------------------
# Describing values in messages
# ----------------------------------------------------------------------------------------------------------

def _kind(value: Any) -> str:
    """The JSON name of a value's type, as a user reading the file sees it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def describe(value: Any, limit: int = 80) -> str:
    """``a list [1, 2]``: the kind and a short repr of a value, cut at ``limit`` characters."""
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{_kind(value)} {text}"


def field_error(source: str, field: str, problem: str, value: Any) -> ModelArtifactError:
    """The one error form of this module: file, field, what it must be, what it is."""
    return ModelArtifactError(f"{source}: field {field!r} {problem}, got {describe(value)}")


# ----------------------------------------------------------------------------------------------------------
# Checks of single values
# ----------------------------------------------------------------------------------------------------------

def is_int(value: Any) -> bool:
    """An integer that is not a JSON boolean (``True`` is an ``int`` in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN


def positive_int(value: Any) -> str | None:
    return None if is_int(value) and value > 0 else "must be a positive integer"


def non_negative_int(value: Any) -> str | None:
    return None if is_int(value) and value >= 0 else "must be an integer >= 0"


def optional_positive_int(value: Any) -> str | None:
    return None if value is None else positive_int(value)


def positive_number(value: Any) -> str | None:
    return None if is_number(value) and value > 0 else "must be a positive number"


def number(value: Any) -> str | None:
    return None if is_number(value) else "must be a number"


def probability(value: Any) -> str | None:
    return None if is_number(value) and 0 <= value <= 1 else "must be a number from 0 to 1"


def text(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty string"


def text_list(value: Any) -> str | None:
    ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    return None if ok else "must be a list of strings"


def optional_text_or_list(value: Any) -> str | None:
    return None if value is None or isinstance(value, str) or text_list(value) is None else \
        "must be a string or a list of strings"


def label_ids(value: Any) -> str | None:
    """``label2id``: label names -> the ids 0..n-1, each once (the labels are ordered by them)."""
    if not isinstance(value, dict):
        return "must be an object mapping label names to ids"
    if not all(is_int(v) for v in value.values()):
        return "must map every label to an integer id"
    if sorted(value.values()) != list(range(len(value))):
        return "must give the ids 0..n-1, each once"
    return None


def id_labels(value: Any) -> str | None:
    """``id2label`` (and the prompt model's ``task_type_map``): ids "0".."n-1", each once -> label names."""
    if not isinstance(value, dict):
        return "must be an object mapping ids (\"0\", \"1\", ...) to label names"
    try:
        ids = sorted(int(k) for k in value)
    except ValueError:
        return "must have integer ids (\"0\", \"1\", ...) as keys"
    if ids != list(range(len(value))):
        return "must have the ids 0..n-1 as keys, each once"
    if not all(isinstance(v, str) and v for v in value.values()):
        return "must map every id to a non-empty label name"
    return None


def _map_of(check: Check, what: str) -> Check:
    """A check of an object whose every value passes ``check``."""

    def map_check(value: Any) -> str | None:
        if not isinstance(value, dict) or not value:
            return f"must be a non-empty object of {what}"
        return None if all(check(v) is None for v in value.values()) else f"must be an object of {what}"

    return map_check


def number_list(value: Any) -> str | None:
    return None if isinstance(value, list) and all(is_number(v) for v in value) else "must be a list of numbers"


def non_zero_number(value: Any) -> str | None:
    return None if is_number(value) and value != 0 else "must be a non-zero number"


def shard_name(value: Any) -> str | None:
    """A shard of a sharded checkpoint: a file name inside the model directory (never outside it)."""
    ok = isinstance(value, str) and value and not value.startswith(("/", "\\")) and ".." not in value.split("/")
    return None if ok else "must be a file name inside the model directory"


def token_ids(value: Any) -> str | None:
    """``eos_token_id`` and the like: an id, a list of ids or null (some old conversions use -1: allowed)."""
    ok = value is None or is_int(value) or (isinstance(value, list) and all(is_int(v) for v in value))
    return None if ok else "must be a token id, a list of token ids or null"


def is_token(value: Any) -> bool:
    """A special token as tokenizer files write it: its text, an added-token object with ``content``, or null."""
    return value is None or isinstance(value, str) or (isinstance(value, dict) and
                                                       isinstance(value.get("content"), str))


def token(value: Any) -> str | None:
    return None if is_token(value) else "must be a token (a string or an object with a string 'content')"


def token_list(value: Any) -> str | None:
    ok = isinstance(value, list) and all(is_token(v) for v in value)
    return None if ok else "must be a list of tokens (strings or objects with a string 'content')"


def added_tokens_decoder(value: Any) -> str | None:
    """``tokenizer_config.json``'s ``added_tokens_decoder``: token ids ("0", "1", ...) -> added-token objects."""
    if not isinstance(value, dict):
        return "must be an object mapping token ids to added-token objects"
    for key, item in value.items():
        if not key.lstrip("-").isdigit() or not (isinstance(item, dict) and isinstance(item.get("content"), str)):
            return "must map token ids (\"0\", \"1\", ...) to objects with a string 'content'"
    return None


#: Every JSON field the package reads from an artifact, with what it must hold.
FIELD_CHECKS: dict[str, Check] = {
    # model configs (transformers configs, NeMo Curator heads, base model configs)
    "model_type": text,
    "base_model": text,
    "architectures": text_list,
    "label2id": label_ids,
    "id2label": id_labels,
    "hidden_size": positive_int,
    "num_hidden_layers": positive_int,
    "num_attention_heads": positive_int,
    "intermediate_size": positive_int,
    "vocab_size": positive_int,
    "max_position_embeddings": positive_int,
    "num_key_value_heads": optional_positive_int,
    "head_dim": optional_positive_int,
    "type_vocab_size": non_negative_int,
    "hidden_act": text,
    "layer_norm_eps": positive_number,
    "rms_norm_eps": positive_number,
    "fc_dropout": probability,
    "dropout": probability,
    "hidden_dropout_prob": probability,
    "attention_probs_dropout_prob": probability,
    "attention_dropout": probability,
    # the instruction-data guard head
    "input_dim": positive_int,
    # the prompt task/complexity model
    "max_len": positive_int,
    "target_sizes": _map_of(positive_int, "positive integers"),
    "task_type_map": id_labels,
    "weights_map": _map_of(number_list, "lists of numbers"),
    "divisor_map": _map_of(non_zero_number, "non-zero numbers"),
    # PEFT adapters (adapter_config.json)
    "peft_type": text,
    "r": positive_int,
    "lora_alpha": number,
    "lora_dropout": probability,
    "target_modules": optional_text_or_list,
    # sharded checkpoints (model.safetensors.index.json)
    "weight_map": _map_of(shard_name, "file names inside the model directory"),
    # tokenizer_config.json
    "model_max_length": positive_number,
    "added_tokens_decoder": added_tokens_decoder,
    "additional_special_tokens": token_list,
    **{f"{name}_token": token for name in ("bos", "eos", "unk", "sep", "pad", "cls", "mask")},
    # token ids (model configs, generation_config.json) and generation lengths
    **{f"{name}_token_id": token_ids for name in ("bos", "eos", "pad", "decoder_start")},
    "max_new_tokens": optional_positive_int,
    "max_length": optional_positive_int,
}


# ----------------------------------------------------------------------------------------------------------
# Whole JSON artifacts
# ----------------------------------------------------------------------------------------------------------

def check_fields(data: Mapping[str, Any], source: str) -> None:
    """Every known field of a JSON artifact has the shape the package reads, and the fields agree."""
    for key, value in data.items():
        check = FIELD_CHECKS.get(key)
        problem = check(value) if check is not None else None
        if problem:
            raise field_error(source, key, problem, value)
    _check_attention_heads(data, source)


def _check_attention_heads(data: Mapping[str, Any], source: str) -> None:
    """The heads split the hidden size (unless ``head_dim`` sets their width), and key/value heads the heads."""
    hidden, heads = data.get("hidden_size"), data.get("num_attention_heads")
    if hidden is not None and heads is not None and data.get("head_dim") is None and hidden % heads:
        raise field_error(source, "num_attention_heads", f"must divide hidden_size ({hidden})", heads)
    kv_heads = data.get("num_key_value_heads")
    if heads is not None and kv_heads is not None and heads % kv_heads:
        raise field_error(source, "num_key_value_heads", f"must divide num_attention_heads ({heads})", kv_heads)


def check_special_tokens(data: Mapping[str, Any], source: str) -> None:
    """``special_tokens_map.json``: each token a string, an added-token object or a list of those."""
    for key, value in data.items():
        if token(value) and token_list(value):
            raise field_error(source, key, "must be a token (a string or an object with a string 'content') or a "
                                           "list of tokens", value)


def check_added_tokens(data: Mapping[str, Any], source: str) -> None:
    """``added_tokens.json``: token -> its id."""
    for key, value in data.items():
        if not is_int(value) or value < 0:
            raise field_error(source, key, "must be a token id (an integer >= 0)", value)


def check_tokenizer_json(data: Mapping[str, Any], source: str) -> None:
    """``tokenizer.json`` (the tokenizers library's file): a ``model`` object and a list of added tokens."""
    if not isinstance(data.get("model"), dict):
        raise field_error(source, "model", "must be an object (the tokenizer's model)", data.get("model"))
    added = data.get("added_tokens", [])
    ok = isinstance(added, list) and all(
        isinstance(t, dict) and is_int(t.get("id")) and isinstance(t.get("content"), str) for t in added)
    if not ok:
        raise field_error(source, "added_tokens", "must be a list of objects with an integer 'id' and a "
                                                  "string 'content'", added)


#: Checks of tokenizer files whose keys are not fields (token names), by file name.
TOKENIZER_FILE_CHECKS: dict[str, Callable[[Mapping[str, Any], str], None]] = {
    "special_tokens_map.json": check_special_tokens,
    "added_tokens.json": check_added_tokens,
    "tokenizer.json": check_tokenizer_json,
}


# ----------------------------------------------------------------------------------------------------------
# Safetensors headers
# ----------------------------------------------------------------------------------------------------------

def check_safetensors_header(header: Any, source: str, data_bytes: int) -> dict[str, tuple[list[int], str]]:
    """Tensor names -> (shape, dtype) of a parsed safetensors header, checked as the safetensors library does.

    ``data_bytes`` is the size of the file after the header: the tensors must cover it exactly, one after the
    other (a shorter file is truncated; the library also refuses bytes after the last tensor).
    """
    if not isinstance(header, dict):
        raise ModelArtifactError(f"{source}: the safetensors header must be a JSON object of tensor entries, got "
                                 f"{describe(header)}")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise field_error(source, "__metadata__", "must be an object of strings", metadata)
    spans: list[tuple[int, int, str]] = []
    out: dict[str, tuple[list[int], str]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape, dtype, begin, end = _tensor_entry(name, info, source)
        spans.append((begin, end, name))
        out[name] = (shape, dtype)
    _check_spans(spans, source, data_bytes)
    return out


def _tensor_entry(name: str, info: Any, source: str) -> tuple[list[int], str, int, int]:
    """(shape, dtype, begin, end) of one header entry, every field checked."""
    where = f"tensor {name!r}"
    if not isinstance(info, dict):
        raise ModelArtifactError(f"{source}: {where} must be an object with dtype, shape and data_offsets, got "
                                 f"{describe(info)}")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in info:
            raise ModelArtifactError(f"{source}: {where} has no field {key!r}")
    shape, dtype, offsets = info["shape"], info["dtype"], info["data_offsets"]
    if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
        raise field_error(source, f"{name}.shape", "must be a list of integers >= 0", shape)
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise field_error(source, f"{name}.dtype", "must name a safetensors dtype (F32, F16, BF16, I64, ...)",
                          dtype)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_int(o) and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]):
        raise field_error(source, f"{name}.data_offsets", "must be two integers [begin, end], 0 <= begin <= end",
                          offsets)
    count = 1
    for dim in shape:
        count *= dim
    size = SAFETENSORS_DTYPES[dtype]
    begin, end = offsets
    if size is not None and end - begin != count * size:
        raise ModelArtifactError(f"{source} is corrupt: tensor {name} has {end - begin} bytes for shape {shape} "
                                 f"of {dtype} ({count * size} expected)")
    return list(shape), dtype, begin, end


def _check_spans(spans: list[tuple[int, int, str]], source: str, data_bytes: int) -> None:
    """The tensors' byte ranges follow each other from 0 and end where the file does."""
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise field_error(source, f"{name}.data_offsets", f"must start at byte {position}, where the tensor "
                                                              "before it ends", [begin, end])
        position = end
    if position > data_bytes:
        raise ModelArtifactError(f"{source} is truncated: the tensors' data_offsets reach byte {position}, the "
                                 f"file holds {data_bytes} bytes after its header")
    if position < data_bytes:
        raise ModelArtifactError(f"{source} is corrupt: {data_bytes - position} bytes after the last tensor (the "
                                 f"tensors' data_offsets end at byte {position})")
