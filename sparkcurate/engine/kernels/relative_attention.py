"""Packed DeBERTa disentangled attention in one Triton kernel, position scores made per tile.

Why our own kernel: DeBERTa adds two relative-position terms to every score,
``q_i . Kr[slot(i - j)]`` (content to position, c2p) and ``k_j . Qr[slot(i - j)]``
(position to content, p2c), where ``Kr``/``Qr`` are the layer's key/query
projections of the shared relative-position embeddings (``2 * span`` rows a head)
and ``slot`` is DeBERTa's log-bucketed distance. The usual way (Hugging Face, and
the disentangled-flash kernel) first multiplies every token by every position row,
``[heads, T, 2 * span]`` tables written to GPU memory per layer (0.8 GB each at
65k tokens), and then gathers one element per (i, j) pair from them. On an H100
that attention was 43% of the forward (benchmarks/NOTES.md, third round).

A (query tile, key tile) pair of a FlashAttention-style loop needs position rows
only for the distances its pairs span: ``i - j`` runs over ``BLOCK_M + BLOCK_N - 1``
consecutive values, and the tables (``[heads, 2 * span, head_dim]``, a few hundred
kB a layer) stay in L2. The tensor cores give the position scores indexed by
(row, distance), but they are needed at (row, key): a different column per row, a
*shear*. How it is done here (``shear="scratch"``; on Hopper GPUs the default is
``shear="smem"``, the Gluon kernel of :mod:`.relative_attention_smem`, which does
the shear in shared memory):

* c2p depends on the query and the distance only, so each query tile makes its
  whole band once (``[BLOCK_M, ~max_seqlen + BLOCK_M]``: the query tile times the
  rows of every distance it will meet) into a per-program scratch area, and every
  key tile reads its diagonal from there with a plain load.
* p2c depends on the key, so each key tile makes ``[WINDOW, BLOCK_N]`` (its keys
  times the window's rows), stores it transposed, and reads the diagonal back.

The scratch is per persistent program (``PROGRAMS_PER_SM`` per multiprocessor,
bounded by ``SCRATCH_BYTES``), so it stays in L1/L2 and its size does not grow with
the batch. ``shear="gather"`` does the same with ``tl.gather`` in registers (no
scratch; slower on the H100, where it lowers to warp shuffles). Nothing of size
``T x 2 * span`` is written. Measured against disentangled-flash in
benchmarks/NOTES.md (fifth round).

Exactness: the slot of every distance comes from ``make_log_bucket_position``
(:mod:`sparkcurate.engine.deberta`: transformers' function operation for operation,
compared with it in tests/test_lean_deberta.py), evaluated on the model's device (its
``ceil(log)`` could differ by device at a bucket edge), so the buckets are Hugging Face's.
Sequences never see each other (``cu_seqlens``), so the packed result equals the
padded forward row for row (tests/test_relative_attention.py on CPU through
Triton's interpreter; tests/gpu for the compiled kernel).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sparkcurate.engine.kernels import switches, usage
from sparkcurate.engine.kernels.backends import (
    AttentionBackend,
    LastLayerTables,
    LayerTail,
    PackedInfo,
    cached_state,
    fused_qkv,
    position_tables,
    slot_capacity,
)

if TYPE_CHECKING:  # heavy imports stay lazy at runtime
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

#: Head dimensions the kernel is compiled for (``tl.dot`` needs >= 16; powers of two).
HEAD_DIMS = (16, 32, 64, 128)
#: (BLOCK_M, BLOCK_N, num_warps, num_stages) by head dimension. BLOCK_M == BLOCK_N keeps the
#: distance window ``BLOCK_M + BLOCK_N`` a power of two. Picked on an H100 (benchmarks/NOTES.md).
LAUNCH_CONFIGS: dict[int, tuple[int, int, int, int]] = {
    16: (64, 64, 4, 3),
    32: (64, 64, 4, 3),
    64: (64, 64, 4, 3),
    128: (32, 32, 4, 2),  # not measured: smaller tiles for the larger register footprint
}
#: How a tile's position scores are read along its diagonal (see :func:`packed_attention`).
SHEARS = ("smem", "scratch", "gather")
#: Where "smem" cannot run (see :func:`~.relative_attention_smem.smem_problem`), the default is "scratch".
DEFAULT_SHEAR = "smem"
#: Keep the scratch position scores in fp32 (else the weights' dtype, as score tables usually are).
SCRATCH_FP32 = False
#: Persistent programs launched per multiprocessor.
PROGRAMS_PER_SM = 16
#: Upper bound of the scratch buffer (fewer persistent programs when a batch's bands would need more).
SCRATCH_BYTES = 384 << 20
#: Environment variable overriding the launch config, "BLOCK_M,BLOCK_N,num_warps,num_stages".
CONFIG_ENV = switches.ATTENTION_CONFIG

_KERNELS: dict[bool, Any] = {}


def triton_problem() -> str | None:
    """Why the kernel cannot be compiled here (None: it can)."""
    try:
        import triton  # noqa: F401
        import triton.language as tl
    except ImportError as exc:  # CPU wheels of torch come without Triton
        return f"Triton is not importable ({exc})"
    if not hasattr(tl, "gather"):
        import triton

        return f"Triton {triton.__version__} has no tl.gather (needs Triton >= 3.2)"
    return None


def _kernel() -> Any:
    """Build (once per interpreter mode) the jitted kernel.

    Why built lazily: Triton is imported only where used, and ``triton.jit``
    decides at decoration time whether the kernel is compiled or interpreted
    (``TRITON_INTERPRET=1``: numpy on the CPU, how the CI checks it).
    """
    mode = switches.triton_interpreting()
    if mode in _KERNELS:
        return _KERNELS[mode]
    import triton
    import triton.language as tl

    @triton.jit
    def packed_disentangled_attention(
        query, key, value, stride_q, stride_k, stride_v,
        pos_key, pos_query, slots, cu_seqlens, output, scratch,
        num_heads, query_blocks, work_items, position_rows, slot_half, score_scale, band_pitch,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, IEEE: tl.constexpr, SCRATCH: tl.constexpr,
    ):
        WINDOW: tl.constexpr = BLOCK_M + BLOCK_N
        rows = tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        dims = tl.arange(0, HEAD_DIM)
        window = tl.arange(0, WINDOW)
        # Pair (r, c) of a tile has distance i - j = first_query - first_key + r - c, i.e.
        # window entry r - c + BLOCK_N - 1 of the tile's distances (first_query - first_key
        # - BLOCK_N + 1 + w for w in [0, WINDOW); the last entry is never read).
        diagonal = rows[:, None] - cols[None, :] + (BLOCK_N - 1)
        program = tl.program_id(0)
        # This program's own scratch: the query tile's c2p band [BLOCK_M, band_pitch], then the p2c tile
        # [BLOCK_N, WINDOW].
        c2p_scratch = scratch + program.to(tl.int64) * (BLOCK_M * band_pitch + BLOCK_N * WINDOW)
        p2c_scratch = c2p_scratch + BLOCK_M * band_pitch
        # Persistent: a fixed number of programs walks the (sequence x head, query tile) items,
        # so the scratch is sized by the grid, not by the batch.
        for item in range(program, work_items, tl.num_programs(0)):
            sequence_head = item // query_blocks
            query_block = item - sequence_head * query_blocks
            sequence = sequence_head // num_heads
            head = sequence_head - sequence * num_heads
            start = tl.load(cu_seqlens + sequence)
            length = tl.load(cu_seqlens + sequence + 1) - start
            first_query = query_block * BLOCK_M
            if first_query < length:
                query_pos = first_query + rows
                query_ok = query_pos < length
                head_cols = head * HEAD_DIM + dims
                q = tl.load(query + (start + query_pos).to(tl.int64)[:, None] * stride_q + head_cols[None, :],
                            mask=query_ok[:, None], other=0.0)
                table_head = head.to(tl.int64) * position_rows * HEAD_DIM
                row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
                row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
                acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
                if SCRATCH and HAS_C2P:
                    # c2p depends on the query and the distance only, so the query tile's whole band is made
                    # once: column b holds distance first_query + BLOCK_M - 1 - b, which every key tile then
                    # reads along its diagonal (b = BLOCK_M - 1 - r + first_key + c, ascending in c).
                    tl.debug_barrier()  # the previous item's reads of the band are done
                    for band_start in range(0, length + BLOCK_M, BLOCK_N):
                        band = band_start + cols
                        distance = first_query + BLOCK_M - 1 - band
                        distance = tl.minimum(tl.maximum(distance, -slot_half), slot_half)
                        slot = tl.load(slots + distance + slot_half).to(tl.int64)
                        position_keys = tl.load(pos_key + table_head + slot[:, None] * HEAD_DIM + dims[None, :])
                        if IEEE:
                            c2p = tl.dot(q, tl.trans(position_keys), input_precision="ieee")
                        else:
                            c2p = tl.dot(q, tl.trans(position_keys))
                        tl.store(c2p_scratch + rows[:, None] * band_pitch + band[None, :], c2p)
                    tl.debug_barrier()
                for first_key in range(0, length, BLOCK_N):
                    key_pos = first_key + cols
                    key_ok = key_pos < length
                    key_rows = (start + key_pos).to(tl.int64)
                    k = tl.load(key + key_rows[:, None] * stride_k + head_cols[None, :], mask=key_ok[:, None],
                                other=0.0)
                    if IEEE:
                        scores = tl.dot(q, tl.trans(k), input_precision="ieee")
                    else:
                        scores = tl.dot(q, tl.trans(k))
                    if (HAS_C2P and not SCRATCH) or HAS_P2C:
                        distance = first_query - first_key - (BLOCK_N - 1) + window
                        distance = tl.minimum(tl.maximum(distance, -slot_half), slot_half)
                        slot = tl.load(slots + distance + slot_half).to(tl.int64)
                        slot_offsets = table_head + slot[:, None] * HEAD_DIM + dims[None, :]
                    if HAS_C2P:
                        if SCRATCH:
                            band = BLOCK_M - 1 - rows[:, None] + first_key + cols[None, :]
                            scores += tl.load(c2p_scratch + rows[:, None] * band_pitch + band).to(tl.float32)
                        else:
                            position_keys = tl.load(pos_key + slot_offsets)
                            if IEEE:
                                c2p = tl.dot(q, tl.trans(position_keys), input_precision="ieee")
                            else:
                                c2p = tl.dot(q, tl.trans(position_keys))
                            scores += tl.gather(c2p, diagonal, axis=1)
                    if HAS_P2C:
                        position_queries = tl.load(pos_query + slot_offsets)
                        if IEEE:
                            p2c = tl.dot(position_queries, tl.trans(k), input_precision="ieee")
                        else:
                            p2c = tl.dot(position_queries, tl.trans(k))
                        if SCRATCH:
                            # Stored transposed: the diagonal read then runs along the query axis. (Storing
                            # only the half each key reads, with a mask, measured 40% slower on the H100.)
                            tl.store(p2c_scratch + cols[None, :] * WINDOW + window[:, None], p2c)
                        else:
                            scores += tl.gather(p2c, diagonal, axis=0)
                    if SCRATCH and HAS_P2C:
                        # The diagonal read is a plain load with computed offsets from this program's
                        # scratch (L1/L2-hot); the barriers order it after every thread's store and
                        # before the next tile overwrites it.
                        tl.debug_barrier()
                        scores += tl.load(p2c_scratch + cols[None, :] * WINDOW + diagonal).to(tl.float32)
                        tl.debug_barrier()
                    # score_scale folds 1/sqrt(d * terms) and log2(e) (exp2 below).
                    scores = tl.where(key_ok[None, :], scores * score_scale, float("-inf"))
                    new_max = tl.maximum(row_max, tl.max(scores, axis=1))
                    correction = tl.math.exp2(row_max - new_max)
                    probs = tl.math.exp2(scores - new_max[:, None])
                    row_sum = row_sum * correction + tl.sum(probs, axis=1)
                    v = tl.load(value + key_rows[:, None] * stride_v + head_cols[None, :], mask=key_ok[:, None],
                                other=0.0)
                    if IEEE:
                        acc = tl.dot(probs, v, acc * correction[:, None], input_precision="ieee")
                    else:
                        acc = tl.dot(probs.to(v.dtype), v, acc * correction[:, None])
                    row_max = new_max
                acc = acc / row_sum[:, None]
                out_rows = (start + query_pos).to(tl.int64) * (num_heads * HEAD_DIM)
                tl.store(output + out_rows[:, None] + head_cols[None, :], acc.to(output.dtype.element_ty),
                         mask=query_ok[:, None])

    _KERNELS[mode] = packed_disentangled_attention
    return packed_disentangled_attention


# --------------------------------------------------------------------------- tables


def distance_slots(attention: nn.Module, half: int, device: Any) -> torch.Tensor:
    """Position-table slot of every distance ``d = i - j`` in ``[-half, half]`` (int32, index ``d + half``).

    c2p reads ``clamp(bucket(i - j) + span)`` of the query's row and p2c
    ``clamp(-bucket(j - i) + span)`` of the key's; DeBERTa's buckets are odd
    (``bucket(-d) = -bucket(d)``), so both are this one table.
    """
    import torch

    from sparkcurate.engine.deberta import make_log_bucket_position

    span = int(attention.pos_ebd_size)
    distance = torch.arange(-half, half + 1, dtype=torch.long, device=device)
    buckets, max_pos = int(attention.position_buckets), int(attention.max_relative_positions)
    if buckets > 0 and max_pos > 0:
        distance = make_log_bucket_position(distance, buckets, max_pos).to(torch.long)
    return torch.clamp(distance + span, 0, 2 * span - 1).to(torch.int32).contiguous()


@dataclass(frozen=True)
class LayerTables:
    """What one layer's packed attention needs besides the hidden state.

    ``qkv_weight``/``qkv_bias``: the Q/K/V projections stacked (one GEMM; a copy,
    the backbone's modules are untouched). ``pos_key``/``pos_query``: the
    projected relative-position tables ``[heads, 2 * span, head_dim]``
    (contiguous; None when the term is off). ``terms``: 1 + the position terms
    (DeBERTa divides every score by ``sqrt(head_dim * terms)``).
    """

    qkv_weight: Any
    qkv_bias: Any
    pos_key: Any
    pos_query: Any
    heads: int
    head_dim: int
    terms: int


def packed_attention(
    tables: LayerTables,
    hidden: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    slots: torch.Tensor,
    config: tuple[int, int, int, int] | None = None,
    shear: str | None = None,
    programs_per_sm: int | None = None,
) -> torch.Tensor:
    """Attention context ``[T, heads * head_dim]`` of one layer for packed tokens ``hidden [T, H]``.

    ``cu_seqlens`` (int32, on ``hidden``'s device) bounds the sequences;
    ``slots`` is :func:`distance_slots` for a half-width of at least
    ``max_seqlen + BLOCK_M + BLOCK_N``. ``shear`` picks how a tile's position
    scores are read along its diagonal ("smem": the Gluon kernel of
    :mod:`.relative_attention_smem`, through shared memory, the default where it
    can run; "scratch": stored to a per-program scratch tile in global memory and
    loaded back; "gather": ``tl.gather`` in registers). ``config`` and
    ``programs_per_sm`` apply to the last two.
    """
    import torch
    import triton

    from sparkcurate.engine.kernels import relative_attention_smem as smem
    from sparkcurate.engine.kernels import split_weights

    heads, head_dim = tables.heads, tables.head_dim
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"head dimension {head_dim} is not one of {HEAD_DIMS}")
    requested, shear = shear, shear or DEFAULT_SHEAR
    if shear not in SHEARS:
        raise ValueError(f"shear must be one of {SHEARS}, got {shear!r}")
    if shear == "smem":
        problem = smem.smem_problem(hidden.device, hidden.dtype, head_dim)
        if problem is None:
            projected = split_weights.linear(hidden, tables.qkv_weight, tables.qkv_bias)
            try:
                output = smem.smem_attention(tables, projected, cu_seqlens, max_seqlen, slots)
            except smem.SmemUnavailable as exc:  # once per process: later calls see it in smem_problem
                problem = str(exc)
                if requested != "smem":
                    logger.warning("%s; using the Triton kernel's scratch shear", problem)
            else:
                usage.record("attention_shear", "smem")
                usage.record("attention_fallback", None)
                return output
        if requested == "smem":
            raise ValueError(f"shear='smem' cannot run here: {problem}")
        logger.debug("shared-memory kernel not used (%s): scratch shear", problem)
        usage.record("attention_fallback", f"shared-memory kernel not used: {problem}")
        shear = "scratch"
    usage.record("attention_shear", shear)
    block_m, block_n, warps, stages = config or launch_config(head_dim)
    half = (slots.numel() - 1) // 2
    if half < max_seqlen + block_m + block_n:
        raise ValueError(f"distance table covers +-{half}, needs +-{max_seqlen + block_m + block_n}")
    width = heads * head_dim
    projected = split_weights.linear(hidden, tables.qkv_weight, tables.qkv_bias)
    query, key, value = projected.split(width, dim=-1)
    output = torch.empty((hidden.shape[0], width), dtype=hidden.dtype, device=hidden.device)
    position_table = tables.pos_key if tables.pos_key is not None else tables.pos_query
    position_rows = position_table.shape[1] if position_table is not None else 1
    query_blocks = triton.cdiv(max_seqlen, block_m)
    work_items = query_blocks * (cu_seqlens.numel() - 1) * heads
    per_sm = PROGRAMS_PER_SM if programs_per_sm is None else programs_per_sm
    # Room for the c2p band of a query tile: every distance its key tiles meet, plus the last band chunk.
    band_pitch = triton.cdiv(max_seqlen, block_n) * block_n + block_m + block_n
    per_program = block_m * band_pitch + block_n * (block_m + block_n)
    scratch_dtype = torch.float32 if SCRATCH_FP32 else hidden.dtype
    # Gather needs no scratch, so it runs one program per item (per_sm 0 asks the same of scratch).
    if shear == "gather" or per_sm == 0:
        grid = work_items
    else:
        cap = max(1, SCRATCH_BYTES // (per_program * scratch_dtype.itemsize))
        grid = min(work_items, _program_slots(hidden.device, per_sm), cap)
    scratch = _scratch(hidden.device, scratch_dtype, grid * per_program, shear == "scratch")
    scale = 1.4426950408889634 / math.sqrt(head_dim * tables.terms)
    _kernel()[(grid,)](
        query, key, value, projected.stride(0), projected.stride(0), projected.stride(0),
        tables.pos_key if tables.pos_key is not None else query,  # never read when the term is off
        tables.pos_query if tables.pos_query is not None else query,
        slots, cu_seqlens, output, scratch,
        heads, query_blocks, work_items, position_rows, half, scale, band_pitch,
        HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n,
        HAS_C2P=tables.pos_key is not None, HAS_P2C=tables.pos_query is not None,
        IEEE=hidden.dtype == torch.float32, SCRATCH=shear == "scratch",
        num_warps=warps, num_stages=stages,
    )
    return output


def _program_slots(device: Any, per_sm: int) -> int:
    """How many persistent programs to launch: ``per_sm`` per multiprocessor (``per_sm`` on the CPU interpreter)."""
    import torch

    if device.type != "cuda":
        return per_sm
    return torch.cuda.get_device_properties(device).multi_processor_count * per_sm


_SCRATCH: dict = {}


def _scratch(device: Any, dtype: Any, elements: int, needed: bool) -> torch.Tensor:
    """A reusable per-device scratch buffer of at least ``elements`` (one element when unused).

    Why cached: the persistent grid bounds it (at most ``SCRATCH_BYTES``; ~200 MB
    for a 512-token batch on an H100), and allocating it per layer call would add
    an allocator round trip to every layer. Kernels on one stream run in order, so
    consecutive layers can share it; it is kept for the process's life.
    """
    import torch

    elements = elements if needed else 1
    key = (str(device), dtype)
    buffer = _SCRATCH.get(key)
    if buffer is None or buffer.numel() < elements:
        buffer = torch.empty(elements, dtype=dtype, device=device)
        _SCRATCH[key] = buffer
    return buffer


def launch_config(head_dim: int) -> tuple[int, int, int, int]:
    """The launch config for a head dimension, or ``SPARKCURATE_ATTENTION_CONFIG``'s."""
    value = switches.read(CONFIG_ENV)
    if value == "auto":
        return LAUNCH_CONFIGS[head_dim]
    block_m, block_n, warps, stages = (int(part) for part in value.split(","))
    return block_m, block_n, warps, stages


# --------------------------------------------------------------------------- the packed forward's back-end


def layer_tables(attention: nn.Module, rel_embeddings: torch.Tensor | None) -> LayerTables:
    """The tile kernel's :class:`LayerTables` for one HF ``DisentangledSelfAttention``."""
    import torch

    weight, bias = fused_qkv(attention.query_proj, attention.key_proj, attention.value_proj)
    with torch.no_grad():
        pos_key, pos_query = position_tables(attention, rel_embeddings)
    heads = int(attention.num_attention_heads)
    head_dim = int(attention.attention_head_size)
    terms = 1 + (pos_key is not None) + (pos_query is not None)
    return LayerTables(weight, bias, pos_key, pos_query, heads, head_dim, terms)


def tile_tables_for(backbone: nn.Module, max_seqlen: int) -> tuple[list, torch.Tensor]:
    """Cached per-layer :class:`LayerTables` and the distance-slot table covering ``max_seqlen``.

    Rebuilt when an attention weight changes (:func:`.backends.cached_state`); the slot table grows in steps of
    ``SLOT_STEP`` distances.
    """

    def build() -> list:
        logger.debug("building tile attention tables for %s", type(backbone).__name__)
        rel = backbone.encoder.get_rel_embedding()
        return [layer_tables(layer.attention.self, rel) for layer in backbone.encoder.layer]

    state = cached_state(backbone, "tile", "-", build)
    # Room for the kernel's window past the sequence (BLOCK_M + BLOCK_N <= 256).
    half = slot_capacity(max_seqlen + 256)
    if state.slots is None or (state.slots.numel() - 1) // 2 < half:
        state.slots = distance_slots(backbone.encoder.layer[0].attention.self, half,
                                     state.attentions[0].qkv_weight.device)
    return state.attentions, state.slots


def last_layer_tables(tables: LayerTables) -> LastLayerTables:
    """Reuse the tile kernel's fused weight and position tables for the [CLS]-only last layer."""
    rows = tables.heads * tables.head_dim
    bias = tables.qkv_bias
    return LastLayerTables(kv_weight=tables.qkv_weight[rows:], kv_bias=None if bias is None else bias[rows:],
                           pos_key=tables.pos_key, pos_query=tables.pos_query)


class TileAttention(AttentionBackend):
    """This module's kernel (and, on Hopper, :mod:`.relative_attention_smem`'s) behind the packed forward."""

    description = "sparkcurate tile kernel"
    gpu_kernel = True

    def problem(self) -> str | None:
        return triton_problem()

    def check(self, device: Any, info: PackedInfo) -> None:
        if getattr(device, "type", device) != "cuda" and not switches.triton_interpreting():
            raise RuntimeError("attention_impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1, Triton's "
                               "CPU interpreter); use 'torch' or 'reference' on CPU")

    def run(self, backbone: nn.Module, layers: list, hidden: torch.Tensor, cu_dev: torch.Tensor, info: PackedInfo,
            tail: LayerTail, last: bool) -> tuple[torch.Tensor, LastLayerTables | None]:
        tables, slots = tile_tables_for(backbone, info.max_seqlen)
        for layer, table in zip(layers, tables):
            context = packed_attention(table, hidden, cu_dev, info.max_seqlen, slots)
            hidden = tail(layer, context, hidden)
        return hidden, last_layer_tables(tables[-1]) if last else None


BACKEND = TileAttention()
