"""Decoder-model helpers for the safety classifiers (Aegis, instruction-data guard): LlamaGuard + a PEFT adapter.

Why a module of its own: these models differ from the encoder heads in every step. The checkpoint is a sharded
causal LM loaded in the engine's precision directly (a 7B model must never pass through fp32 on the host), the
adapter is a separate directory whose keys peft would load leniently (so they are checked here first), Aegis
*generates* text (the engine's forward must return fixed-width token ids) and both models expect a prompt built
around the document before tokenizing. The engine itself stays unchanged: ``engine.prompt.PromptInferenceEngine``
only changes what is tokenized, and the modules here take the engine's right-padded batches.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from sparkcurate.engine.runner import EngineConfig, PRECISIONS
from sparkcurate.models.loading import (
    LoadOptions,
    ModelArtifactError,
    build_backbone_config,
    checkpoint_shapes,
    compare_keys,
    expected_shapes,
    read_json,
    read_safetensors_header,
    safetensors_files,
    source_of,
)

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
GENERATION_CONFIG = "generation_config.json"
ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
# Buffers that older Llama checkpoints saved but transformers recomputes (never weights).
_NON_WEIGHT_SUFFIXES = ("rotary_emb.inv_freq",)


def precision_dtype(config: EngineConfig, device: str | torch.device) -> torch.dtype:
    """The dtype the engine will run in on ``device``, so the model is loaded in it from the start."""
    precision = config.resolved_precision(torch.device(device))
    if precision == "fp16-split":  # it needs the fp32 weights in memory, which a 7B model must never pass through
        raise ValueError("precision fp16-split is for the encoder classifiers; a causal LM runs in fp16, bf16 or fp32")
    return PRECISIONS[precision]


# --------------------------------------------------------------------------------------------------------------
# The base causal LM
# --------------------------------------------------------------------------------------------------------------

def causal_lm_config(config: Mapping[str, Any]):
    return build_backbone_config(config, keep_head_keys=True, what="the base model's")


def causal_lm_expected_shapes(config: Mapping[str, Any]) -> dict[str, list[int]]:
    """Weight names and shapes of the causal LM, built on the meta device (no memory, no time, even for 7B)."""
    from transformers import AutoModelForCausalLM

    hf_config = causal_lm_config(config)
    where = source_of(config, "the base model's config")
    shapes = expected_shapes(lambda: AutoModelForCausalLM.from_config(hf_config), where)
    if getattr(hf_config, "tie_word_embeddings", False):
        shapes.pop("lm_head.weight", None)  # tied: the checkpoint stores the embedding once
    return shapes


def causal_lm_checkpoint_shapes(model_dir: Path, options: LoadOptions) -> dict[str, list[int]]:
    found = checkpoint_shapes(model_dir, options)
    return {k: v for k, v in found.items() if not k.endswith(_NON_WEIGHT_SUFFIXES)}


def check_generation_config(model_dir: Path) -> None:
    """``from_pretrained`` also reads ``generation_config.json`` (on the executors, when the model is loaded): a
    malformed one is refused here, on the driver, naming the file, instead of failing every task."""
    from transformers import GenerationConfig

    path = model_dir / GENERATION_CONFIG
    if not path.is_file():
        return
    read_json(path)  # a JSON object whose known fields have their shapes
    try:
        GenerationConfig.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # transformers validates the remaining fields with its own errors
        raise ModelArtifactError(f"{path}: transformers refuses it: {type(exc).__name__}: {str(exc)[:300]}") from exc


def check_causal_lm(model_dir: Path, config: Mapping[str, Any], options: LoadOptions) -> dict[str, list[int]]:
    """Every weight of the base model present with the right shape, and its generation config readable; returns
    the expected shapes."""
    check_generation_config(model_dir)
    expected = causal_lm_expected_shapes(config)
    found = causal_lm_checkpoint_shapes(model_dir, options)
    if "lm_head.weight" not in expected:
        found.pop("lm_head.weight", None)
    compare_keys(expected, found, str(model_dir))
    return expected


def load_causal_lm(model_dir: Path, options: LoadOptions, dtype: torch.dtype):
    """The base model in ``dtype``, refusing any missing, unexpected or mis-shaped weight.

    ``from_pretrained`` loads shards straight into ``dtype`` (no fp32 copy of a 7B model); its loading report
    is turned into an error, because it would otherwise fill missing weights with random values.
    """
    from transformers import AutoModelForCausalLM

    if not safetensors_files(model_dir) and not options.allow_pickle:
        raise ModelArtifactError(
            f"{model_dir} has no safetensors weights; pickled weights are refused unless --allow-pickle is given"
        )
    model, info = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=dtype, local_files_only=True, trust_remote_code=options.trust_remote_code,
        use_safetensors=None if options.allow_pickle else True, output_loading_info=True,
    )
    missing = [k for k in info.get("missing_keys", []) if not k.endswith(_NON_WEIGHT_SUFFIXES)]
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.endswith(_NON_WEIGHT_SUFFIXES)]
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise ModelArtifactError(
            f"weights in {model_dir} do not match the model: missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}, wrong shape {mismatched[:5]}"
        )
    return model.eval()


def load_decoder_tokenizer(model_dir: Path, options: LoadOptions):
    """The base model's tokenizer with NeMo's setting for LlamaGuard: the pad token is the unk token."""
    from sparkcurate.models.loading import load_tokenizer

    tok = load_tokenizer(model_dir, options)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return tok


# --------------------------------------------------------------------------------------------------------------
# The PEFT adapter
# --------------------------------------------------------------------------------------------------------------

def adapter_shapes(adapter_dir: Path, options: LoadOptions) -> dict[str, list[int]]:
    """Tensor names and shapes of a PEFT adapter without loading it (safetensors header, or an allowed pickle)."""
    st = adapter_dir / ADAPTER_SAFETENSORS
    if st.exists():
        return {k: v[0] for k, v in read_safetensors_header(st).items()}
    pkl = adapter_dir / ADAPTER_PICKLE
    if not pkl.exists():
        raise ModelArtifactError(f"no adapter weights in {adapter_dir}: expected {ADAPTER_SAFETENSORS}")
    if not options.allow_pickle:
        raise ModelArtifactError(f"{pkl} is a pickle; convert it to safetensors or pass --allow-pickle")
    try:
        state = torch.load(str(pkl), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelArtifactError(f"{pkl} could not be loaded weights-only: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelArtifactError(f"{pkl} does not hold a state dict of tensors")
    return {k: list(v.shape) for k, v in state.items()}


def check_adapter(adapter_dir: Path, base_shapes: Mapping[str, Sequence[int]], options: LoadOptions) -> None:
    """Every LoRA tensor of the adapter targets a weight of the base model, with matching shapes.

    peft loads adapters with ``strict=False`` and only warns about keys it cannot place, so a wrong adapter for
    the base model would run silently as the bare base model; this check makes it an error.
    """
    cfg = read_json(adapter_dir / ADAPTER_CONFIG)
    if str(cfg.get("peft_type", "")).upper() != "LORA":
        raise ModelArtifactError(f"{adapter_dir}: only LoRA adapters are supported, got {cfg.get('peft_type')!r}")
    shapes = adapter_shapes(adapter_dir, options)
    if not shapes:
        raise ModelArtifactError(f"{adapter_dir}: the adapter holds no tensors")
    problems = []
    for key, shape in shapes.items():
        target, kind = _lora_target(key)
        if target is None:
            problems.append(f"{key}: not a LoRA tensor")
            continue
        base = base_shapes.get(target + ".weight")
        if base is None:
            problems.append(f"{key}: the base model has no {target}")
        elif len(shape) != 2 or len(base) != 2:
            problems.append(f"{key}: LoRA needs 2-D weights, got shape {list(shape)} for a base weight {list(base)}")
        elif kind == "lora_A" and shape[-1] != base[1]:
            problems.append(f"{key}: input size {shape[-1]} vs {base[1]}")
        elif kind == "lora_B" and shape[0] != base[0]:
            problems.append(f"{key}: output size {shape[0]} vs {base[0]}")
    if problems:
        raise ModelArtifactError(f"adapter {adapter_dir} does not fit the base model: " + "; ".join(problems[:5]))


def _lora_target(key: str) -> tuple[str | None, str | None]:
    """``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` -> (``model.layers.0...q_proj``, A)."""
    for kind in ("lora_A", "lora_B"):
        marker = f".{kind}."
        if marker in key:
            target = key.split(marker)[0]
            if target.startswith("base_model.model."):
                target = target[len("base_model.model."):]
            return target, kind
    return None, None


def attach_adapter(model, adapter_dir: Path):
    """The base model wrapped with the LoRA adapter (not merged, as NeMo Curator runs it)."""
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise ImportError("this classifier needs peft: pip install 'sparkcurate[peft]'") from exc
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False).eval()


def decoder_of(peft_or_causal_lm) -> nn.Module:
    """The transformer stack (``LlamaModel``) under a causal LM, with the LoRA layers injected in place."""
    model = peft_or_causal_lm
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return getattr(model, model.base_model_prefix)


# --------------------------------------------------------------------------------------------------------------
# Modules the engine runs
# --------------------------------------------------------------------------------------------------------------

def right_to_left_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's tokens to the right end: the engine pads right, generation needs left padding."""
    lengths = attention_mask.sum(dim=1)
    width = input_ids.shape[1]
    cols = torch.arange(width, device=input_ids.device).unsqueeze(0)
    shift = (width - lengths).unsqueeze(1)
    src = (cols - shift).clamp(min=0)
    keep = cols >= shift
    ids = torch.where(keep, input_ids.gather(1, src), torch.full_like(input_ids, pad_id))
    return ids, keep.to(attention_mask.dtype)


class GenerationModule(nn.Module):
    """Greedy generation as a forward: ``[B, S]`` right-padded prompts -> ``[B, max_new_tokens]`` float token
    ids, -1 after the last generated position (token ids < 2**24 are exact in float32)."""

    def __init__(self, lm: nn.Module, max_new_tokens: int, pad_token_id: int):
        super().__init__()
        self.lm = lm
        self.max_new_tokens = int(max_new_tokens)
        self.pad_token_id = int(pad_token_id)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ids, mask = right_to_left_padding(input_ids, attention_mask, self.pad_token_id)
        out = self.lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.max_new_tokens,
                               do_sample=False, num_beams=1, pad_token_id=self.pad_token_id)
        new = out[:, ids.shape[1]:]
        result = torch.full((ids.shape[0], self.max_new_tokens), -1.0, dtype=torch.float32, device=ids.device)
        result[:, : new.shape[1]] = new.float()
        return result


class LastTokenScoreModule(nn.Module):
    """The decoder's last hidden state (after the final norm) at each prompt's last token, into a head.

    Right padding with causal attention leaves the states of real tokens untouched, so the state at index
    ``length - 1`` equals NeMo's left-padded ``hidden_states[0][-1][:, -1]`` from a one-token ``generate``.
    """

    def __init__(self, lm: nn.Module, head: nn.Module):
        super().__init__()
        self.lm = lm
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = decoder_of(self.lm)(input_ids=input_ids, attention_mask=attention_mask,
                                     use_cache=False).last_hidden_state
        last = (attention_mask.sum(dim=1) - 1).clamp(min=0)
        x = hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
        head_dtype = next(self.head.parameters()).dtype
        return self.head(x.to(head_dtype)).float().reshape(-1, 1)


def with_revision(options: LoadOptions, revision: str | None) -> LoadOptions:
    """The same options for another artifact (an adapter, a head) with its own pinned revision."""
    return dataclasses.replace(options, revision=revision)
