"""The feed-forward block's first half, ``gelu(x @ W.T + b)``, in one Triton kernel (exact, erf GELU).

Why: every DeBERTa layer's ``DebertaV2Intermediate`` is a linear layer into 3072 columns and a GELU. In PyTorch
that is a cuBLAS GEMM (bias added in its epilogue) and a separate GELU kernel, which reads and writes the
``[tokens, 3072]`` activations once more: on an H100 the element-wise kernels were 7% of the packed forward,
mostly this GELU (benchmarks/NOTES.md, sixth round). cuBLASLt's fused GELU epilogue is the tanh approximation,
not the erf GELU the checkpoints were trained with; here the GELU is applied to the fp32 accumulator in the
GEMM's epilogue, in its exact form.

Exactness: the product accumulates in fp32 as cuBLAS does; bias and GELU are applied in fp32 and the result is
rounded once to the input dtype (the two-kernel path rounds the pre-activation to the input dtype first, so the
two differ by at most that rounding: tests/test_linear_gelu.py on the CPU through Triton's interpreter,
tests/gpu for the compiled kernel). ``SPARKCURATE_FUSED_GELU=auto|on|off`` (``on``: also on the CPU through the
interpreter, how CI checks it).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports stay lazy at runtime
    import torch
    from torch import nn

#: "auto": fused on CUDA tensors in half precision; "on": also on the CPU (Triton's interpreter); "off": never.
FUSED_ENV = "SPARKCURATE_FUSED_GELU"
MODES = ("auto", "on", "off")
#: (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages); picked on an H100 (benchmarks/NOTES.md).
LAUNCH_CONFIG = (128, 256, 64, 8, 8, 3)
#: Environment variable overriding the launch config, "BLOCK_M,BLOCK_N,BLOCK_K,GROUP_M,num_warps,num_stages".
CONFIG_ENV = "SPARKCURATE_GELU_CONFIG"

_KERNELS: dict[bool, Any] = {}


def mode() -> str:
    """The fused-GELU mode from ``SPARKCURATE_FUSED_GELU`` (default "auto")."""
    raw = os.environ.get(FUSED_ENV, "auto").strip().lower() or "auto"
    if raw not in MODES:
        raise ValueError(f"{FUSED_ENV} must be one of {MODES}, got {raw!r}")
    return raw


def usable(block: nn.Module, sample: torch.Tensor) -> bool:
    """True when ``block`` (a feed-forward first half) on tensors like ``sample`` runs fused.

    Needs Hugging Face's own ``DebertaV2Intermediate`` (a subclass could change the forward) whose activation is
    the exact GELU, a biased ``nn.Linear`` with weights of the rows' dtype, half precision on a CUDA tensor (or
    mode "on"), a reduction width that is a multiple of ``BLOCK_K``, and importable Triton.
    """
    import torch
    from torch import nn
    from transformers.activations import GELUActivation
    from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2Intermediate

    chosen = mode()
    if chosen == "off" or (chosen == "auto" and (sample.device.type != "cuda" or sample.dtype == torch.float32)):
        return False
    if type(block) is not DebertaV2Intermediate or type(block.dense) is not nn.Linear or block.dense.bias is None:
        return False
    act = block.intermediate_act_fn
    exact = (type(act) is GELUActivation and act.act is nn.functional.gelu) or act is nn.functional.gelu
    if not exact or block.dense.weight.dtype != sample.dtype:
        return False
    if block.dense.in_features % launch_config()[2]:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _kernel() -> Any:
    """The jitted kernel, built once per interpreter mode (see relative_attention._kernel for why lazily)."""
    from sparkcurate.engine.relative_attention import _interpreting

    interpret = _interpreting()
    if interpret in _KERNELS:
        return _KERNELS[interpret]
    import triton
    import triton.language as tl

    @triton.jit
    def linear_gelu_rows(
        x_desc, w_desc, out_desc, bias, rows, cols, depth,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        PROGRAMS: tl.constexpr, IEEE: tl.constexpr,
    ):
        # Persistent: PROGRAMS programs walk the output tiles; tiles go through the tensor-memory accelerator
        # (TMA) descriptors, rows past the end read as zeros and are not written. Grouped order: GROUP_M row tiles
        # share each weight tile while it is in L2.
        row_tiles = tl.cdiv(rows, BLOCK_M)
        col_tiles = tl.cdiv(cols, BLOCK_N)
        per_group = GROUP_M * col_tiles
        for tile in tl.range(tl.program_id(0), row_tiles * col_tiles, PROGRAMS, flatten=True):
            first_row_tile = (tile // per_group) * GROUP_M
            group_rows = tl.minimum(row_tiles - first_row_tile, GROUP_M)
            row_start = (first_row_tile + (tile % per_group) % group_rows) * BLOCK_M
            col_start = ((tile % per_group) // group_rows) * BLOCK_N
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for inner in range(0, depth, BLOCK_K):  # depth is a multiple of BLOCK_K (usable())
                a = x_desc.load([row_start, inner])
                w = w_desc.load([col_start, inner])  # W is [cols, depth], as nn.Linear stores it
                if IEEE:
                    acc = tl.dot(a, w.T, acc, input_precision="ieee")
                else:
                    acc = tl.dot(a, w.T, acc)
            col = col_start + tl.arange(0, BLOCK_N)
            acc += tl.load(bias + col, mask=col < cols, other=0.0).to(tl.float32)[None, :]
            result = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
            out_desc.store([row_start, col_start], result.to(out_desc.dtype))

    _KERNELS[interpret] = linear_gelu_rows
    return linear_gelu_rows


def linear_gelu(x: torch.Tensor, dense: nn.Linear) -> torch.Tensor:
    """``gelu(dense(x))`` (exact GELU) for a 2-D ``[rows, in_features]`` tensor, fused (see :func:`usable`)."""
    import torch

    if x.ndim != 2 or x.shape[1] != dense.in_features or x.dtype != dense.weight.dtype:
        raise ValueError(f"x must be 2-D [rows, {dense.in_features}] of dtype {dense.weight.dtype}, got "
                         f"{tuple(x.shape)} {x.dtype}")
    block_m, block_n, block_k, group_m, warps, stages = launch_config()
    if dense.in_features % block_k:
        raise ValueError(f"in_features {dense.in_features} is not a multiple of BLOCK_K {block_k}")
    rows, cols = x.shape[0], dense.out_features
    out = torch.empty((rows, cols), dtype=x.dtype, device=x.device)
    if rows == 0:
        return out
    import triton  # after the checks: bad shapes get their own error where Triton is missing

    from triton.tools.tensor_descriptor import TensorDescriptor

    x = x if _tma_ready(x) else x.contiguous()
    weight = dense.weight if _tma_ready(dense.weight) else dense.weight.contiguous()
    programs = min(triton.cdiv(rows, block_m) * triton.cdiv(cols, block_n), _multiprocessors(x.device))
    _kernel()[(programs,)](
        TensorDescriptor.from_tensor(x, [block_m, block_k]), TensorDescriptor.from_tensor(weight, [block_n, block_k]),
        TensorDescriptor.from_tensor(out, [block_m, block_n]), dense.bias, rows, cols, dense.in_features,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m, PROGRAMS=programs,
        IEEE=x.dtype == torch.float32, num_warps=warps, num_stages=stages,
    )
    return out


def _tma_ready(t: torch.Tensor) -> bool:
    """TMA needs contiguous rows, 16-byte aligned rows and base."""
    return t.stride(1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0


def _multiprocessors(device: Any) -> int:
    """Persistent programs to launch: one per multiprocessor (4 on the CPU interpreter)."""
    import torch

    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def launch_config() -> tuple[int, int, int, int, int, int]:
    """:data:`LAUNCH_CONFIG`, or ``SPARKCURATE_GELU_CONFIG``'s."""
    raw = os.environ.get(CONFIG_ENV, "").strip()
    if not raw:
        return LAUNCH_CONFIG
    try:
        parts = tuple(int(part) for part in raw.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 6 or any(p <= 0 for p in parts) or any(p & (p - 1) for p in parts[:3]):
        raise ValueError(f"{CONFIG_ENV} must be 'BLOCK_M,BLOCK_N,BLOCK_K,GROUP_M,num_warps,num_stages' with "
                         f"power-of-two blocks, got {raw!r}")
    return parts  # type: ignore[return-value]
