"""The feed-forward block's first GEMM with its GELU in cuBLASLt's epilogue.

Why: DeBERTa's intermediate block is ``gelu(dense(x))`` into ``[tokens, 4 * hidden]``.
As two kernels the GELU reads and writes that whole intermediate once more: 7% of the
packed forward's kernel time on an H100 (benchmarks/NOTES.md, eighth round). cuBLASLt
can apply GELU to the fp32 accumulator before the result is rounded
(``torch._addmm_activation(bias, x, weight.T, use_gelu=True)``), so the pass goes away:
0.82 -> 0.59 ms for one 65k-token DeBERTa-base block (benchmarks/probes/gelu_epilogue.py,
ninth round).

Exactness: cuBLASLt's GELU is the tanh approximation, which differs from the exact
(erf) GELU of DeBERTa's ``hidden_act="gelu"`` by at most 4.7e-4 absolute (near
x = -2.7). It is applied before the rounding to fp16/bf16 rather than after it, so
against the fp32 exact block the fused output is about as close as the two-kernel
half-precision one (fp16, 65k tokens: max error 2.93e-3 both, mean 1.64e-4 vs
1.41e-4). It is used only for half-precision activations on CUDA, where that rounding
already dominates; fp32 and the CPU keep the module's own forward. Through a whole
model it is not free: on the benchmark's DeBERTa-base (random weights, fp16) the
share of documents with some probability more than 1e-2 from fp32 went from 2.2% to
4.0% (domain mix; 1.3% to 3.9% quality), the largest difference stayed 0.02-0.03 and
every document whose fp32 top two labels are 0.1 apart kept its label, for +8% / +6%
speed (benchmarks/gpu_stage.py measures both in one run; NOTES ninth round).
``SPARKCURATE_GELU_EPILOGUE=off`` keeps the exact GELU everywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparkcurate.engine.kernels import switches

if TYPE_CHECKING:  # heavy imports stay lazy at runtime
    import torch
    from torch import nn

#: "auto": fused for fp16/bf16 on CUDA; "off": always the module's own forward.
EPILOGUE_ENV = switches.GELU_EPILOGUE
#: transformers' activation classes that compute GELU (exact erf, or the tanh approximation cuBLASLt uses).
GELU_CLASSES = frozenset({"GELUActivation", "GELUTanh", "PytorchGELUTanh", "NewGELUActivation"})


def mode() -> str:
    """The epilogue mode from ``SPARKCURATE_GELU_EPILOGUE`` (default "auto")."""
    return switches.read(EPILOGUE_ENV)


def usable(intermediate: nn.Module, sample: torch.Tensor) -> bool:
    """True when ``intermediate`` (a DeBERTa ``*Intermediate`` block, transformers' or :mod:`..deberta`'s) on
    tensors like ``sample`` runs fused.

    Needs a plain biased ``nn.Linear`` named ``dense`` with weights of the activations' dtype, a GELU activation
    of transformers' own classes or torch's ``nn.GELU`` (:func:`_is_gelu`; ``use_gelu_python`` is the same erf
    GELU), fp16/bf16 CUDA activations, and mode "auto".
    """
    import torch
    from torch import nn

    dense = getattr(intermediate, "dense", None)
    act = getattr(intermediate, "intermediate_act_fn", None)
    return (
        mode() == "auto"
        and sample.device.type == "cuda"
        and sample.dtype in (torch.float16, torch.bfloat16)
        and type(dense) is nn.Linear
        and dense.bias is not None
        and dense.weight.dtype == sample.dtype
        and _is_gelu(act)
    )


def _is_gelu(act: object) -> bool:
    """A GELU module whose forward is known: transformers' own classes (a user-defined one could be anything), or
    exactly torch's ``nn.GELU`` (the activation of :mod:`sparkcurate.engine.deberta`'s blocks)."""
    from torch import nn

    cls = type(act)
    return (cls.__name__ in GELU_CLASSES and cls.__module__ == "transformers.activations") or cls is nn.GELU


def intermediate_gelu(intermediate: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``gelu(dense(hidden))`` for ``[T, H]`` rows as one cuBLASLt GEMM (caller checked :func:`usable`)."""
    import torch

    dense = intermediate.dense
    return torch._addmm_activation(dense.bias, hidden, dense.weight.t(), use_gelu=True)
