"""Packed DeBERTa disentangled attention with both position shears done in shared memory (Gluon, Hopper).

Why a second kernel: in :mod:`.relative_attention` (Triton) the position scores of a
tile come out of the tensor cores indexed by (row, distance) and are needed at (row,
key), a different column per row. Triton gives no handle on shared memory, so that
kernel shears through a per-program scratch area in global memory: a store, a
barrier, a load along the diagonal, a barrier, every key tile, through L1/L2 (L1
does not keep stores). That round trip was half of the kernel's time on an H100
(benchmarks/NOTES.md, seventh round). Gluon, Triton's lower-level dialect, lays
tiles out in shared memory explicitly, and the shear becomes a strided view:

* Query rows are taken in *reverse* order inside a tile (local row ``r`` is query
  ``first_query + BLOCK - 1 - r``) and a key tile's ``2 * BLOCK`` distances in
  decreasing order (window entry ``u`` is distance ``first_query - first_key +
  BLOCK - 1 - u``). Then the pair (r, c) has window entry ``u = r + c`` for both
  position terms.
* c2p: ``N = q . Kr[window]^T`` is ``[BLOCK, 2 * BLOCK]``, stored row-major with row
  pitch ``S = 2 * BLOCK + pad``; the pair's value ``N[r, r + c]`` sits at
  ``r * (S + 1) + c``: a plain ``[BLOCK, BLOCK]`` view of the same bytes with a row
  pitch one longer, which a padded shared layout expresses (:func:`shear_layouts`).
* p2c: ``M = k . Qr[window]^T`` the same way, read through the same view transposed.
* The ``pad`` (4 elements, :data:`SHEAR_PADS`) is for the shared-memory banks: with
  unpadded rows every row starts in the same bank, and the products' stores and the
  sheared loads serialised up to 8 ways; 4 leaves at most 2. That halved the kernel's
  time (ninth round: 2.44 -> 1.38 ms for a DeBERTa-base layer on 65k tokens).

The loop around it: key tiles arrive by asynchronous copies (cp.async) into double
buffers while the previous tile is computed; the window of key tile ``t + 1`` begins
with the second half of tile ``t``'s, so the position rows sit in a ring of three
half windows (one new half a tile) and the c2p scores of the shared half are carried
over; the products are Hopper warpgroup MMAs from shared memory, issued together and
awaited once. One program per (sequence x head, query tile): nothing is written
outside the multiprocessor but the output. Measured in benchmarks/NOTES.md (eighth and
ninth rounds): one DeBERTa-base layer on 65k tokens 1.38 ms against the Triton kernel's 2.84.

Exactness is the Triton kernel's: the same slots table (Hugging Face's buckets),
position scores rounded to the activations' dtype as there, fp32 softmax;
tests/gpu compares both kernels with each other and with fp32.

Scope: fp16/bf16 activations, head dimension 64 (DeBERTa-v3 xsmall to large),
Hopper GPUs (compute capability 9.x: warpgroup MMA) and a Triton with Gluon (3.5 or
later; built and run with 3.6). Elsewhere :func:`smem_problem` says why, and where
this Triton cannot compile it, the first launch logs why; the Triton kernel runs
in both cases.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import TYPE_CHECKING, Any

from sparkcurate.engine.kernels import switches

if TYPE_CHECKING:  # heavy imports stay lazy at runtime
    import torch

logger = logging.getLogger(__name__)

#: Head dimensions this kernel is built for (the shared-memory budget assumes 64).
HEAD_DIMS = (64,)
#: Query and key tile size (the distance window is twice this).
BLOCK = 64
#: Warps per program; the MMA layout puts them along the query rows.
NUM_WARPS = 4
#: Padding (elements) after each stored row of the c2p and the p2c position scores (see shear_layouts).
SHEAR_PADS = (4, 4)
#: Environment variable: "off" keeps the Triton kernel even where this one could run.
SMEM_ENV = switches.SMEM_ATTENTION

_KERNEL: list = []
#: Why the kernel failed to compile in this process (then it is not tried again), by specialisation.
_BROKEN: dict = {}


def gluon_problem() -> str | None:
    """Why Gluon kernels cannot be built here (None: they can)."""
    try:
        from triton.experimental import gluon  # noqa: F401
        from triton.experimental.gluon import language as gl
        from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma  # noqa: F401
    except ImportError as exc:
        return f"Gluon is not importable ({exc}; needs Triton >= 3.5)"
    if not hasattr(gl, "PaddedSharedLayout"):
        return "this Triton's Gluon has no PaddedSharedLayout (needs Triton >= 3.5)"
    return None


def smem_problem(device: Any, dtype: Any, head_dim: int) -> str | None:
    """Why this kernel cannot run for these activations (None: it can)."""
    import torch

    if switches.read(SMEM_ENV) == "off":
        return f"{SMEM_ENV}=off"
    if device.type != "cuda":
        return "needs a CUDA device"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"needs fp16 or bf16 activations, got {dtype}"
    if head_dim not in HEAD_DIMS:
        return f"head dimension {head_dim} is not one of {HEAD_DIMS}"
    major, minor = torch.cuda.get_device_capability(device)
    if major != 9:
        return f"needs a Hopper GPU (compute capability 9.x: warpgroup MMA), got {major}.{minor}"
    return gluon_problem() or next(iter(_BROKEN.values()), None)


def _kernel() -> Any:
    """Build the Gluon kernel once (Gluon is imported only where used)."""
    if _KERNEL:
        return _KERNEL[0]
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy
    from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

    # Renamed after Triton 3.6 (where these kernels were measured); the later names where they exist.
    cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier
    async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
    if hasattr(gl.shared_memory_descriptor, "reinterpret"):  # "_reinterpret" up to Triton 3.6

        @gluon.jit
        def view_as(buffer, dtype, shape, layout):
            """The same shared bytes as another dtype, shape or layout."""
            return buffer.reinterpret(dtype, shape, layout)
    else:

        @gluon.jit
        def view_as(buffer, dtype, shape, layout):
            """The same shared bytes as another dtype, shape or layout."""
            return buffer._reinterpret(dtype, shape, layout)

    @gluon.jit
    def copy_rows(buffer, base, rows, dims):
        """Queue the copy of ``rows`` (row offsets from ``base``) x ``dims`` into ``buffer`` (cp.async)."""
        async_load(buffer, base + rows[:, None] + dims[None, :])

    @gluon.jit
    def copy_key_tile(k_buffer, v_buffer, key, value, start, length, first_key, stride_qkv, head_offset, tile_rows,
                      dims):
        """Queue the copies of one key tile's keys and values; rows past the sequence repeat its last token
        (finite values, masked out of the scores)."""
        rows = (start + gl.minimum(first_key + tile_rows, length - 1)).to(gl.int64) * stride_qkv
        copy_rows(k_buffer, key + head_offset, rows, dims)
        copy_rows(v_buffer, value + head_offset, rows, dims)

    @gluon.jit
    def copy_positions(pk_buffer, pq_buffer, pos_key, pos_query, slots, table_head, distance_top, slot_half,
                       half_rows, dims, HEAD_DIM: gl.constexpr, HAS_C2P: gl.constexpr, HAS_P2C: gl.constexpr):
        """Queue the position rows of distances distance_top, distance_top - 1, ... (one half window)."""
        distance = gl.minimum(gl.maximum(distance_top - half_rows, -slot_half), slot_half)
        rows = table_head + gl.load(slots + distance + slot_half).to(gl.int64) * HEAD_DIM
        if HAS_C2P:
            copy_rows(pk_buffer, pos_key, rows, dims)
        if HAS_P2C:
            copy_rows(pq_buffer, pos_query, rows, dims)

    @gluon.jit
    def smem_disentangled_attention(
        query, key, value, stride_qkv,
        pos_key, pos_query, slots, cu_seqlens, output,
        num_heads, query_blocks, position_rows, slot_half, score_scale,
        HEAD_DIM: gl.constexpr, BLOCK: gl.constexpr, NUM_WARPS: gl.constexpr,
        HAS_C2P: gl.constexpr, HAS_P2C: gl.constexpr, SCALAR_ACC: gl.constexpr,
        C2P_SHEAR: gl.constexpr, P2C_SHEAR: gl.constexpr,
    ):
        WINDOW: gl.constexpr = 2 * BLOCK
        dtype: gl.constexpr = query.dtype.element_ty
        # Hopper warpgroup MMA, one warpgroup (16 rows a warp). Every product is [BLOCK, BLOCK]-shaped.
        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                              instr_shape=[16, BLOCK, 16])
        a_regs: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
        # Global loads: 8 elements (16 bytes) a thread along the head dimension.
        load: gl.constexpr = gl.BlockedLayout([1, 8], [32 // (HEAD_DIM // 8), HEAD_DIM // 8], [NUM_WARPS, 1], [1, 0])
        tile: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        # C2P_SHEAR / P2C_SHEAR: (stored, sheared) layouts of the products, from shear_layouts.
        c2p_stored: gl.constexpr = C2P_SHEAR[0]
        c2p_sheared: gl.constexpr = C2P_SHEAR[1]
        p2c_stored: gl.constexpr = P2C_SHEAR[0]
        p2c_sheared: gl.constexpr = P2C_SHEAR[1]

        item = gl.program_id(0)
        sequence_head = item // query_blocks
        query_block = item - sequence_head * query_blocks
        sequence = sequence_head // num_heads
        head = sequence_head - sequence * num_heads
        start = gl.load(cu_seqlens + sequence)
        length = gl.load(cu_seqlens + sequence + 1) - start
        first_query = query_block * BLOCK
        if first_query < length:
            # Key tiles double-buffered; position rows in a ring of three half windows (a key tile's window
            # is two halves, the next tile's starts with this one's second half, and one more is in flight).
            k_smem = gl.allocate_shared_memory(dtype, [2, BLOCK, HEAD_DIM], tile)
            v_smem = gl.allocate_shared_memory(dtype, [2, BLOCK, HEAD_DIM], tile)
            pk_ring = gl.allocate_shared_memory(dtype, [3, BLOCK, HEAD_DIM], tile)
            pq_ring = gl.allocate_shared_memory(dtype, [3, BLOCK, HEAD_DIM], tile)
            c2p_smem = gl.allocate_shared_memory(dtype, [BLOCK, WINDOW], c2p_stored)
            p2c_smem = gl.allocate_shared_memory(dtype, [BLOCK, WINDOW], p2c_stored)

            dims = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, load))
            tile_rows = gl.arange(0, BLOCK, layout=gl.SliceLayout(1, load))
            head_cols = head * HEAD_DIM + dims
            table_head = head.to(gl.int64) * position_rows * HEAD_DIM
            # Local row r is query first_query + BLOCK - 1 - r (see the module doc); rows past the sequence
            # repeat its last token (finite values; their output is not stored).
            query_pos = first_query + BLOCK - 1 - tile_rows
            query_ok = query_pos < length
            query_rows = (start + gl.minimum(query_pos, length - 1)).to(gl.int64) * stride_qkv
            q_stage = k_smem.index(1)  # free until the first key tile's loop step fills it
            q_stage.store(gl.load(query + query_rows[:, None] + head_cols[None, :]))
            cta_barrier()
            q = q_stage.load(a_regs)

            # Window entry u of key tile t is distance first_query - t * BLOCK + BLOCK - 1 - u; half window n
            # (entries 0..BLOCK-1 of tile n, or BLOCK..2*BLOCK-1 of tile n - 1) starts at distance top(n).
            top = first_query + BLOCK - 1
            key_tiles = gl.cdiv(length, BLOCK)
            copy_key_tile(k_smem.index(0), v_smem.index(0), key, value, start, length, 0, stride_qkv,
                          head * HEAD_DIM, tile_rows, dims)
            copy_positions(pk_ring.index(0), pq_ring.index(0), pos_key, pos_query, slots, table_head, top,
                           slot_half, tile_rows, dims, HEAD_DIM, HAS_C2P, HAS_P2C)
            copy_positions(pk_ring.index(1), pq_ring.index(1), pos_key, pos_query, slots, table_head, top - BLOCK,
                           slot_half, tile_rows, dims, HEAD_DIM, HAS_C2P, HAS_P2C)
            async_copy.commit_group()

            score_cols = gl.arange(0, BLOCK, layout=gl.SliceLayout(0, acc_layout))
            row_max = gl.full([BLOCK], float("-inf"), gl.float32, layout=gl.SliceLayout(1, acc_layout))
            row_sum = gl.zeros([BLOCK], gl.float32, layout=gl.SliceLayout(1, acc_layout))
            acc = gl.zeros([BLOCK, HEAD_DIM], gl.float32, layout=acc_layout)
            zeros = gl.zeros([BLOCK, BLOCK], gl.float32, layout=acc_layout)
            c2p_carry = zeros.to(dtype)  # c2p of the previous tile's second half window = this tile's first
            for t in range(0, key_tiles):
                first_key = t * BLOCK
                cta_barrier()  # every warp is done with the buffers the next tile's copies go to
                if t + 1 < key_tiles:
                    copy_key_tile(k_smem.index((t + 1) % 2), v_smem.index((t + 1) % 2), key, value, start, length,
                                  first_key + BLOCK, stride_qkv, head * HEAD_DIM, tile_rows, dims)
                    copy_positions(pk_ring.index((t + 2) % 3), pq_ring.index((t + 2) % 3), pos_key, pos_query,
                                   slots, table_head, top - (t + 2) * BLOCK, slot_half, tile_rows, dims, HEAD_DIM,
                                   HAS_C2P, HAS_P2C)
                    async_copy.commit_group()
                    async_copy.wait_group(1)
                else:
                    async_copy.wait_group(0)
                fence_async_shared()  # the tensor cores read shared memory through the async proxy
                cta_barrier()  # this tile's copies, made by every thread, have landed
                k_buf = k_smem.index(t % 2)
                scores = warpgroup_mma(q, k_buf.permute([1, 0]), zeros, is_async=True)
                if HAS_C2P:
                    if t == 0:
                        c2p_carry = warpgroup_mma(q, pk_ring.index(0).permute([1, 0]), zeros).to(dtype)
                    c2p_hi = warpgroup_mma(q, pk_ring.index((t + 1) % 3).permute([1, 0]), zeros, is_async=True)
                if HAS_P2C:
                    p2c_lo = warpgroup_mma(k_buf, pq_ring.index(t % 3).permute([1, 0]), zeros, is_async=True)
                    p2c_hi = warpgroup_mma(k_buf, pq_ring.index((t + 1) % 3).permute([1, 0]), zeros, is_async=True)
                    p2c_lo, p2c_hi = warpgroup_mma_wait(0, deps=[p2c_lo, p2c_hi])
                    p2c_smem.slice(0, BLOCK, dim=1).store(p2c_lo.to(dtype))
                    p2c_smem.slice(BLOCK, BLOCK, dim=1).store(p2c_hi.to(dtype))
                if HAS_C2P:
                    c2p_smem.slice(0, BLOCK, dim=1).store(c2p_carry)
                    c2p_carry = warpgroup_mma_wait(0, deps=[c2p_hi]).to(dtype)
                    c2p_smem.slice(BLOCK, BLOCK, dim=1).store(c2p_carry)
                scores = warpgroup_mma_wait(0, deps=[scores])
                if HAS_C2P or HAS_P2C:
                    cta_barrier()
                if HAS_C2P:
                    # SCALAR_ACC is the accumulator layout with its registers reordered, so that no thread's two
                    # neighbouring registers are neighbours in memory: the view's odd rows are not 4-byte
                    # aligned, and a vectorised load would fault there (scalar_mma_layout).
                    view = view_as(c2p_smem, dtype, [BLOCK, WINDOW], c2p_sheared).slice(0, BLOCK, dim=1)
                    scores += gl.convert_layout(view.load(SCALAR_ACC), acc_layout).to(gl.float32)
                if HAS_P2C:
                    view = view_as(p2c_smem, dtype, [BLOCK, WINDOW], p2c_sheared).slice(0, BLOCK, dim=1)
                    scores += view.permute([1, 0]).load(acc_layout).to(gl.float32)
                # score_scale folds 1/sqrt(d * terms) and log2(e) (exp2 below).
                key_in = (first_key + score_cols) < length
                scores = gl.where(key_in[None, :], scores * score_scale, float("-inf"))
                new_max = gl.maximum(row_max, gl.max(scores, axis=1))
                correction = gl.exp2(row_max - new_max)
                probs = gl.exp2(scores - new_max[:, None])
                row_sum = row_sum * correction + gl.sum(probs, axis=1)
                acc = warpgroup_mma(gl.convert_layout(probs.to(dtype), a_regs), v_smem.index(t % 2),
                                    acc * correction[:, None])
                row_max = new_max
            acc = acc / row_sum[:, None]
            out = gl.convert_layout(acc.to(dtype), load)
            out_rows = (start + query_pos).to(gl.int64) * (num_heads * HEAD_DIM)
            gl.store(output + out_rows[:, None] + head_cols[None, :], out, mask=query_ok[:, None])

    _KERNEL.append(smem_disentangled_attention)
    return smem_disentangled_attention


@functools.lru_cache(maxsize=None)
def shear_layouts(pad: int) -> tuple:
    """Shared layouts (stored, sheared) of a ``[BLOCK, 2 * BLOCK]`` product stored with ``pad`` elements after each row.

    The sheared view has a row pitch one longer than the stored rows (module doc).
    Without padding every stored row starts in the same bank, so the stores (eight
    rows a matrix) and the view's loads serialise up to 8 ways; a pad of 4 (row pitch
    132, view pitch 133) leaves 2-way conflicts at most (the bank model in
    tests/test_relative_attention.py). It costs 512 bytes a product: 113 KB a program,
    so two programs still fit an SM's 228 KB (a pad of 8 for both would not).
    Gluon's padding amounts must be powers of two, so the view's ``pad + 1`` is written
    as ``pad / 2`` every half row plus 1 every row: the view reads the first half of
    each row only, where the two agree.
    """
    from triton.experimental.gluon import language as gl

    window = 2 * BLOCK
    if pad == 0:
        stored = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0])
        return stored, gl.PaddedSharedLayout.with_identity_for([[window, 1]], [BLOCK, window], [1, 0])
    if pad < 2 or pad & (pad - 1):
        raise ValueError(f"shear pad must be 0 or a power of two >= 2, got {pad}")
    stored = gl.PaddedSharedLayout.with_identity_for([[window, pad]], [BLOCK, window], [1, 0])
    return stored, gl.PaddedSharedLayout.with_identity_for([[BLOCK, pad // 2], [window, 1]], [BLOCK, window], [1, 0])


@functools.lru_cache(maxsize=None)
def scalar_mma_layout(rows: int, cols: int, warps: int) -> Any:
    """The MMA accumulator layout of a ``[rows, cols]`` tile, one warp a 16-row block, with registers reordered.

    Both ``mma.sync`` (m16n8) and Hopper's warpgroup MMA (m64nN, four warps) give a
    thread column pairs (c, c + 1) in neighbouring registers, and loads from shared
    memory are vectorised along them. Putting the row-plus-8 register first keeps the
    same ownership of elements (converting to the MMA layout only renames registers)
    while no two neighbouring registers are neighbours in memory, so every shared load
    is a scalar one: the sheared view's odd rows are not 4-byte aligned.
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

    ``tables`` is the layer's :class:`~sparkcurate.engine.kernels.relative_attention.LayerTables`;
    ``slots`` is :func:`~sparkcurate.engine.kernels.relative_attention.distance_slots` for a
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
    grid = (query_blocks * (cu_seqlens.numel() - 1) * heads,)
    scale = 1.4426950408889634 / math.sqrt(head_dim * tables.terms)
    flags = dict(HAS_C2P=tables.pos_key is not None, HAS_P2C=tables.pos_query is not None)
    specialisation = (str(projected.dtype), *flags.values(), SHEAR_PADS)
    launch = lambda: _kernel()[grid](  # noqa: E731
        query, key, value, projected.stride(0),
        tables.pos_key if tables.pos_key is not None else query,  # never read when the term is off
        tables.pos_query if tables.pos_query is not None else query,
        slots, cu_seqlens, output,
        heads, query_blocks, position_rows, half, scale,
        HEAD_DIM=head_dim, BLOCK=BLOCK, NUM_WARPS=NUM_WARPS, **flags,
        SCALAR_ACC=scalar_mma_layout(BLOCK, BLOCK, NUM_WARPS), C2P_SHEAR=shear_layouts(SHEAR_PADS[0]),
        P2C_SHEAR=shear_layouts(SHEAR_PADS[1]), num_warps=NUM_WARPS,
    )
    if specialisation in _COMPILED:
        launch()
        return output
    try:  # the first launch compiles: a Triton whose Gluon differs fails here, before anything runs
        launch()
    except Exception as exc:
        reason = f"the shared-memory kernel did not compile with this Triton ({type(exc).__name__}: {exc})"[:500]
        _BROKEN[specialisation] = reason
        raise SmemUnavailable(reason) from exc
    _COMPILED.add(specialisation)
    return output


class SmemUnavailable(RuntimeError):
    """The shared-memory kernel could not be built here; the caller falls back to the Triton kernel."""


_COMPILED: set = set()
