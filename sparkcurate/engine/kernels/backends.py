"""What an attention back-end of the packed DeBERTa forward is, and the per-layer tables the back-ends share.

Why here and not in :mod:`sparkcurate.engine.deberta_packed`: the forward picks a back-end from one table
(``ATTENTION_BACKENDS``, name -> :class:`AttentionBackend`) and each back-end lives in its own module of this
package; they share the packed-batch description, the fused Q/K/V weight, the projected relative-position tables
and a per-backbone cache. Keeping those below both sides means no back-end imports the forward that uses it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # heavy imports stay lazy at runtime
    import torch
    from torch import nn

#: Head dimensions the packed forward's kernels are built for (the packed support check and the lean modules'
#: config check both read it).
KERNEL_HEAD_DIMS = (32, 64, 128)

#: ``tail(layer, context, hidden)``: a layer's attention output, intermediate and output blocks after its attention.
LayerTail = Callable[[Any, Any, Any], Any]


@dataclass(frozen=True)
class PackedInfo:
    """Host-side description of a packed batch (offsets and lengths)."""

    offsets: tuple[int, ...]
    lengths: tuple[int, ...]
    max_seqlen: int


@dataclass(frozen=True)
class LastLayerTables:
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
    def from_hf(cls, attention: nn.Module, rel_embeddings: torch.Tensor | None) -> LastLayerTables:
        """Project the position tables with HF's module, as its ``disentangled_attention_bias`` does."""
        pos_key, pos_query = position_tables(attention, rel_embeddings)
        return cls(kv_weight=None, kv_bias=None, pos_key=pos_key, pos_query=pos_query)


class AttentionBackend:
    """One way to compute the packed forward's attention, layer by layer.

    A new kernel subclasses this in its own module of ``engine/kernels/`` and adds one row to
    ``deberta_packed.ATTENTION_BACKENDS``; the forward asks it nothing else.
    """

    #: Words for ``packed_support``'s message and the logs.
    description: str = ""
    #: A CUDA kernel that ``attention_impl="kernel"`` (``SPARKCURATE_ATTENTION_KERNEL``) may pick.
    gpu_kernel: bool = False

    def problem(self) -> str | None:
        """Why it cannot run in this process at all (a missing package, an old Triton); None: it can."""
        return None

    def available(self) -> bool:
        return self.problem() is None

    def check(self, device: Any, info: PackedInfo) -> None:
        """Raise when it cannot run on ``device`` or for these sequence lengths (called before any work)."""

    def run(self, backbone: nn.Module, layers: list, hidden: torch.Tensor, cu_dev: torch.Tensor, info: PackedInfo,
            tail: LayerTail, last: bool) -> tuple[torch.Tensor, LastLayerTables | None]:
        """``layers`` (attention, then ``tail``) on packed ``hidden [T, H]``; with ``last``, also the last encoder
        layer's tables for the [CLS]-only layer (None: the forward derives them from HF's module)."""
        raise NotImplementedError


# --------------------------------------------------------------------------- shared tables


def pos_att_types(config: Any) -> tuple[str, ...]:
    """Normalise ``pos_att_type`` (a list, or an older ``"p2c|c2p"`` string)."""
    raw = getattr(config, "pos_att_type", None) or ()
    if isinstance(raw, str):
        raw = raw.split("|")
    return tuple(str(part).strip().lower() for part in raw if str(part).strip())


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


def position_tables(attention: nn.Module, rel_embeddings: torch.Tensor | None) -> tuple[Any, Any]:
    """The layer's projected relative-position tables ``(pos_key, pos_query)``, ``[heads, 2 * span, head_dim]``.

    As HF's ``disentangled_attention_bias``: the shared embeddings through the
    key/query projection (or the separate position projections when
    ``share_att_key`` is off); None for a term the model does not use.
    """
    types = set(pos_att_types(attention))
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


# --------------------------------------------------------------------------- per-backbone cache

#: Distances are tabulated in steps of this many tokens (fewer rebuilds as batch lengths vary).
SLOT_STEP = 512


def slot_capacity(count: int) -> int:
    """``count`` rounded up to whole ``SLOT_STEP``s (at least one): the size a slot table is built at."""
    return -(-max(count, 1) // SLOT_STEP) * SLOT_STEP


@dataclass
class _PackedState:
    """Per-backbone attention state (wrappers or tables, one per layer) plus the key that says it is fresh."""

    key: tuple
    attentions: list
    slots: Any = None


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state_key(backbone: nn.Module, backend: str, mode: str) -> tuple:
    """A key that changes whenever a weight the cached tensors derive from changes.

    Why: the back-ends cache each layer's projected relative-position table and a
    fused copy of its Q/K/V weights. ``data_ptr`` catches moved/re-cast weights,
    ``_version`` in-place loads (``load_state_dict``, ``mul_``). ``mode`` (a
    back-end's build setting, e.g. disentangled-flash's tuning) is part of the key
    because the state is built with it.
    """
    encoder = backbone.encoder
    tensors = [encoder.rel_embeddings.weight]
    if hasattr(encoder, "LayerNorm"):
        tensors += [encoder.LayerNorm.weight, encoder.LayerNorm.bias]
    for layer in encoder.layer:
        tensors += [p for p in layer.attention.self.parameters()]
    first = tensors[0]
    return (backend, mode, str(first.device), first.dtype, tuple((t.data_ptr(), t._version) for t in tensors))


def cached_state(backbone: nn.Module, backend: str, mode: str, build: Callable[[], list]) -> _PackedState:
    """The backbone's cached per-layer state for ``backend``, rebuilt by ``build()`` when an attention weight
    changed or another back-end (or mode) ran last."""
    key = _state_key(backbone, backend, mode)
    state = _STATES.get(backbone)
    if state is None or state.key != key:
        state = _PackedState(key=key, attentions=build())
        _STATES[backbone] = state
    return state
