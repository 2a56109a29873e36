"""Packed DeBERTa disentangled attention with both position shears done in shared memory (Gluon).

Why a second kernel: in :mod:`.relative_attention` (Triton) the position scores of a
tile come out of the tensor cores indexed by (row, distance) and are needed at (row,
key), a different column per row. Triton gives no handle on shared memory, so that
kernel shears through a per-program scratch area in global memory: a store, a
barrier, a load along the diagonal, a barrier, every key tile, through L1/L2 (L1
does not keep stores). That round trip was half of the kernel's time on an H100
(benchmarks/NOTES.md, seventh round). Gluon, Triton's lower-level dialect, lays
tiles out in shared memory explicitly, and the shear becomes a strided view:

* Query rows are taken in *reverse* order inside a tile (local row ``r`` is query
  ``first_query + BLOCK - 1 - r``) and a tile's ``2 * BLOCK`` distances in
  decreasing order (window entry ``u`` is distance ``first_query - first_key +
  BLOCK - 1 - u``). Then the pair (r, c) has window entry ``u = r + c`` for both
  terms.
* c2p: ``N = q . Kr[window]^T`` is ``[BLOCK, 2 * BLOCK]``, stored row-major (pitch
  ``2 * BLOCK``); the pair's value ``N[r, r + c]`` sits at ``r * (2 * BLOCK + 1) + c``:
  a plain ``[BLOCK, BLOCK]`` view of the same bytes with a row pitch one longer, which
  a padded shared layout (one padding element every ``2 * BLOCK``) expresses.
* p2c: ``M = k . Qr[window]^T`` the same way, read through the same view transposed.

Both products are recomputed per key tile (the tensor cores have room; the scores
and the softmax are what bound the loop), no scratch outside the multiprocessor,
no persistent grid. Exactness is the Triton kernel's: the same slots table (Hugging
Face's buckets), position scores rounded to the activations' dtype as there, fp32
softmax; tests/gpu compares both kernels with the padded Hugging Face forward.

Scope: fp16/bf16 activations, head dimension 64, NVIDIA GPUs of compute capability
8.0 or later (``mma.sync`` tensor cores) with Gluon (Triton >= 3.5). Otherwise
:func:`smem_problem` says why and the Triton kernel runs.
"""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports stay lazy at runtime
    import torch

logger = logging.getLogger(__name__)

#: Head dimensions this kernel is built for (the shared-memory budget assumes 64).
HEAD_DIMS = (64,)
#: Query and key tile size (the distance window is twice this).
BLOCK = 64
#: Warps per program; the MMA layout puts them along the query rows.
NUM_WARPS = 4
#: Persistent programs a multiprocessor (two are resident at a time; more balance uneven items).
PROGRAMS_PER_SM = 8
#: Copy the next key tile into shared memory while the current one is computed (double buffers).
PREFETCH = True
#: Environment variable: "off" keeps the Triton kernel even where this one could run.
SMEM_ENV = "SPARKCURATE_SMEM_ATTENTION"

_KERNEL: list = []


def gluon_problem() -> str | None:
    """Why Gluon kernels cannot be built here (None: they can)."""
    try:
        from triton.experimental import gluon  # noqa: F401
        from triton.experimental.gluon import language as gl
        from triton.experimental.gluon.language.nvidia.ampere import mma_v2  # noqa: F401
    except ImportError as exc:
        return f"Gluon is not importable ({exc}; needs Triton >= 3.5)"
    if not hasattr(gl, "PaddedSharedLayout"):
        return "this Triton's Gluon has no PaddedSharedLayout (needs Triton >= 3.5)"
    return None


def smem_problem(device: Any, dtype: Any, head_dim: int) -> str | None:
    """Why this kernel cannot run for these activations (None: it can)."""
    import torch

    setting = os.environ.get(SMEM_ENV, "").strip().lower()
    if setting in ("0", "off", "false", "no"):
        return f"{SMEM_ENV}={setting}"
    if setting and setting not in ("1", "on", "true", "yes", "auto"):
        raise ValueError(f"{SMEM_ENV} must be on, off or auto, got {setting!r}")
    if device.type != "cuda":
        return "needs a CUDA device"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"needs fp16 or bf16 activations, got {dtype}"
    if head_dim not in HEAD_DIMS:
        return f"head dimension {head_dim} is not one of {HEAD_DIMS}"
    major, _ = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"needs compute capability >= 8.0, got {major}.x"
    return gluon_problem()


def _kernel() -> Any:
    """Build the Gluon kernel once (Gluon is imported only where used)."""
    if _KERNEL:
        return _KERNEL[0]
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2

    @gluon.jit
    def issue_key_tile(k_buf, v_buf, pq_buf, key, value, pos_query, slots, start, length, first_query, first_key,
                       stride_qkv, head_cols, table_head, slot_half, tile_rows, window, dims,
                       HEAD_DIM: gl.constexpr, BLOCK: gl.constexpr, HAS_P2C: gl.constexpr):
        # Rows past the sequence repeat its last key: finite values, masked out of the scores.
        key_rows = (start + gl.minimum(first_key + tile_rows, length - 1)).to(gl.int64)[:, None] * stride_qkv
        async_copy.async_copy_global_to_shared(k_buf, key + key_rows + head_cols[None, :])
        async_copy.async_copy_global_to_shared(v_buf, value + key_rows + head_cols[None, :])
        if HAS_P2C:
            # Window entry u is distance first_query - first_key + BLOCK - 1 - u (module doc).
            distance = first_query - first_key + BLOCK - 1 - window
            distance = gl.minimum(gl.maximum(distance, -slot_half), slot_half)
            slot = gl.load(slots + distance + slot_half).to(gl.int64)
            async_copy.async_copy_global_to_shared(pq_buf, pos_query + table_head + slot[:, None] * HEAD_DIM + dims[None, :])
        async_copy.commit_group()

    @gluon.jit
    def smem_disentangled_attention(
        query, key, value, stride_qkv,
        pos_key, pos_query, slots, cu_seqlens, output, scratch,
        num_heads, query_blocks, work_items, position_rows, slot_half, score_scale, band_pitch,
        HEAD_DIM: gl.constexpr, BLOCK: gl.constexpr, NUM_WARPS: gl.constexpr,
        HAS_C2P: gl.constexpr, HAS_P2C: gl.constexpr, SCALAR_MMA: gl.constexpr, PREFETCH: gl.constexpr,
    ):
        WINDOW: gl.constexpr = 2 * BLOCK
        BUFFERS: gl.constexpr = 2 if PREFETCH else 1
        dtype: gl.constexpr = query.dtype.element_ty
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[NUM_WARPS, 1],
                                                       instr_shape=[16, 8])
        a_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        b_op: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
        # Global loads: 8 elements (16 bytes) a thread along the head dimension.
        load: gl.constexpr = gl.BlockedLayout([1, 8], [32 // (HEAD_DIM // 8), HEAD_DIM // 8], [NUM_WARPS, 1], [1, 0])
        tile: gl.constexpr = gl.SwizzledSharedLayout(vec=8, per_phase=1, max_phase=8, order=[1, 0])
        plain: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0])
        # The same bytes with a row pitch of WINDOW + 1: element (r, c) of the view is entry (r, r + c).
        sheared: gl.constexpr = gl.PaddedSharedLayout.with_identity_for([[WINDOW, 1]], [BLOCK, WINDOW], [1, 0])

        q_smem = gl.allocate_shared_memory(dtype, [BLOCK, HEAD_DIM], tile)
        k_smem = gl.allocate_shared_memory(dtype, [BUFFERS, BLOCK, HEAD_DIM], tile)
        v_smem = gl.allocate_shared_memory(dtype, [BUFFERS, BLOCK, HEAD_DIM], tile)
        pq_smem = gl.allocate_shared_memory(dtype, [BUFFERS, WINDOW, HEAD_DIM], tile)
        p2c_smem = gl.allocate_shared_memory(dtype, [BLOCK, WINDOW], plain)

        dims = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, load))
        tile_rows = gl.arange(0, BLOCK, layout=gl.SliceLayout(1, load))
        window = gl.arange(0, WINDOW, layout=gl.SliceLayout(1, load))
        score_rows = gl.arange(0, BLOCK, layout=gl.SliceLayout(1, SCALAR_MMA))
        score_cols = gl.arange(0, BLOCK, layout=gl.SliceLayout(0, SCALAR_MMA))
        mma_cols = gl.arange(0, BLOCK, layout=gl.SliceLayout(0, mma))
        program = gl.program_id(0)
        # This program's c2p band: row r (query first_query + BLOCK - 1 - r), column b = distance
        # first_query + BLOCK - 1 - b, so the pair (r, key first_key + c) reads column first_key + r + c.
        band = scratch + program.to(gl.int64) * (BLOCK * band_pitch)
        for item in range(program, work_items, gl.num_programs(0)):
            sequence_head = item // query_blocks
            query_block = item - sequence_head * query_blocks
            sequence = sequence_head // num_heads
            head = sequence_head - sequence * num_heads
            start = gl.load(cu_seqlens + sequence)
            length = gl.load(cu_seqlens + sequence + 1) - start
            first_query = query_block * BLOCK
            if first_query < length:
                head_cols = head * HEAD_DIM + dims
                table_head = head.to(gl.int64) * position_rows * HEAD_DIM
                # Local row r is query first_query + BLOCK - 1 - r (see the module doc).
                query_pos = first_query + BLOCK - 1 - tile_rows
                query_ok = query_pos < length
                query_rows = (start + gl.minimum(query_pos, length - 1)).to(gl.int64)[:, None] * stride_qkv
                gl.thread_barrier()  # the previous item is done with q_smem and the band
                q_smem.store(gl.load(query + query_rows + head_cols[None, :]))
                gl.thread_barrier()
                q_a = q_smem.load(a_op)
                if HAS_C2P:
                    for band_start in range(0, length + BLOCK, BLOCK):
                        distance = first_query + BLOCK - 1 - band_start - tile_rows
                        distance = gl.minimum(gl.maximum(distance, -slot_half), slot_half)
                        slot = gl.load(slots + distance + slot_half).to(gl.int64)
                        position_keys = gl.load(pos_key + table_head + slot[:, None] * HEAD_DIM + dims[None, :])
                        chunk = mma_v2(q_a, gl.convert_layout(gl.permute(position_keys, [1, 0]), b_op),
                                       gl.zeros([BLOCK, BLOCK], gl.float32, mma))
                        chunk = gl.convert_layout(chunk.to(dtype), SCALAR_MMA)
                        gl.store(band + score_rows[:, None] * band_pitch + band_start + score_cols[None, :], chunk)
                    gl.thread_barrier()  # the band is written before any key tile reads it

                row_max = gl.full([BLOCK], float("-inf"), gl.float32, layout=gl.SliceLayout(1, mma))
                row_sum = gl.zeros([BLOCK], gl.float32, layout=gl.SliceLayout(1, mma))
                acc = gl.zeros([BLOCK, HEAD_DIM], gl.float32, layout=mma)
                key_tiles = gl.cdiv(length, BLOCK)
                issue_key_tile(k_smem.index(0), v_smem.index(0), pq_smem.index(0), key, value, pos_query, slots,
                               start, length, first_query, 0, stride_qkv, head_cols, table_head, slot_half,
                               tile_rows, window, dims, HEAD_DIM, BLOCK, HAS_P2C)
                for t in range(0, key_tiles):
                    first_key = t * BLOCK
                    current = t % BUFFERS
                    if PREFETCH:
                        gl.thread_barrier()  # every warp is done with the buffer the next tile goes to
                        if t + 1 < key_tiles:
                            issue_key_tile(k_smem.index(1 - current), v_smem.index(1 - current),
                                           pq_smem.index(1 - current), key, value, pos_query, slots, start, length,
                                           first_query, first_key + BLOCK, stride_qkv, head_cols, table_head,
                                           slot_half, tile_rows, window, dims, HEAD_DIM, BLOCK, HAS_P2C)
                            async_copy.wait_group(1)
                        else:
                            async_copy.wait_group(0)
                    else:
                        async_copy.wait_group(0)
                    gl.thread_barrier()  # this tile's copies, made by every thread, have landed
                    k_buf = k_smem.index(current)
                    scores = mma_v2(q_a, k_buf.permute([1, 0]).load(b_op), gl.zeros([BLOCK, BLOCK], gl.float32, mma))
                    if HAS_P2C:
                        p2c = mma_v2(k_buf.load(a_op), pq_smem.index(current).permute([1, 0]).load(b_op),
                                     gl.zeros([BLOCK, WINDOW], gl.float32, mma))
                        p2c_smem.store(p2c.to(dtype))
                    if HAS_C2P:
                        # SCALAR_MMA: the MMA layout with registers reordered, so no load is vectorised across
                        # neighbours the shear leaves unaligned (scalar_mma_layout).
                        c2p = gl.load(band + score_rows[:, None] * (band_pitch + 1) + first_key + score_cols[None, :])
                        scores += gl.convert_layout(c2p, mma).to(gl.float32)
                    if HAS_P2C:
                        gl.thread_barrier()
                        view = p2c_smem._reinterpret(dtype, [BLOCK, WINDOW], sheared).slice(0, BLOCK, dim=1)
                        scores += view.permute([1, 0]).load(mma).to(gl.float32)
                    # score_scale folds 1/sqrt(d * terms) and log2(e) (exp2 below).
                    key_in = (first_key + mma_cols) < length
                    scores = gl.where(key_in[None, :], scores * score_scale, float("-inf"))
                    new_max = gl.maximum(row_max, gl.max(scores, axis=1))
                    correction = gl.exp2(row_max - new_max)
                    probs = gl.exp2(scores - new_max[:, None])
                    row_sum = row_sum * correction + gl.sum(probs, axis=1)
                    p_a = gl.convert_layout(probs.to(dtype), a_op)
                    acc = mma_v2(p_a, v_smem.index(current).load(b_op), acc * correction[:, None])
                    row_max = new_max
                    if not PREFETCH:
                        gl.thread_barrier()  # every warp is done with the buffers before the next tile's copies
                        if t + 1 < key_tiles:
                            issue_key_tile(k_smem.index(0), v_smem.index(0), pq_smem.index(0), key, value, pos_query,
                                           slots, start, length, first_query, first_key + BLOCK, stride_qkv,
                                           head_cols, table_head, slot_half, tile_rows, window, dims, HEAD_DIM,
                                           BLOCK, HAS_P2C)
                acc = acc / row_sum[:, None]
                out = gl.convert_layout(acc.to(dtype), load)
                out_rows = (start + query_pos).to(gl.int64) * (num_heads * HEAD_DIM)
                gl.store(output + out_rows[:, None] + head_cols[None, :], out, mask=query_ok[:, None])

    _KERNEL.append(smem_disentangled_attention)
    return smem_disentangled_attention


def scalar_mma_layout(rows: int, cols: int, warps: int) -> Any:
    """The ``mma.sync`` (v2, m16n8) accumulator layout of a ``[rows, cols]`` tile with registers reordered.

    A thread of the MMA layout holds column pairs (c, c + 1) in neighbouring
    registers, and loads from shared memory are vectorised along them. Putting the
    row-plus-8 register first keeps the same ownership of elements (converting to the
    MMA layout only renames registers) while no two neighbouring registers are
    neighbours in memory, so every shared load is a scalar one.
    """
    from triton.experimental.gluon import language as gl

    if rows != 16 * warps or cols % 8:
        raise ValueError(f"a [{rows}, {cols}] tile does not fit one m16 row block per warp of {warps}")
    reg = [[8, 0], [0, 1]] + [[0, 8 << i] for i in range((cols // 8).bit_length() - 1)]
    lane = [[0, 2], [0, 4], [1, 0], [2, 0], [4, 0]]
    warp = [[16 << i, 0] for i in range(warps.bit_length() - 1)]
    return gl.DistributedLinearLayout(reg, lane, warp, [], [rows, cols])


def smem_attention(
    tables: Any,
    projected: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    slots: torch.Tensor,
) -> torch.Tensor:
    """Attention context ``[T, heads * head_dim]`` from the fused Q/K/V projection ``projected [T, 3 * width]``.

    ``tables`` is the layer's :class:`~sparkcurate.engine.relative_attention.LayerTables`;
    ``slots`` is :func:`~sparkcurate.engine.relative_attention.distance_slots` for a
    half-width of at least ``max_seqlen + 2 * BLOCK``. The caller checks
    :func:`smem_problem` first.
    """
    import torch
    import triton

    heads, head_dim = tables.heads, tables.head_dim
    width = heads * head_dim
    half = (slots.numel() - 1) // 2
    if half < max_seqlen + 2 * BLOCK:
        raise ValueError(f"distance table covers +-{half}, needs +-{max_seqlen + 2 * BLOCK}")
    query, key, value = projected.split(width, dim=-1)
    output = torch.empty((projected.shape[0], width), dtype=projected.dtype, device=projected.device)
    position_table = tables.pos_key if tables.pos_key is not None else tables.pos_query
    position_rows = position_table.shape[1] if position_table is not None else 1
    query_blocks = triton.cdiv(max_seqlen, BLOCK)
    work_items = query_blocks * (cu_seqlens.numel() - 1) * heads
    # Room for every band column written (band chunks up to length + BLOCK) and read (first_key + r + c).
    band_pitch = (triton.cdiv(max_seqlen, BLOCK) + 2) * BLOCK
    grid = min(work_items, _program_slots(projected.device))
    scratch = _band_scratch(projected.device, projected.dtype, grid * BLOCK * band_pitch if tables.pos_key is not None else 1)
    scale = 1.4426950408889634 / math.sqrt(head_dim * tables.terms)
    _kernel()[(grid,)](
        query, key, value, projected.stride(0),
        tables.pos_key if tables.pos_key is not None else query,  # never read when the term is off
        tables.pos_query if tables.pos_query is not None else query,
        slots, cu_seqlens, output, scratch,
        heads, query_blocks, work_items, position_rows, half, scale, band_pitch,
        HEAD_DIM=head_dim, BLOCK=BLOCK, NUM_WARPS=NUM_WARPS,
        HAS_C2P=tables.pos_key is not None, HAS_P2C=tables.pos_query is not None,
        SCALAR_MMA=scalar_mma_layout(BLOCK, BLOCK, NUM_WARPS), PREFETCH=PREFETCH, num_warps=NUM_WARPS,
    )
    return output


def _program_slots(device: Any) -> int:
    """Persistent programs to launch: ``PROGRAMS_PER_SM`` per multiprocessor."""
    import torch

    return torch.cuda.get_device_properties(device).multi_processor_count * PROGRAMS_PER_SM


_SCRATCH: dict = {}


def _band_scratch(device: Any, dtype: Any, elements: int) -> torch.Tensor:
    """A reusable per-device buffer for the programs' c2p bands (kernels on one stream run in order)."""
    import torch

    key = (str(device), dtype)
    buffer = _SCRATCH.get(key)
    if buffer is None or buffer.numel() < elements:
        buffer = torch.empty(elements, dtype=dtype, device=device)
        _SCRATCH[key] = buffer
    return buffer
