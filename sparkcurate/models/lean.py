"""The lean load of a DeBERTa-head classifier: this package's modules, the safetensors and ``tokenizer.json``,
without importing transformers.

Why: in a fresh Python worker transformers' DeBERTa modeling module took 10 s to import on the H100 machine
(benchmarks/NOTES.md, "Where a worker's load goes"), its ``AutoTokenizer`` seconds more, against a model whose
weights load in 0.06 s; the packed engine needs neither (:mod:`sparkcurate.engine.deberta`). The published
layout is read as the full loader reads it (``loading``): backbone config from the head config, a local or
shipped base config (the hub's, when neither, through ``huggingface_hub`` only), weights strictly by name and
shape, and every problem is the same one-line ``ModelArtifactError`` (exit 3).

When it is used (:func:`lean_problem` says why not): a CUDA device with a half-precision, packed-capable engine
and a backbone that :func:`sparkcurate.engine.deberta.config_problems` accepts; safetensors weights (pickles
keep the full loader, which guards them); a ``tokenizer.json`` (without one the tokenizer comes from transformers'
``AutoTokenizer``, the one import of transformers left, as the converter from ``spm.model`` lives there). The
CPU, fp32 and anything unsupported keep transformers' modules: the fp32 reference stays transformers' own.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from sparkcurate.models.artifacts import ModelArtifactError
from sparkcurate.models.loading import (
    LoadOptions,
    compare_keys,
    load_state_dict,
    read_json,
    safetensors_files,
    source_of,
)

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from sparkcurate.engine.deberta import DebertaConfig

log = logging.getLogger(__name__)

#: Precisions whose engine can take the packed path (fp32 keeps transformers' modules: the exact reference).
HALF_PRECISIONS = ("auto", "fp16", "bf16", "fp16-split")


def mode() -> str:
    """``SPARKCURATE_LEAN_LOAD`` (auto, on, off; default auto), read through the engine's one switch reader."""
    from sparkcurate.engine.kernels import switches

    return switches.read(switches.LEAN_LOAD)


def lean_problem(device: str, precision: str, packed: str, model_dir: Path) -> str | None:
    """Why the lean load is not used for this engine (None: it is), from what is known before reading weights.

    The backbone config is checked by :func:`lean_config`, once it is read. ``SPARKCURATE_LEAN_LOAD``: "auto"
    (these rules), "on" (also the CPU and fp32: tests, comparisons) or "off" (never).
    """
    chosen = mode()
    if chosen == "off":
        return "SPARKCURATE_LEAN_LOAD=off"
    if not safetensors_files(model_dir):
        return "no safetensors weights"
    if chosen == "on":
        return None
    if not str(device).startswith("cuda"):
        return f"device {device} (the lean load serves the packed CUDA path)"
    if packed == "off":
        return "packed=off"
    if precision not in HALF_PRECISIONS:
        return f"precision {precision} (the fp32 reference keeps transformers' modules)"
    return None


def lean_config(backbone_dict: Mapping[str, Any], model_dir: Path) -> tuple["DebertaConfig | None", str]:
    """The backbone's :class:`~sparkcurate.engine.deberta.DebertaConfig` and a description, or (None, why not)."""
    from sparkcurate.engine.deberta import DebertaConfig, config_problems, describe

    source = source_of(backbone_dict, f"{model_dir}/config.json")
    if not backbone_dict.get("model_type"):  # DebertaConfig would default it; the full loader's refusal, word for word
        raise ModelArtifactError(f"{source}: field 'model_type' is missing (backbone config)")
    try:
        config = DebertaConfig.from_dict(backbone_dict)
    except ValueError as exc:
        raise ModelArtifactError(f"{source}: {exc}") from exc
    problems = config_problems(config)
    if problems:
        return None, "; ".join(problems)
    return config, describe(config)


def build_cls_head(config: "DebertaConfig", n_labels: int, fc_dropout: float) -> "nn.Module":
    """A :class:`~sparkcurate.models.heads.ClsHeadModel` on this package's backbone, on the meta device (no
    memory, no random initialisation: :func:`load_lean_strict` assigns every tensor)."""
    import torch

    from sparkcurate.engine.deberta import DebertaBackbone
    from sparkcurate.models.heads import ClsHeadModel

    with torch.device("meta"):
        return ClsHeadModel(config, n_labels, fc_dropout, backbone=DebertaBackbone(config))


def load_lean_strict(module: "nn.Module", model_dir: Path, options: LoadOptions = LoadOptions()) -> "nn.Module":
    """Every tensor of ``module`` (built on the meta device) from the checkpoint, by name and shape, refusing
    any mismatch with the same error as the full loader's ``load_strict``; floating tensors as fp32, as a
    module built in fp32 and loaded by copy holds them."""
    import torch

    state = load_state_dict(model_dir, options)
    expected = {k: list(v.shape) for k, v in module.state_dict().items()}
    compare_keys(expected, {k: list(v.shape) for k, v in state.items()}, str(model_dir))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=True)
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.device.type == "meta":  # cannot happen after a strict load; a clear error if it ever does
            raise ModelArtifactError(f"{model_dir}: tensor {name} was not loaded")
    return module.to(torch.float32)


def lean_tokenizer(model_dir: Path):
    """The checkpoint's ``tokenizer.json`` as a :class:`~sparkcurate.engine.tokenize.RustTokenizer`, or None when
    there is none (the caller then loads transformers' tokenizer).

    Its pad token is the one ``tokenizer_config.json`` (else ``special_tokens_map.json``) names; the files were
    checked field by field on the driver (``check_tokenizer_files``) and the fingerprint says these are those files.
    """
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    from sparkcurate.engine.tokenize import RustTokenizer, pad_token_of

    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own exception types
        raise ModelArtifactError(f"{path} could not be loaded by tokenizers: {type(exc).__name__}: {exc}") from exc
    pad = None
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (model_dir / name).is_file():
            pad = pad_token_of(read_json(model_dir / name))
            if pad is not None:
                break
    tokenizer = RustTokenizer(backend, pad, str(path))
    if pad is not None and tokenizer.pad_token_id is None:
        raise ModelArtifactError(f"{model_dir}: the pad token {pad!r} is not in tokenizer.json's vocabulary")
    return tokenizer
