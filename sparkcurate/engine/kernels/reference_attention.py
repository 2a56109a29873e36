"""The reference attention back-end of the packed DeBERTa forward: the backbone's own padded attention module
(transformers' or :mod:`sparkcurate.engine.deberta`'s), one sequence at a time.

Why: a kernel-free definition of what the packed kernels must compute, so the packing glue can be checked on the
CPU against the padded forward (tests/test_packed.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparkcurate.engine.kernels.backends import AttentionBackend, LastLayerTables, LayerTail, PackedInfo

if TYPE_CHECKING:  # heavy imports stay lazy at runtime
    import torch
    from torch import nn


def attention_varlen(
    attention: nn.Module,
    hidden: torch.Tensor,
    info: PackedInfo,
    rel_embeddings: torch.Tensor | None,
) -> torch.Tensor:
    """Packed attention by looping over sequences with HF's own module.

    Why: a kernel-free definition of what the packed kernel must compute, so the
    packing/unpacking glue can be checked on CPU against the padded forward.
    """
    import torch

    from sparkcurate.engine.deberta import build_relative_position

    outputs = []
    for start, length in zip(info.offsets, info.lengths):
        chunk = hidden[start : start + length][None]
        mask = torch.ones((1, 1, length, length), dtype=torch.bool, device=hidden.device)
        relative_pos = None
        if getattr(attention, "relative_attention", False):
            relative_pos = build_relative_position(
                chunk, chunk, bucket_size=attention.position_buckets, max_position=attention.max_relative_positions
            )
        context, _ = attention(chunk, mask, relative_pos=relative_pos, rel_embeddings=rel_embeddings)
        outputs.append(context[0])
    return torch.cat(outputs, dim=0)



class ReferenceAttention(AttentionBackend):
    """Per-sequence HF attention (CPU reference)."""

    description = "Hugging Face's attention per sequence"

    def run(self, backbone: nn.Module, layers: list, hidden: torch.Tensor, cu_dev: torch.Tensor, info: PackedInfo,
            tail: LayerTail, last: bool) -> tuple[torch.Tensor, LastLayerTables | None]:
        rel = backbone.encoder.get_rel_embedding()
        for layer in layers:
            context = attention_varlen(layer.attention.self, hidden, info, rel)
            hidden = tail(layer, context, hidden)
        return hidden, None


BACKEND = ReferenceAttention()
