"""Linear layers whose fp32 weights are kept as a pair of fp16 matrices (``precision="fp16-split"``).

Why: in an fp16 forward the weights' rounding is the one error that is the same for every token, so it does not
average out: on the benchmark's DeBERTa-base (random weights, calibrated head) it alone puts 1.4% of documents more
than 1e-2 from fp32, and the engine's other roundings together (activations, GEMM operands, attention) stay under
1e-2 once the linear layers' weights are exact and the GELU is the exact one (benchmarks/NOTES.md, eleventh round:
fp16 emulated on an H100, 12,000 documents, largest difference 7.0e-3).

How: ``W`` is split into ``hi = fp16(W)`` and ``lo = fp16((W - hi) * 2**LO_SHIFT)`` (about 21 of fp32's 24 bits
together), stored side by side as one ``[N, 2K]`` matrix, and the product is ONE fp16 GEMM over the doubled inner
dimension: ``[x, x * 2**-LO_SHIFT] @ [hi, lo].T``. Both halves meet in the GEMM's fp32 accumulator and the output is
rounded once, as an fp32-weight product would be. Two GEMMs added through cuBLAS's ``beta * C`` do not do that: on an
H100 (torch 2.11) only 78% of such outputs were the correctly rounded fp32-weight product, against 99.4% for the
doubled-K GEMM and 57.6% for plain fp16 weights (768x768, 65k rows; NOTES eleventh round). The price is twice the GEMM
work, the ``[x, x * 2**-LO_SHIFT]`` copy, and no GELU epilogue.

``lo`` is scaled by ``2**LO_SHIFT`` because ``W - hi`` (about ``2**-12 * |W|``) lies among fp16's subnormals for
typical weights (|W| ~ 0.02) and would lose most of its bits there; the scale moves to the activations instead, where
only entries below ~0.1 become subnormal, and those contribute ``2**-11`` less to begin with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

#: ``lo`` is stored times 2**LO_SHIFT (see module doc); |W - hi| <= 2**-11 |W|, so the scaled ``lo`` is <= |W|.
LO_SHIFT = 11


@dataclass(frozen=True)
class SplitWeight:
    """``[hi, lo]`` side by side (``pair``, ``[N, 2K]``): sliced by rows like a weight (the fused Q/K/V one is)."""

    pair: Any

    def __getitem__(self, index) -> SplitWeight:
        return SplitWeight(self.pair[index])

    @property
    def hi(self):
        return self.pair[:, : self.pair.shape[1] // 2]

    @property
    def lo(self):
        return self.pair[:, self.pair.shape[1] // 2:]

    @property
    def device(self):
        return self.pair.device

    @property
    def dtype(self):
        return self.pair.dtype

    @property
    def shape(self):
        return (self.pair.shape[0], self.pair.shape[1] // 2)

    @staticmethod
    def stack(weights: list[SplitWeight]) -> SplitWeight:
        return SplitWeight(torch.cat([w.pair for w in weights]).contiguous())


def split(weight: torch.Tensor, dtype: torch.dtype) -> SplitWeight:
    """``weight`` (fp32) as a :class:`SplitWeight` of ``dtype``. Refuses weights already in half precision: their lost
    bits cannot be split back, and a zero ``lo`` would make the mode a silent no-op."""
    if weight.dtype != torch.float32:
        raise ValueError(f"precision fp16-split needs the model's fp32 weights; got {weight.dtype} (load the model in "
                         "fp32, or use precision fp16)")
    with torch.no_grad():
        hi = weight.to(dtype)
        lo = ((weight - hi.float()) * 2.0**LO_SHIFT).to(dtype)
        return SplitWeight(torch.cat([hi, lo], dim=1).contiguous())


def linear(x: torch.Tensor, weight: torch.Tensor | SplitWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` that also takes a :class:`SplitWeight`: one GEMM over ``[x, x * 2**-LO_SHIFT]``."""
    if not isinstance(weight, SplitWeight):
        return F.linear(x, weight, bias)
    width = x.shape[-1]
    doubled = x.new_empty(*x.shape[:-1], 2 * width)
    doubled[..., :width] = x
    torch.mul(x, 2.0**-LO_SHIFT, out=doubled[..., width:])
    return F.linear(doubled, weight.pair, bias)


class SplitLinear(nn.Linear):
    """An ``nn.Linear`` whose product uses the ``weight_pair`` buffer (a :class:`SplitWeight`); ``.weight`` is its
    ``hi`` half, so code that reads a linear layer's weight for its shape, dtype or device still works."""

    def __init__(self, source: nn.Linear, dtype: torch.dtype):
        with torch.device("meta"):
            super().__init__(source.in_features, source.out_features, bias=source.bias is not None)
        pair = split(source.weight.detach(), dtype)
        self.register_buffer("weight_pair", pair.pair)
        self.weight = nn.Parameter(pair.hi, requires_grad=False)  # a view of the pair's first half
        if source.bias is not None:
            self.bias = nn.Parameter(source.bias.detach().to(dtype), requires_grad=False)

    @property
    def split_weight(self) -> SplitWeight:
        return SplitWeight(self.weight_pair)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.split_weight, self.bias)


def weight_of(module: nn.Module) -> torch.Tensor | SplitWeight:
    """A linear module's weight as :func:`linear` takes it."""
    return module.split_weight if isinstance(module, SplitLinear) else module.weight


def split_linears(model: nn.Module, dtype: torch.dtype, skip: tuple[str, ...] = ()) -> int:
    """Replace every plain ``nn.Linear`` in ``model`` (not under the top-level children named in ``skip``) by a
    ``SplitLinear`` of ``dtype``; returns how many. Subclasses of ``nn.Linear`` are left alone: their forward may
    do more than a product, and they then stay in the engine's plain dtype (logged)."""
    count, others = 0, []
    for name, parent in list(model.named_modules()):
        if name and name.split(".")[0] in skip:
            continue
        for child_name, child in list(parent.named_children()):
            skipped = parent is model and child_name in skip
            if skipped or not isinstance(child, nn.Linear) or isinstance(child, SplitLinear):
                continue
            if type(child) is nn.Linear:
                setattr(parent, child_name, SplitLinear(child, dtype))
                count += 1
            else:
                others.append(f"{name}.{child_name}".lstrip("."))
    if others:
        log.warning("fp16-split: %d linear layers of other classes keep plain fp16 weights: %s", len(others),
                    ", ".join(others[:5]))
    return count
