"""Packed (unpadded) DeBERTa-v2/v3 inference.

Why: documents in a batch have very different lengths. A padded forward spends
most of its attention and linear-layer work on padding. DeBERTa's relative
positions stay inside each sequence, so dropping the padding and running the
concatenated tokens ``[T, H]`` through the encoder is *exact*: every linear
layer is per token, and attention only needs the sequence boundaries
(``cu_seqlens``, FlashAttention style).

The attention itself runs through the ``disentangled-flash`` package's Triton
varlen kernel (``InferenceDisentangledSelfAttention.forward_packed``); the
embeddings, attention output, intermediate and output blocks are the Hugging
Face modules of the backbone, called on ``[T, H]`` tensors. The per-layer
attention wrappers alias the backbone's own ``Linear`` modules (never mutated);
only parameter-derived tensors are cached: the relative-position embeddings
projected by each layer's key/query projection (``2 * position_buckets`` rows
per layer) and a fused copy of the Q/K/V weights (``3 * H * H`` per layer, so
Q/K/V are one GEMM). Both are rebuilt whenever an attention weight changes.

Heads that read only the first ([CLS]) token of each sequence ask for
``rows="first"``: the last layer then computes keys/values for all tokens but
queries, attention output and the feed-forward blocks for those B rows only.

Entry points:

* :func:`packed_support` says whether the kernel path can be used for a
  backbone on a device, with a human-readable reason when it cannot.
* :func:`packed_last_hidden` returns the last hidden state ``[T, H]``.
  ``attention_impl="kernel"`` uses a GPU kernel: ``"triton"``, this package's
  tile kernel (:mod:`.kernels.relative_attention`, the default) or ``"dflash"``,
  disentangled-flash's (``SPARKCURATE_ATTENTION_KERNEL`` picks; both CUDA only),
  ``"torch"`` disentangled-flash's PyTorch backend (loops over sequences; runs on
  CPU) and ``"reference"`` loops over sequences through transformers' own
  ``DisentangledSelfAttention`` (needs only transformers; used by the CPU
  tests to check the packing glue against the padded HF forward).
* :func:`set_tuning_mode` / ``SPARKCURATE_DFLASH_TUNING`` pick the kernel's
  launch-config tuning (``auto``: saved profile, else heuristic; ``autotune``:
  benchmark configs at run time; ``heuristic``: never profile).
"""

from __future__ import annotations

import logging
import math
import os
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports stay lazy at runtime
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

ATTENTION_IMPLS = ("kernel", "triton", "dflash", "torch", "reference")
#: GPU kernels "kernel" can mean: this package's tile kernel, or disentangled-flash's.
GPU_KERNELS = ("triton", "dflash")
#: Environment variable that picks the GPU kernel behind attention_impl="kernel" (default: triton).
KERNEL_ENV = "SPARKCURATE_ATTENTION_KERNEL"
#: disentangled-flash versions whose internals (the attention wrapper's
#: ``_project_qkv`` / ``_prepare_fused_qkv`` hooks) this module was written against.
SUPPORTED_DFLASH_PREFIXES = ("1.1.",)
#: Head dimensions the Triton kernel is compiled for.
KERNEL_HEAD_DIMS = (32, 64, 128)
#: Longest sequence the bounded Triton kernel family supports.
KERNEL_MAX_SEQLEN = 8192
#: Which rows of the last hidden state :func:`packed_last_hidden` returns.
ROW_MODES = ("all", "first")
#: Environment variable that picks disentangled-flash's kernel tuning mode.
TUNING_ENV = "SPARKCURATE_DFLASH_TUNING"
#: Tuning modes offered (disentangled-flash's ``KernelTuningOptions.mode``).
TUNING_MODES = ("auto", "autotune", "heuristic")
_TUNING_OVERRIDE: str | None = None


@dataclass(frozen=True)
class PackedInfo:
    """Host-side description of a packed batch (offsets and lengths)."""

    offsets: tuple[int, ...]
    lengths: tuple[int, ...]
    max_seqlen: int


# --------------------------------------------------------------------------- support


def _pos_att_types(config: Any) -> tuple[str, ...]:
    """Normalise ``pos_att_type`` (a list, or an older ``"p2c|c2p"`` string)."""
    raw = getattr(config, "pos_att_type", None) or ()
    if isinstance(raw, str):
        raw = raw.split("|")
    return tuple(str(part).strip().lower() for part in raw if str(part).strip())


def config_problems(backbone: Any) -> list[str]:
    """List why a backbone's architecture cannot use the packed path (empty: it can).

    Why separate from :func:`packed_support`: these checks need no GPU, so the
    CPU tests can exercise them.
    """
    problems: list[str] = []
    config = getattr(backbone, "config", None)
    encoder = getattr(backbone, "encoder", None)
    if config is None or encoder is None or not hasattr(backbone, "embeddings"):
        return ["not a DeBERTa-v2/v3 backbone (needs .config, .embeddings and .encoder)"]
    if not hasattr(encoder, "layer"):
        return ["backbone.encoder has no .layer list"]
    if not getattr(config, "relative_attention", False):
        problems.append("relative_attention is False (only DeBERTa-v2/v3 relative attention is supported)")
    types = _pos_att_types(config)
    unknown = sorted(set(types) - {"c2p", "p2c"})
    if unknown:
        problems.append(f"pos_att_type has unsupported entries {unknown} (supported: c2p, p2c)")
    if int(getattr(config, "position_buckets", -1) or -1) <= 0:
        problems.append("position_buckets must be > 0 (log-bucketed relative positions)")
    norm = [x.strip() for x in str(getattr(config, "norm_rel_ebd", "none")).lower().split("|")]
    if not set(norm) <= {"layer_norm", "none"}:
        problems.append(f"norm_rel_ebd={norm} (supported: layer_norm, none)")
    if getattr(encoder, "conv", None) is not None:
        problems.append("conv_kernel_size > 0 (the DeBERTa-v2 convolution layer is not supported)")
    if int(getattr(backbone, "z_steps", 0) or 0) > 1:
        problems.append("z_steps > 1 is not supported")
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "attention_head_size", None) or config.hidden_size // heads)
    if head_dim not in KERNEL_HEAD_DIMS:
        problems.append(f"head dimension {head_dim} is not one of {KERNEL_HEAD_DIMS}")
    return problems


def _dflash_problem() -> str | None:
    """Return why disentangled-flash's Triton kernel is unusable, or None."""
    try:
        import disentangled_flash
        from disentangled_flash import kernel as dflash_kernel
    except ImportError as exc:
        return f"disentangled-flash is not installed ({exc}); pip install 'sparkcurate[gpu]'"
    version = getattr(disentangled_flash, "__version__", "?")
    if not version.startswith(SUPPORTED_DFLASH_PREFIXES):
        return f"disentangled-flash {version} is untested (supported: {SUPPORTED_DFLASH_PREFIXES})"
    if getattr(dflash_kernel, "triton", None) is None:
        return "Triton is not importable, so disentangled-flash has no kernel"
    return None


def packed_support(backbone: nn.Module, device: Any) -> tuple[bool, str]:
    """Say whether :func:`packed_last_hidden` with the kernel can run, and why not.

    Checks, in order: a CUDA device, disentangled-flash + Triton importable, a
    supported architecture (:func:`config_problems`) and half-precision weights
    (bf16/fp16: the packed path exists for speed; fp32 works but gains little).
    """
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return False, f"packed attention needs a CUDA device, got '{dev}'"
    if not torch.cuda.is_available():
        return False, "packed attention needs CUDA, but torch.cuda.is_available() is False"
    kernel = gpu_kernel()
    problem = _kernel_problem(kernel)
    if problem:
        return False, problem
    problems = config_problems(backbone)
    if problems:
        return False, "unsupported model: " + "; ".join(problems)
    dtype = next(backbone.parameters()).dtype
    if dtype not in (torch.bfloat16, torch.float16):
        return False, f"weights are {dtype}; the packed kernel path is enabled for bf16/fp16 only"
    name = "sparkcurate tile kernel" if kernel == "triton" else "disentangled-flash"
    return True, f"packed DeBERTa attention ({name}, {dtype}) on {dev}"


def gpu_kernel() -> str:
    """The GPU kernel behind ``attention_impl="kernel"``: ``SPARKCURATE_ATTENTION_KERNEL``, default ``triton``.

    Why a switch: the tile kernel (:mod:`.kernels.relative_attention`) needs only Triton
    and was faster on the H100 (benchmarks/NOTES.md, fifth round); disentangled-flash
    stays selectable to compare and as a second opinion.
    """
    kernel = (os.environ.get(KERNEL_ENV, "") or "triton").strip().lower()
    if kernel not in GPU_KERNELS:
        raise ValueError(f"{KERNEL_ENV} must be one of {GPU_KERNELS}, got {kernel!r}")
    return kernel


def _kernel_problem(kernel: str) -> str | None:
    """Why a GPU kernel cannot run here (None: it can)."""
    if kernel == "dflash":
        return _dflash_problem()
    from sparkcurate.engine.kernels.relative_attention import triton_problem

    return triton_problem()


# --------------------------------------------------------------------------- tuning


def set_tuning_mode(mode: str | None) -> str | None:
    """Override ``SPARKCURATE_DFLASH_TUNING`` for this process; ``None`` goes back to it.

    Returns the previous override, so callers (benchmarks) can restore it. The
    wrappers are rebuilt on the next forward because the mode is part of their
    cache key.
    """
    global _TUNING_OVERRIDE
    if mode is not None:
        mode = _check_tuning_mode(mode)
    previous, _TUNING_OVERRIDE = _TUNING_OVERRIDE, mode
    return previous


def tuning_mode() -> str:
    """The kernel tuning mode in force: the override, else the env variable, else ``auto``."""
    if _TUNING_OVERRIDE is not None:
        return _TUNING_OVERRIDE
    return _check_tuning_mode(os.environ.get(TUNING_ENV, "") or "auto")


def _check_tuning_mode(mode: str) -> str:
    mode = mode.strip().lower()
    if mode not in TUNING_MODES:
        raise ValueError(f"disentangled-flash tuning mode must be one of {TUNING_MODES}, got {mode!r} ({TUNING_ENV})")
    return mode


# --------------------------------------------------------------------------- inputs


def packed_info(cu_seqlens: torch.Tensor, total_tokens: int, max_seqlen: int | None) -> PackedInfo:
    """Validate ``cu_seqlens`` and return host offsets.

    Why: bad boundaries would silently mix documents. The copy to the host is
    free when ``cu_seqlens`` is still on the CPU (how the engine builds it); a
    CUDA tensor costs one sync per batch.
    """
    import torch

    if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D with B+1 >= 2 entries, got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
    offsets = tuple(int(v) for v in cu_seqlens.tolist())
    if offsets[0] != 0 or offsets[-1] != total_tokens:
        raise ValueError(f"cu_seqlens must run from 0 to the token count {total_tokens}, got {offsets[0]}..{offsets[-1]}")
    lengths = tuple(b - a for a, b in zip(offsets, offsets[1:]))
    if min(lengths) <= 0:
        raise ValueError("cu_seqlens must be strictly increasing (empty sequences are not allowed)")
    longest = max(lengths)
    if max_seqlen is not None and int(max_seqlen) != longest:
        raise ValueError(f"max_seqlen={max_seqlen} but the longest packed sequence has {longest} tokens")
    return PackedInfo(offsets, lengths, longest)


def _check_input_ids(input_ids: torch.Tensor) -> None:
    """Reject inputs that would otherwise fail deep inside the model."""
    import torch

    if input_ids.ndim != 1:
        raise ValueError(f"input_ids must be 1-D packed tokens [T], got shape {tuple(input_ids.shape)}")
    if input_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")


def _embed(backbone: nn.Module, input_ids: torch.Tensor, cu_dev: torch.Tensor, info: PackedInfo) -> torch.Tensor:
    """Run the HF embeddings on packed tokens; ``[T] -> [T, H]``.

    Absolute positions (only when ``position_biased_input``) restart at 0 in
    every sequence; the all-ones padding mask is a no-op and is skipped.
    """
    import torch

    position_ids = None
    if getattr(backbone.embeddings, "position_embeddings", None) is not None:
        total = input_ids.numel()
        lengths = cu_dev[1:] - cu_dev[:-1]
        starts = torch.repeat_interleave(cu_dev[:-1].long(), lengths.long(), output_size=total)
        position_ids = (torch.arange(total, device=input_ids.device) - starts)[None]
    hidden = backbone.embeddings(input_ids=input_ids.long()[None], position_ids=position_ids, mask=None)
    return hidden[0]


# --------------------------------------------------------------------------- kernel wrappers


@dataclass
class _PackedState:
    """Per-backbone attention wrappers plus the key that says they are fresh."""

    key: tuple
    attentions: list
    slots: Any = None


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state_key(backbone: nn.Module, backend: str, mode: str) -> tuple:
    """A key that changes whenever a weight the cached tensors derive from changes.

    Why: the wrappers cache each layer's projected relative-position table and a
    fused copy of its Q/K/V weights. ``data_ptr`` catches moved/re-cast weights,
    ``_version`` in-place loads (``load_state_dict``, ``mul_``). The tuning mode
    is part of the key because the wrappers are built with it.
    """
    encoder = backbone.encoder
    tensors = [encoder.rel_embeddings.weight]
    if hasattr(encoder, "LayerNorm"):
        tensors += [encoder.LayerNorm.weight, encoder.LayerNorm.bias]
    for layer in encoder.layer:
        tensors += [p for p in layer.attention.self.parameters()]
    first = tensors[0]
    return (backend, mode, str(first.device), first.dtype, tuple((t.data_ptr(), t._version) for t in tensors))


def fused_qkv(query: nn.Linear, key: nn.Linear, value: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A new ``[3A, H]`` weight (and ``[3A]`` bias, or None) that stacks the three projections.

    Why a copy: upstream fuses by re-pointing the projections at views of one new
    buffer, i.e. it mutates the modules; here they are the backbone's own and
    must stay as they are. A missing bias among present ones is stored as zeros
    (same result); all missing gives None.

    With ``SplitLinear`` projections (``precision="fp16-split"``) the weight is a
    :class:`.split_weights.SplitWeight` of the stacked pairs; project with :func:`.split_weights.linear`.
    """
    import torch

    from sparkcurate.engine.kernels.split_weights import SplitWeight, weight_of

    weights = [weight_of(m) for m in (query, key, value)]
    with torch.no_grad():
        if any(isinstance(w, SplitWeight) for w in weights):
            if not all(isinstance(w, SplitWeight) for w in weights):
                raise ValueError("Q/K/V projections mix split and plain weights: cannot stack them")
            weight = SplitWeight.stack(weights)
        else:
            weight = torch.cat([w.detach() for w in weights], dim=0).contiguous()
        biases = [query.bias, key.bias, value.bias]
        if all(b is None for b in biases):
            return weight, None
        rows = [w.shape[0] for w in weights]
        present = next(b for b in biases if b is not None)
        parts = [b.detach() if b is not None else present.new_zeros(n) for b, n in zip(biases, rows)]
        return weight, torch.cat(parts).contiguous()


def _wrapper_class() -> type:
    """Build (once) the disentangled-flash attention subclass that keeps HF weights.

    Why a subclass: upstream fuses Q/K/V by concatenating the three weights into a
    new buffer and re-pointing the projections at views of it, i.e. it mutates the
    module it was given. Here the projections are the backbone's own ``Linear``
    modules, which must stay untouched, so the fused weight is a separate copy
    (:func:`fused_qkv`) and the projections keep their own storage.
    """
    global _WRAPPER_CLASS
    if _WRAPPER_CLASS is not None:
        return _WRAPPER_CLASS
    from disentangled_flash.kernel import InferenceDisentangledSelfAttention

    from sparkcurate.engine.kernels import split_weights

    class SharedWeightPackedAttention(InferenceDisentangledSelfAttention):
        """Packed inference attention whose projections alias the HF layer's."""

        def _prepare_fused_qkv(self) -> None:
            # Upstream's contract: ``_cached_qkv_weight`` is None until prepared (it
            # re-prepares on None) and ``_project_qkv`` multiplies by it. Called by
            # ``prepare_for_inference`` right after ``clear_inference_cache``.
            self._cached_qkv_weight, self._cached_qkv_bias = fused_qkv(
                self.query_proj, self.key_proj, self.value_proj
            )

        def _project_qkv(self, hidden_states):
            # One GEMM; the three results are column views of ``[T, 3A]`` (row stride
            # 3A). The torch backend copies them to head-major; the Triton launch
            # passes q/k/v strides to the kernel, so no copy there either.
            if self._cached_qkv_weight is None:
                raise RuntimeError("fused QKV projection is not prepared; call prepare_for_inference() first")
            projected = split_weights.linear(hidden_states, self._cached_qkv_weight, self._cached_qkv_bias)
            return projected.split(self.all_head_size, dim=-1)

    _WRAPPER_CLASS = SharedWeightPackedAttention
    return _WRAPPER_CLASS


_WRAPPER_CLASS: type | None = None
_ALIASED_SUBMODULES = ("query_proj", "key_proj", "value_proj", "pos_key_proj", "pos_query_proj", "pos_dropout", "dropout")


def _build_attentions(backbone: nn.Module, backend: str, mode: str) -> list:
    """One disentangled-flash attention per layer, aliasing the HF modules."""
    import torch
    from disentangled_flash.position import SharedPositionPlanCache
    from disentangled_flash.tuning import KernelTuningOptions, ProfileRegistry

    encoder = backbone.encoder
    config = backbone.config
    buckets = int(encoder.position_buckets)
    plans = SharedPositionPlanCache(
        position_buckets=buckets,
        max_relative_positions=int(encoder.max_relative_positions),
        position_embedding_size=buckets if buckets > 0 else int(encoder.max_relative_positions),
        uses_position_bias=bool({"c2p", "p2c"} & set(_pos_att_types(config))),
    )
    cls = _wrapper_class()
    tuning = KernelTuningOptions(mode=mode)
    # Saved profiles are read only in "auto" (as upstream does); parsed once, shared by all layers.
    registry = ProfileRegistry.from_options(tuning) if mode == "auto" else ProfileRegistry()
    rel = encoder.get_rel_embedding()
    attentions = []
    for layer in encoder.layer:
        source = layer.attention.self
        with torch.device("meta"):  # the wrapper's own Linear layers are replaced below
            wrapper = cls(config, backend=backend, position_plan_cache=plans, fp32_precision="strict",
                          tuning=tuning, profile_registry=registry)
        for name in _ALIASED_SUBMODULES:
            if hasattr(source, name):
                setattr(wrapper, name, getattr(source, name))
        wrapper.eval()
        wrapper.prepare_for_inference(rel)
        attentions.append(wrapper)
    return attentions


def _attentions_for(backbone: nn.Module, backend: str) -> list:
    """Cached wrappers for a backbone, rebuilt when its attention weights change."""
    mode = tuning_mode()
    key = _state_key(backbone, backend, mode)
    state = _STATES.get(backbone)
    if state is None or state.key != key:
        logger.debug("building packed attention wrappers (%s, tuning %s) for %s", backend, mode,
                     type(backbone).__name__)
        state = _PackedState(key=key, attentions=_build_attentions(backbone, backend, mode))
        _STATES[backbone] = state
    return state.attentions


# --------------------------------------------------------------------------- tile kernel tables

#: Distances are tabulated in steps of this many tokens (fewer rebuilds as batch lengths vary).
_SLOT_STEP = 512


def _slot_capacity(count: int) -> int:
    """``count`` rounded up to whole ``_SLOT_STEP``s (at least one): the size a slot table is built at."""
    return -(-max(count, 1) // _SLOT_STEP) * _SLOT_STEP


def _interpreting() -> bool:
    from sparkcurate.engine.kernels.relative_attention import _interpreting as interpreting

    return interpreting()


def _tile_tables_for(backbone: nn.Module, max_seqlen: int) -> tuple[list, torch.Tensor]:
    """Cached per-layer :class:`LayerTables` and the distance-slot table covering ``max_seqlen``.

    Rebuilt when an attention weight changes (same key as the disentangled-flash
    wrappers); the slot table grows in steps of ``_SLOT_STEP`` distances.
    """
    from sparkcurate.engine.kernels.relative_attention import distance_slots

    key = _state_key(backbone, "triton", "-")
    state = _STATES.get(backbone)
    if state is None or state.key != key:
        logger.debug("building tile attention tables for %s", type(backbone).__name__)
        rel = backbone.encoder.get_rel_embedding()
        state = _PackedState(key=key, attentions=[layer_tables(layer.attention.self, rel) for layer in backbone.encoder.layer])
        _STATES[backbone] = state
    # Room for the kernel's window past the sequence (BLOCK_M + BLOCK_N <= 256).
    half = _slot_capacity(max_seqlen + 256)
    if state.slots is None or (state.slots.numel() - 1) // 2 < half:
        state.slots = distance_slots(backbone.encoder.layer[0].attention.self, half, state.attentions[0].qkv_weight.device)
    return state.attentions, state.slots


def layer_tables(attention: nn.Module, rel_embeddings: torch.Tensor | None) -> Any:
    """The tile kernel's :class:`LayerTables` for one HF ``DisentangledSelfAttention``."""
    import torch

    from sparkcurate.engine.kernels.relative_attention import LayerTables

    weight, bias = fused_qkv(attention.query_proj, attention.key_proj, attention.value_proj)
    with torch.no_grad():
        pos_key, pos_query = position_tables(attention, rel_embeddings)
    heads = int(attention.num_attention_heads)
    head_dim = int(attention.attention_head_size)
    terms = 1 + (pos_key is not None) + (pos_query is not None)
    return LayerTables(weight, bias, pos_key, pos_query, heads, head_dim, terms)


# --------------------------------------------------------------------------- reference


def _attention_reference_varlen(
    attention: nn.Module,
    hidden: torch.Tensor,
    info: PackedInfo,
    rel_embeddings: torch.Tensor | None,
) -> torch.Tensor:
    """Packed attention by looping over sequences with HF's own module.

    Why: a kernel-free definition of what the packed kernel must compute, so the
    packing/unpacking glue can be checked on CPU against the padded forward.
    """
    import torch
    from transformers.models.deberta_v2.modeling_deberta_v2 import (
        build_relative_position,
    )

    outputs = []
    for start, length in zip(info.offsets, info.lengths):
        chunk = hidden[start : start + length][None]
        mask = torch.ones((1, 1, length, length), dtype=torch.bool, device=hidden.device)
        relative_pos = None
        if getattr(attention, "relative_attention", False):
            relative_pos = build_relative_position(
                chunk, chunk, bucket_size=attention.position_buckets, max_position=attention.max_relative_positions
            )
        context, _ = attention(chunk, mask, relative_pos=relative_pos, rel_embeddings=rel_embeddings)
        outputs.append(context[0])
    return torch.cat(outputs, dim=0)


# --------------------------------------------------------------------------- forward


def packed_last_hidden(
    backbone: nn.Module,
    input_ids: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int | None,
    attention_impl: str = "kernel",
    rows: str = "all",
) -> torch.Tensor:
    """Exact DeBERTa forward over packed sequences; returns the last hidden state.

    ``input_ids`` holds the B sequences concatenated (``[T]``), ``cu_seqlens`` their
    prefix sums (``[B+1]``, int32/int64, ideally still on the CPU so reading the
    boundaries costs no sync).

    ``rows="all"`` returns ``[T, H]``; the first token of sequence b is row
    ``cu_seqlens[b]``. ``rows="first"`` returns ``[B, H]``, each sequence's first
    ([CLS]) row, and skips the last layer's work for the other rows (the
    query projection, attention output and feed-forward blocks run on B rows;
    keys and values still on all T).
    """
    import torch

    if attention_impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {attention_impl!r}")
    if rows not in ROW_MODES:
        raise ValueError(f"rows must be one of {ROW_MODES}, got {rows!r}")
    problems = config_problems(backbone)
    if problems:
        raise ValueError("packed DeBERTa cannot run this model: " + "; ".join(problems))
    _check_input_ids(input_ids)
    info = packed_info(cu_seqlens, input_ids.numel(), max_seqlen)
    if attention_impl == "kernel":
        attention_impl = gpu_kernel()
    if attention_impl == "dflash" and info.max_seqlen > KERNEL_MAX_SEQLEN:
        raise ValueError(f"the packed kernel supports sequences up to {KERNEL_MAX_SEQLEN} tokens, got {info.max_seqlen}")
    if backbone.training:
        raise RuntimeError("packed_last_hidden is inference-only: call model.eval() first")
    device = input_ids.device
    cu_dev = cu_seqlens.to(device=device, dtype=torch.int32, non_blocking=True).contiguous()
    layers = list(backbone.encoder.layer)
    first_only = rows == "first" and bool(layers)
    full_layers = layers[:-1] if first_only else layers
    with torch.no_grad():
        hidden = _embed(backbone, input_ids, cu_dev, info)
        fused = _fused_tails(full_layers, hidden)
        if attention_impl == "reference":
            hidden = _encode_reference(backbone, hidden, info, full_layers, fused)
            tables = None
        elif attention_impl == "triton":
            if hidden.device.type != "cuda" and not _interpreting():
                raise RuntimeError("attention_impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1, Triton's "
                                   "CPU interpreter); use 'torch' or 'reference' on CPU")
            layer_tables, slots = _tile_tables_for(backbone, info.max_seqlen)
            hidden = _encode_tiles(full_layers, layer_tables, slots, hidden, cu_dev, info, fused)
            tables = _LastLayerTables.from_tiles(layer_tables[-1]) if first_only else None
        else:
            backend = "triton" if attention_impl == "dflash" else "torch"  # disentangled-flash's backends
            attentions = _attentions_for_impl(backbone, hidden, backend)
            hidden = _encode_dflash(full_layers, attentions, hidden, cu_dev, info, fused)
            tables = _LastLayerTables.from_wrapper(attentions[-1]) if first_only else None
        if not first_only:
            return hidden if rows == "all" else hidden.index_select(0, cu_dev[:-1].long())
        if tables is None:
            tables = _LastLayerTables.from_hf(layers[-1].attention.self, backbone.encoder.get_rel_embedding())
        return _last_layer_first_rows(layers[-1], hidden, cu_dev, info, tables)


def _encode_reference(
    backbone: nn.Module, hidden: torch.Tensor, info: PackedInfo, layers: list, fused: TailFusion
) -> torch.Tensor:
    """Encoder layers with the per-sequence HF attention (CPU reference)."""
    rel = backbone.encoder.get_rel_embedding()
    for layer in layers:
        context = _attention_reference_varlen(layer.attention.self, hidden, info, rel)
        hidden = _layer_tail(layer, context, hidden, fused)
    return hidden


def _attentions_for_impl(backbone: nn.Module, hidden: torch.Tensor, backend: str) -> list:
    """The cached disentangled-flash wrappers, after checking the device fits the backend."""
    if backend == "triton" and hidden.device.type != "cuda":
        raise RuntimeError("attention_impl='dflash' needs CUDA tensors; use 'torch' or 'reference' on CPU")
    return _attentions_for(backbone, backend)


def _encode_dflash(
    layers: list, attentions: list, hidden: torch.Tensor, cu_dev: torch.Tensor, info: PackedInfo, fused: TailFusion
) -> torch.Tensor:
    """Encoder layers with disentangled-flash's packed attention (``zip`` stops at ``layers``)."""
    from disentangled_flash.packed import PackedSequenceInfo

    dinfo = PackedSequenceInfo(info.offsets, info.lengths, info.max_seqlen)
    for layer, attention in zip(layers, attentions):
        context, _ = attention.forward_packed(hidden, cu_dev, info.max_seqlen, packed_info=dinfo)
        hidden = _layer_tail(layer, context, hidden, fused)
    return hidden


def _encode_tiles(
    layers: list, tables: list, slots: torch.Tensor, hidden: torch.Tensor, cu_dev: torch.Tensor, info: PackedInfo,
    fused: TailFusion,
) -> torch.Tensor:
    """Encoder layers with this package's tile kernel (:mod:`.kernels.relative_attention`)."""
    from sparkcurate.engine.kernels.relative_attention import packed_attention

    for layer, layer_tables in zip(layers, tables):
        context = packed_attention(layer_tables, hidden, cu_dev, info.max_seqlen, slots)
        hidden = _layer_tail(layer, context, hidden, fused)
    return hidden


@dataclass(frozen=True)
class TailFusion:
    """Which fusions a layer's tail (attention output, intermediate, output blocks) runs with; decided once per
    forward for all its layers by :func:`_fused_tails`."""

    #: each block's ``LayerNorm(dense(h) + input)`` as the dense layer plus one residual + LayerNorm kernel
    norm: bool = False
    #: the intermediate block's GELU in its GEMM's epilogue (:mod:`.kernels.gelu_epilogue`)
    gelu: bool = False

    def __bool__(self) -> bool:
        return self.norm or self.gelu


def _layer_tail(
    layer: nn.Module, context: torch.Tensor, hidden: torch.Tensor, fused: TailFusion = TailFusion()
) -> torch.Tensor:
    """Attention output, intermediate and output blocks of one HF layer (per token).

    ``fused`` (see :func:`_fused_tails`) replaces the blocks' own forwards with the same arithmetic in fewer
    kernels: residual + LayerNorm in one (:mod:`.kernels.residual_norm`; the blocks' dropouts are identities at
    inference), GELU in the intermediate GEMM (:mod:`.kernels.gelu_epilogue`).
    """
    from sparkcurate.engine.kernels.gelu_epilogue import intermediate_gelu
    from sparkcurate.engine.kernels.residual_norm import add_layer_norm

    if fused.norm:
        block = layer.attention.output
        attention_output = add_layer_norm(block.dense(context), hidden, block.LayerNorm)
    else:
        attention_output = layer.attention.output(context, hidden)
    if fused.gelu:
        inner = intermediate_gelu(layer.intermediate, attention_output)
    else:
        inner = layer.intermediate(attention_output)
    if fused.norm:
        block = layer.output
        return add_layer_norm(block.dense(inner), attention_output, block.LayerNorm)
    return layer.output(inner, attention_output)


def _fused_tails(layers: list, hidden: torch.Tensor) -> TailFusion:
    """Which fusions every layer's tail can run with. The residual + LayerNorm kernel: HF's own DeBERTa-v2
    output blocks (a subclass could change the forward) whose LayerNorms the kernel takes on this device
    (:func:`.residual_norm.usable`). The GELU epilogue: HF's own intermediate blocks that
    :func:`.gelu_epilogue.usable` takes."""
    from transformers.models.deberta_v2.modeling_deberta_v2 import (
        DebertaV2Intermediate,
        DebertaV2Output,
        DebertaV2SelfOutput,
    )

    from sparkcurate.engine.kernels import gelu_epilogue
    from sparkcurate.engine.kernels.residual_norm import usable

    norm = bool(layers) and all(
        type(layer.attention.output) is DebertaV2SelfOutput and type(layer.output) is DebertaV2Output
        and usable(layer.attention.output.LayerNorm, hidden) and usable(layer.output.LayerNorm, hidden)
        for layer in layers
    )
    gelu = bool(layers) and all(
        type(layer.intermediate) is DebertaV2Intermediate and gelu_epilogue.usable(layer.intermediate, hidden)
        for layer in layers
    )
    return TailFusion(norm=norm, gelu=gelu)


def first_token_rows(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Row index of each sequence's first ([CLS]) token in a packed ``[T, H]`` tensor."""
    return cu_seqlens[:-1].long()


# --------------------------------------------------------------------------- [CLS]-only last layer


@dataclass(frozen=True)
class _LastLayerTables:
    """What the [CLS]-only last layer needs besides the HF modules.

    ``kv_weight``/``kv_bias`` project keys and values in one GEMM (None: use the
    HF ``key_proj``/``value_proj``); ``pos_key``/``pos_query`` are the projected
    relative-position tables ``[heads, 2 * span, head_dim]`` for c2p/p2c (None
    when the term is off).
    """

    kv_weight: Any
    kv_bias: Any
    pos_key: Any
    pos_query: Any

    @classmethod
    def from_wrapper(cls, wrapper: nn.Module) -> _LastLayerTables:
        """Reuse a prepared disentangled-flash wrapper's fused weight and position tables."""
        rows = wrapper.all_head_size
        weight, bias = wrapper._cached_qkv_weight, wrapper._cached_qkv_bias
        types = set(wrapper.pos_att_type)
        pos_key, pos_query = wrapper._cached_pos_key, wrapper._cached_pos_query
        if ("c2p" in types and pos_key is None) or ("p2c" in types and pos_query is None) or weight is None:
            raise RuntimeError("the packed attention wrapper is not prepared (released position tables?)")
        return cls(
            kv_weight=weight[rows:],
            kv_bias=None if bias is None else bias[rows:],
            pos_key=pos_key if "c2p" in types else None,
            pos_query=pos_query if "p2c" in types else None,
        )

    @classmethod
    def from_hf(cls, attention: nn.Module, rel_embeddings: torch.Tensor | None) -> _LastLayerTables:
        """Project the position tables with HF's module, as its ``disentangled_attention_bias`` does."""
        pos_key, pos_query = position_tables(attention, rel_embeddings)
        return cls(kv_weight=None, kv_bias=None, pos_key=pos_key, pos_query=pos_query)

    @classmethod
    def from_tiles(cls, tables: Any) -> _LastLayerTables:
        """Reuse the tile kernel's fused weight and position tables (:class:`LayerTables`)."""
        rows = tables.heads * tables.head_dim
        bias = tables.qkv_bias
        return cls(kv_weight=tables.qkv_weight[rows:], kv_bias=None if bias is None else bias[rows:],
                   pos_key=tables.pos_key, pos_query=tables.pos_query)


def position_tables(attention: nn.Module, rel_embeddings: torch.Tensor | None) -> tuple[Any, Any]:
    """The layer's projected relative-position tables ``(pos_key, pos_query)``, ``[heads, 2 * span, head_dim]``.

    As HF's ``disentangled_attention_bias``: the shared embeddings through the
    key/query projection (or the separate position projections when
    ``share_att_key`` is off); None for a term the model does not use.
    """
    types = set(_pos_att_types(attention))
    pos_key = pos_query = None
    if types and rel_embeddings is None:
        raise ValueError(f"pos_att_type {sorted(types)} needs the relative-position embeddings, got None")
    if types:
        span = int(attention.pos_ebd_size)
        relative = attention.pos_dropout(rel_embeddings)[: 2 * span][None]
        heads = attention.num_attention_heads
        if "c2p" in types:
            proj = attention.key_proj if attention.share_att_key else attention.pos_key_proj
            pos_key = attention.transpose_for_scores(proj(relative), heads).contiguous()
        if "p2c" in types:
            proj = attention.query_proj if attention.share_att_key else attention.pos_query_proj
            pos_query = attention.transpose_for_scores(proj(relative), heads).contiguous()
    return pos_key, pos_query


#: Query-0 slot tables per (buckets, max distance, span, device): the largest built so far, sliced per call.
_FIRST_ROW_SLOTS: dict[tuple, tuple[Any, Any]] = {}


def _first_row_buckets(attention: nn.Module, length: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Position-table slots for query 0 against keys ``0..length-1`` (``[length]`` each).

    Built with HF's own ``build_relative_position`` (same log buckets): c2p
    reads slot ``bucket(0 - j) + span`` of the query's row, p2c reads slot
    ``-bucket(j - 0) + span`` of key j's row (HF: ``r_pos[j, 0]``), both clamped.

    Why cached: HF's bucketing copies a Python scalar to the GPU (``torch.tensor(...).type_as``), a blocking
    copy that drains the launch queue, twice per micro-batch (measured: 25 host syncs in a 2000-document call on
    the H100). Slot j does not depend on ``length``, so one table, grown in ``_SLOT_STEP`` steps, serves every
    length as a slice (a view: no launch, no sync).
    """
    key = (int(attention.position_buckets), int(attention.max_relative_positions), int(attention.pos_ebd_size),
           str(device))
    cached = _FIRST_ROW_SLOTS.get(key)
    if cached is None or cached[0].numel() < length:
        cached = _build_first_row_buckets(attention, _slot_capacity(length), device)
        _FIRST_ROW_SLOTS[key] = cached
    return cached[0][:length], cached[1][:length]


def _build_first_row_buckets(attention: nn.Module, length: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_first_row_buckets` uncached."""
    import torch
    from transformers.models.deberta_v2.modeling_deberta_v2 import (
        build_relative_position,
    )

    span = int(attention.pos_ebd_size)
    one = torch.empty((1, 0), device=device)
    keys = torch.empty((length, 0), device=device)
    buckets, max_pos = attention.position_buckets, attention.max_relative_positions
    c2p_rel = build_relative_position(one, keys, bucket_size=buckets, max_position=max_pos)[0, 0]
    p2c_rel = build_relative_position(keys, one, bucket_size=buckets, max_position=max_pos)[0, :, 0]
    c2p = torch.clamp(c2p_rel + span, 0, 2 * span - 1)
    p2c = torch.clamp(-p2c_rel + span, 0, 2 * span - 1)
    return c2p, p2c


def _pad_rows(values: torch.Tensor, cu_dev: torch.Tensor, max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed ``[T, A]`` -> padded ``[B, L, A]`` plus the key mask ``[B, L]`` (device ops, no sync)."""
    import torch

    starts = cu_dev[:-1].long()
    lengths = (cu_dev[1:] - cu_dev[:-1]).long()
    pos = torch.arange(max_seqlen, device=values.device)
    valid = pos[None, :] < lengths[:, None]
    index = torch.where(valid, starts[:, None] + pos[None, :], torch.zeros_like(starts)[:, None])
    return values.index_select(0, index.reshape(-1)).view(len(starts), max_seqlen, -1), valid


def _last_layer_first_rows(
    layer: nn.Module, hidden: torch.Tensor, cu_dev: torch.Tensor, info: PackedInfo, tables: _LastLayerTables
) -> torch.Tensor:
    """The last encoder layer for each sequence's first token only; ``[T, H]`` in, ``[B, H]`` out.

    Why exact: row 0's output depends on the other tokens only through their
    keys and values (and their p2c scores, which are key-side), all of which
    are computed here for every token; everything after attention is per row.
    The B queries attend over a padded ``[B, L]`` key layout (micro-batches are
    length-sorted, so the padding is small) with padded keys masked out.
    """
    import torch

    from sparkcurate.engine.kernels import split_weights

    attention = layer.attention.self
    heads, head_dim = attention.num_attention_heads, attention.attention_head_size
    batch, length = len(info.lengths), info.max_seqlen
    first = hidden.index_select(0, cu_dev[:-1].long())
    query = attention.query_proj(first).view(batch, heads, head_dim)
    if tables.kv_weight is not None:
        key, value = split_weights.linear(hidden, tables.kv_weight, tables.kv_bias).split(attention.all_head_size,
                                                                                          dim=-1)
    else:
        key, value = attention.key_proj(hidden), attention.value_proj(hidden)
    key_pad, valid = _pad_rows(key, cu_dev, length)
    value_pad, _ = _pad_rows(value, cu_dev, length)
    key_pad = key_pad.view(batch, length, heads, head_dim).transpose(1, 2)  # [B, h, L, d]
    value_pad = value_pad.view(batch, length, heads, head_dim).transpose(1, 2)

    scores = torch.matmul(query[:, :, None, :], key_pad.transpose(-1, -2))[:, :, 0].float()  # [B, h, L]
    terms = 1
    if tables.pos_key is not None or tables.pos_query is not None:
        c2p_slot, p2c_slot = _first_row_buckets(attention, length, hidden.device)
        if tables.pos_key is not None:  # content -> position: query 0's row of query @ pos_key^T
            c2p = torch.matmul(query.transpose(0, 1), tables.pos_key.transpose(-1, -2))  # [h, B, 2span]
            scores = scores + c2p.index_select(-1, c2p_slot).transpose(0, 1).float()
            terms += 1
        if tables.pos_query is not None:  # position -> content: key j against its slot for query 0
            pos_query = tables.pos_query.index_select(1, p2c_slot)  # [h, L, d]
            scores = scores + torch.einsum("bhld,hld->bhl", key_pad, pos_query).float()
            terms += 1
    scores = (scores / math.sqrt(head_dim * terms)).masked_fill(~valid[:, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(value_pad.dtype)
    context = torch.matmul(probs[:, :, None, :], value_pad).reshape(batch, heads * head_dim)
    attention_output = layer.attention.output(context, first)
    return layer.output(layer.intermediate(attention_output), attention_output)
