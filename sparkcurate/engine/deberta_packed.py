"""Packed (unpadded) DeBERTa-v2/v3 inference.

Why: documents in a batch have very different lengths. A padded forward spends
most of its attention and linear-layer work on padding. DeBERTa's relative
positions stay inside each sequence, so dropping the padding and running the
concatenated tokens ``[T, H]`` through the encoder is *exact*: every linear
layer is per token, and attention only needs the sequence boundaries
(``cu_seqlens``, FlashAttention style).

The attention runs through one of the back-ends of :data:`ATTENTION_BACKENDS`
(each a module of :mod:`sparkcurate.engine.kernels`); the embeddings, attention
output, intermediate and output blocks are the backbone's own modules
(transformers' ``DebertaV2Model`` or this package's :mod:`.deberta`, which has the
same names and arithmetic), called on ``[T, H]`` tensors (their residual + LayerNorm and GELU fused
where the kernels allow: :func:`_fused_tails`).

Heads that read only the first ([CLS]) token of each sequence ask for
``rows="first"``: the last layer then computes keys/values for all tokens but
queries, attention output and the feed-forward blocks for those B rows only.

Entry points:

* :func:`packed_support` says whether the kernel path can be used for a
  backbone on a device, with a human-readable reason when it cannot.
* :func:`packed_last_hidden` returns the last hidden state ``[T, H]``.
  ``attention_impl="kernel"`` uses a GPU kernel: ``"triton"``, this package's
  tile kernel (:mod:`.kernels.relative_attention`, the default) or ``"dflash"``,
  disentangled-flash's (:mod:`.kernels.dflash_attention`;
  ``SPARKCURATE_ATTENTION_KERNEL`` picks; both CUDA only), ``"torch"``
  disentangled-flash's PyTorch backend (loops over sequences; runs on CPU) and
  ``"reference"`` loops over sequences through the backbone's own padded
  ``DisentangledSelfAttention`` (:mod:`.kernels.reference_attention`; used by the
  CPU tests to check the packing glue against the padded forward).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from sparkcurate.engine.kernels import dflash_attention, reference_attention, relative_attention, switches, usage
from sparkcurate.engine.kernels.backends import (
    KERNEL_HEAD_DIMS,
    AttentionBackend,
    LastLayerTables,
    PackedInfo,
    pos_att_types,
    slot_capacity,
)

if TYPE_CHECKING:  # heavy imports stay lazy at runtime
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

#: The attention back-ends, by ``attention_impl`` name. A new kernel: its module in engine/kernels/ (an
#: :class:`~.kernels.backends.AttentionBackend`) and one row here.
ATTENTION_BACKENDS: dict[str, AttentionBackend] = {
    "triton": relative_attention.BACKEND,
    "dflash": dflash_attention.KERNEL,
    "torch": dflash_attention.TORCH,
    "reference": reference_attention.BACKEND,
}
ATTENTION_IMPLS = ("kernel", *ATTENTION_BACKENDS)
#: GPU kernels "kernel" can mean (``SPARKCURATE_ATTENTION_KERNEL`` picks; default: triton).
GPU_KERNELS = tuple(name for name, backend in ATTENTION_BACKENDS.items() if backend.gpu_kernel)
#: Environment variable that picks the GPU kernel behind attention_impl="kernel" (default: triton).
KERNEL_ENV = switches.ATTENTION_KERNEL
#: Which rows of the last hidden state :func:`packed_last_hidden` returns.
ROW_MODES = ("all", "first")


# --------------------------------------------------------------------------- support


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
    types = pos_att_types(config)
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



def packed_support(backbone: nn.Module, device: Any) -> tuple[bool, str]:
    """Say whether :func:`packed_last_hidden` with the kernel can run, and why not.

    Checks, in order: a CUDA device, the chosen GPU kernel's software (its
    back-end's ``problem()``), a supported architecture (:func:`config_problems`)
    and half-precision weights (bf16/fp16: the packed path exists for speed; fp32
    works but gains little).
    """
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return False, f"packed attention needs a CUDA device, got '{dev}'"
    if not torch.cuda.is_available():
        return False, "packed attention needs CUDA, but torch.cuda.is_available() is False"
    backend = ATTENTION_BACKENDS[gpu_kernel()]
    problem = backend.problem()
    if problem:
        return False, problem
    problems = config_problems(backbone)
    if problems:
        return False, "unsupported model: " + "; ".join(problems)
    dtype = next(backbone.parameters()).dtype
    if dtype not in (torch.bfloat16, torch.float16):
        return False, f"weights are {dtype}; the packed kernel path is enabled for bf16/fp16 only"
    return True, f"packed DeBERTa attention ({backend.description}, {dtype}) on {dev}"


def import_kernels() -> bool:
    """Import the chosen GPU kernel's software by asking its back-end's ``problem()``, as :func:`packed_support`
    will (Triton for the tile kernel), and, unless ``SPARKCURATE_SMEM_ATTENTION=off``, Gluon for its Hopper
    variant, as the first forward will; whether the back-end is usable. Imports only: no device is touched.
    Why apart: the load runs it early (``runner.import_packed_kernels``)."""
    kernel = gpu_kernel()
    usable = ATTENTION_BACKENDS[kernel].problem() is None
    if usable and kernel == "triton" and switches.read(switches.SMEM_ATTENTION) != "off":
        from sparkcurate.engine.kernels import relative_attention_smem

        relative_attention_smem.gluon_problem()
    return usable


def gpu_kernel() -> str:
    """The GPU kernel behind ``attention_impl="kernel"``: ``SPARKCURATE_ATTENTION_KERNEL``, default ``triton``.

    Why a switch: the tile kernel (:mod:`.kernels.relative_attention`) needs only Triton
    and was faster on the H100 (benchmarks/NOTES.md, fifth round); disentangled-flash
    stays selectable to compare and as a second opinion.
    """
    return switches.read(KERNEL_ENV, GPU_KERNELS)


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
    backend = ATTENTION_BACKENDS[attention_impl]
    backend.check(input_ids.device, info)
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
        tail = partial(_layer_tail, fused=fused)
        hidden, tables = backend.run(backbone, full_layers, hidden, cu_dev, info, tail, last=first_only)
        usage.record("attention", attention_impl)
        usage.record("fused_norm", "on" if fused.norm else "off")
        usage.record("gelu_epilogue", "on" if fused.gelu else "off")
        if not first_only:
            return hidden if rows == "all" else hidden.index_select(0, cu_dev[:-1].long())
        if tables is None:
            tables = LastLayerTables.from_hf(layers[-1].attention.self, backbone.encoder.get_rel_embedding())
        return _last_layer_first_rows(layers[-1], hidden, cu_dev, info, tables)


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
    """Which fusions every layer's tail can run with. The residual + LayerNorm kernel: output blocks of exactly
    transformers' or this package's DeBERTa classes (a subclass could change the forward) whose LayerNorms the
    kernel takes on this device (:func:`.kernels.residual_norm.usable`). The GELU epilogue: intermediate blocks of
    those classes that :func:`.kernels.gelu_epilogue.usable` takes."""
    from sparkcurate.engine.kernels import gelu_epilogue
    from sparkcurate.engine.kernels.residual_norm import usable

    norm = bool(layers) and all(
        _is_block(layer.attention.output, "SelfOutput", "DebertaV2SelfOutput")
        and _is_block(layer.output, "Output", "DebertaV2Output")
        and usable(layer.attention.output.LayerNorm, hidden) and usable(layer.output.LayerNorm, hidden)
        for layer in layers
    )
    gelu = bool(layers) and all(
        _is_block(layer.intermediate, "Intermediate", "DebertaV2Intermediate")
        and gelu_epilogue.usable(layer.intermediate, hidden)
        for layer in layers
    )
    return TailFusion(norm=norm, gelu=gelu)


#: Where the DeBERTa blocks whose forwards the fused tails reproduce are defined.
_OWN_BLOCKS = "sparkcurate.engine.deberta"
_HF_BLOCKS = "transformers.models.deberta_v2.modeling_deberta_v2"


def _is_block(module: Any, own: str, hf: str) -> bool:
    """``module`` is exactly this package's class ``own`` or transformers' class ``hf`` (never a subclass).

    Why by module and name: comparing with transformers' class objects would import its modeling stack, ~10 s in
    a fresh worker, for a model that is built from this package's modules (:mod:`.deberta`).
    """
    cls = type(module)
    return (cls.__module__, cls.__qualname__) in ((_OWN_BLOCKS, own), (_HF_BLOCKS, hf))


# --------------------------------------------------------------------------- [CLS]-only last layer


#: Query-0 slot tables per (buckets, max distance, span, device): the largest built so far, sliced per call.
_FIRST_ROW_SLOTS: dict[tuple, tuple[Any, Any]] = {}


def _first_row_buckets(attention: nn.Module, length: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Position-table slots for query 0 against keys ``0..length-1`` (``[length]`` each).

    Built with :func:`.deberta.build_relative_position` (transformers' log buckets, operation for operation): c2p
    reads slot ``bucket(0 - j) + span`` of the query's row, p2c reads slot
    ``-bucket(j - 0) + span`` of key j's row (HF: ``r_pos[j, 0]``), both clamped.

    Why cached: HF's bucketing copies a Python scalar to the GPU (``torch.tensor(...).type_as``), a blocking
    copy that drains the launch queue, twice per micro-batch (measured: 25 host syncs in a 2000-document call on
    the H100). Slot j does not depend on ``length``, so one table, grown in ``SLOT_STEP`` steps
    (:func:`.kernels.backends.slot_capacity`), serves every length as a slice (a view: no launch, no sync).
    """
    key = (int(attention.position_buckets), int(attention.max_relative_positions), int(attention.pos_ebd_size),
           str(device))
    cached = _FIRST_ROW_SLOTS.get(key)
    if cached is None or cached[0].numel() < length:
        cached = _build_first_row_buckets(attention, slot_capacity(length), device)
        _FIRST_ROW_SLOTS[key] = cached
    return cached[0][:length], cached[1][:length]


def _build_first_row_buckets(attention: nn.Module, length: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_first_row_buckets` uncached."""
    import torch

    from sparkcurate.engine.deberta import build_relative_position

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
    layer: nn.Module, hidden: torch.Tensor, cu_dev: torch.Tensor, info: PackedInfo, tables: LastLayerTables
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
