"""Residual add and LayerNorm in one Triton kernel: ``LayerNorm(x + residual)`` per token row.

Why: every DeBERTa layer ends its attention block and its feed-forward block with
``LayerNorm(dense(h) + input)``. In PyTorch that is two kernels: the add writes
the sum to GPU memory and the LayerNorm reads it back, five row-sized passes over
memory where three do (read both inputs, write the output). On the H100 these two
ops were 17% of the packed forward's kernel time (benchmarks/NOTES.md, sixth round).

Precision: the sum, mean, variance and affine map run in fp32 and the result is
rounded once. PyTorch's separate add rounds the sum to fp16/bf16 before the
LayerNorm sees it; the kernel does not (``ROUND_SUM``): that rounding of the
residual stream, twice a layer, costs nothing to remove (with the fp32 head, 4%
closer to fp32 in benchmarks/NOTES.md's tenth-round emulation; on the H100 the
difference was within the noise, eleventh round). ``ROUND_SUM = True``
gives PyTorch's arithmetic up to the fp32 summation order of the statistics
(tests/test_residual_norm.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sparkcurate.engine.kernels import switches

if TYPE_CHECKING:  # heavy imports stay lazy at runtime
    import torch
    from torch import nn

#: "auto": fused on CUDA tensors; "on": also on the CPU (Triton's interpreter, for tests); "off": never.
FUSED_ENV = switches.FUSED_NORM
#: Widest row the kernel takes in one block (wider rows fall back to PyTorch).
MAX_WIDTH = 8192
#: Round ``x + residual`` to the input dtype before the statistics, as PyTorch's separate add does. Off: the sum
#: stays fp32 (see the module doc); on for bit-level comparisons with PyTorch (tests, probes).
ROUND_SUM = False

_KERNELS: dict[bool, Any] = {}


def mode() -> str:
    """The fused-norm mode from ``SPARKCURATE_FUSED_NORM`` (default "auto")."""
    return switches.read(FUSED_ENV)


def usable(norm: nn.Module, sample: torch.Tensor) -> bool:
    """True when ``LayerNorm(x + residual)`` of ``norm`` on tensors like ``sample`` runs fused.

    Needs an affine ``nn.LayerNorm`` over the last dimension (not a subclass: its forward could differ) with
    weights of the tensors' dtype (the kernel writes that dtype), a row width up to ``MAX_WIDTH``, importable
    Triton, and CUDA tensors (or mode "on").
    """
    from torch import nn

    chosen = mode()
    if chosen == "off" or (chosen == "auto" and sample.device.type != "cuda"):
        return False
    if type(norm) is not nn.LayerNorm or norm.weight is None or norm.bias is None:
        return False
    if len(norm.normalized_shape) != 1 or norm.normalized_shape[0] > MAX_WIDTH or norm.weight.dtype != sample.dtype:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _kernel() -> Any:
    """The jitted kernel, built once per interpreter mode (see relative_attention._kernel for why lazily)."""
    interpret = switches.triton_interpreting()
    if interpret in _KERNELS:
        return _KERNELS[interpret]
    import triton
    import triton.language as tl

    @triton.jit
    def add_layer_norm_rows(
        x, residual, weight, bias, out, rows, width, stride_x, stride_r, stride_o, eps,
        BLOCK: tl.constexpr, ROWS: tl.constexpr, ROUND_SUM: tl.constexpr,
    ):
        row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK)
        col_ok = cols < width
        ok = (row < rows)[:, None] & col_ok[None, :]
        row64 = row.to(tl.int64)[:, None]
        a = tl.load(x + row64 * stride_x + cols[None, :], mask=ok, other=0.0)
        b = tl.load(residual + row64 * stride_r + cols[None, :], mask=ok, other=0.0)
        total = a.to(tl.float32) + b.to(tl.float32)
        if ROUND_SUM:  # as PyTorch's separate add: rounded to the input dtype, then fp32 again
            total = total.to(a.dtype).to(tl.float32)
        mean = tl.sum(total, axis=1) / width
        centred = tl.where(ok, total - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / width + eps)
        gain = tl.load(weight + cols, mask=col_ok, other=0.0).to(tl.float32)
        shift = tl.load(bias + cols, mask=col_ok, other=0.0).to(tl.float32)
        result = centred * rstd[:, None] * gain[None, :] + shift[None, :]
        tl.store(out + row64 * stride_o + cols[None, :], result.to(out.dtype.element_ty), mask=ok)

    _KERNELS[interpret] = add_layer_norm_rows
    return add_layer_norm_rows


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """``norm(x + residual)`` for 2-D ``[rows, width]`` tensors of one dtype, fused (see :func:`usable`)."""
    import torch

    if x.ndim != 2 or x.shape != residual.shape or x.dtype != residual.dtype:
        raise ValueError(f"x and residual must be 2-D of one shape and dtype, got {tuple(x.shape)} {x.dtype} and "
                         f"{tuple(residual.shape)} {residual.dtype}")
    rows, width = x.shape
    if width != norm.normalized_shape[0]:
        raise ValueError(f"rows of width {width} for a LayerNorm over {norm.normalized_shape[0]}")
    x, residual = _row_major(x), _row_major(residual)
    out = torch.empty((rows, width), dtype=x.dtype, device=x.device)
    if rows == 0:
        return out
    import triton  # after the checks: bad shapes get their own error where Triton is missing

    block = triton.next_power_of_2(width)
    per_program = max(1, min(16, 4096 // block))  # ~4k elements a program: enough rows in flight per SM
    warps = 4 if block <= 1024 else 8
    grid = (triton.cdiv(rows, per_program),)
    _kernel()[grid](
        x, residual, norm.weight, norm.bias, out, rows, width, x.stride(0), residual.stride(0), out.stride(0),
        float(norm.eps), BLOCK=block, ROWS=per_program, ROUND_SUM=bool(ROUND_SUM), num_warps=warps,
    )
    return out


def _row_major(t: torch.Tensor) -> torch.Tensor:
    """Rows may be strided (a split of a wider tensor); elements within a row must be contiguous."""
    return t if t.stride(1) == 1 else t.contiguous()
