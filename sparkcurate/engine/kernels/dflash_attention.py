"""The disentangled-flash package's packed attention as back-ends of the packed DeBERTa forward.

Two back-ends: ``"dflash"``, its Triton varlen kernel (CUDA; ``InferenceDisentangledSelfAttention.forward_packed``),
a second opinion beside this package's tile kernel (:mod:`.relative_attention`), and ``"torch"``, its PyTorch
backend (loops over sequences; runs on the CPU). The per-layer attention wrappers alias the backbone's own
``Linear`` modules (never mutated); only parameter-derived tensors are cached: the relative-position embeddings
projected by each layer's key/query projection (``2 * position_buckets`` rows per layer) and a fused copy of the
Q/K/V weights (``3 * H * H`` per layer, so Q/K/V are one GEMM). Both are rebuilt whenever an attention weight
changes.

:func:`set_tuning_mode` / ``SPARKCURATE_DFLASH_TUNING`` pick the kernel's launch-config tuning (``auto``: saved
profile, else heuristic; ``autotune``: benchmark configs at run time; ``heuristic``: never profile).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sparkcurate.engine.kernels import switches, usage
from sparkcurate.engine.kernels.backends import (
    AttentionBackend,
    LastLayerTables,
    LayerTail,
    PackedInfo,
    cached_state,
    fused_qkv,
    pos_att_types,
)

if TYPE_CHECKING:  # heavy imports stay lazy at runtime
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

#: disentangled-flash versions whose internals (the attention wrapper's
#: ``_project_qkv`` / ``_prepare_fused_qkv`` hooks) this module was written against.
SUPPORTED_DFLASH_PREFIXES = ("1.1.",)
#: Longest sequence the bounded Triton kernel family supports.
KERNEL_MAX_SEQLEN = 8192
#: Environment variable that picks disentangled-flash's kernel tuning mode.
TUNING_ENV = switches.DFLASH_TUNING
_TUNING_OVERRIDE: str | None = None


def dflash_problem() -> str | None:
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


# --------------------------------------------------------------------------- tuning


def set_tuning_mode(mode: str | None) -> str | None:
    """Override ``SPARKCURATE_DFLASH_TUNING`` for this process; ``None`` goes back to it.

    Returns the previous override, so callers (benchmarks) can restore it. The
    wrappers are rebuilt on the next forward because the mode is part of their
    cache key.
    """
    global _TUNING_OVERRIDE
    if mode is not None:
        mode = switches.check(TUNING_ENV, mode)
    previous, _TUNING_OVERRIDE = _TUNING_OVERRIDE, mode
    return previous


def tuning_mode() -> str:
    """The kernel tuning mode in force: the override, else the env variable, else ``auto``."""
    if _TUNING_OVERRIDE is not None:
        return _TUNING_OVERRIDE
    return switches.read(TUNING_ENV)


# --------------------------------------------------------------------------- wrappers


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
        uses_position_bias=bool({"c2p", "p2c"} & set(pos_att_types(config))),
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


def attentions_for(backbone: nn.Module, backend: str) -> list:
    """Cached wrappers for a backbone, rebuilt when its attention weights change."""
    mode = tuning_mode()
    usage.record("attention_tuning", mode)

    def build() -> list:
        logger.debug("building packed attention wrappers (%s, tuning %s) for %s", backend, mode,
                     type(backbone).__name__)
        return _build_attentions(backbone, backend, mode)

    return cached_state(backbone, backend, mode, build).attentions


def last_layer_tables(wrapper: nn.Module) -> LastLayerTables:
    """Reuse a prepared disentangled-flash wrapper's fused weight and position tables."""
    rows = wrapper.all_head_size
    weight, bias = wrapper._cached_qkv_weight, wrapper._cached_qkv_bias
    types = set(wrapper.pos_att_type)
    pos_key, pos_query = wrapper._cached_pos_key, wrapper._cached_pos_query
    if ("c2p" in types and pos_key is None) or ("p2c" in types and pos_query is None) or weight is None:
        raise RuntimeError("the packed attention wrapper is not prepared (released position tables?)")
    return LastLayerTables(
        kv_weight=weight[rows:],
        kv_bias=None if bias is None else bias[rows:],
        pos_key=pos_key if "c2p" in types else None,
        pos_query=pos_query if "p2c" in types else None,
    )


# --------------------------------------------------------------------------- back-ends


class DflashAttention(AttentionBackend):
    """disentangled-flash's packed attention through its ``backend`` ("triton": the CUDA kernel, "torch")."""

    def __init__(self, backend: str, name: str):
        self.backend, self.name = backend, name
        self.gpu_kernel = backend == "triton"
        self.description = "disentangled-flash" if self.gpu_kernel else "disentangled-flash's PyTorch backend"

    def problem(self) -> str | None:
        return dflash_problem()

    def check(self, device: Any, info: PackedInfo) -> None:
        if self.gpu_kernel and info.max_seqlen > KERNEL_MAX_SEQLEN:
            raise ValueError(f"the packed kernel supports sequences up to {KERNEL_MAX_SEQLEN} tokens, got "
                             f"{info.max_seqlen}")

    def run(self, backbone: nn.Module, layers: list, hidden: torch.Tensor, cu_dev: torch.Tensor, info: PackedInfo,
            tail: LayerTail, last: bool) -> tuple[torch.Tensor, LastLayerTables | None]:
        """Encoder layers with disentangled-flash's packed attention (``zip`` stops at ``layers``)."""
        from disentangled_flash.packed import PackedSequenceInfo

        if self.gpu_kernel and hidden.device.type != "cuda":
            raise RuntimeError(f"attention_impl={self.name!r} needs CUDA tensors; use 'torch' or 'reference' on CPU")
        attentions = attentions_for(backbone, self.backend)
        dinfo = PackedSequenceInfo(info.offsets, info.lengths, info.max_seqlen)
        for layer, attention in zip(layers, attentions):
            context, _ = attention.forward_packed(hidden, cu_dev, info.max_seqlen, packed_info=dinfo)
            hidden = tail(layer, context, hidden)
        return hidden, last_layer_tables(attentions[-1]) if last else None


#: The CUDA kernel ("dflash") and the PyTorch loop over sequences ("torch"; runs on CPU).
KERNEL = DflashAttention("triton", "dflash")
TORCH = DflashAttention("torch", "torch")
