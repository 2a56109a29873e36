"""The published model heads, as torch modules whose parameter names match the checkpoints exactly.

Every head returns one float tensor per document (probabilities or raw scores): the engine only moves tensors and
the classifier's post-processing turns them into columns. Heads that can run unpadded expose ``forward_packed``.
"""

from __future__ import annotations

import torch
from torch import nn


class ClsHeadModel(nn.Module):
    """NeMo Curator's DeBERTa head (domain, multilingual domain, quality, content type).

    ``softmax(fc(last_hidden_state)[:, 0, :])``; parameters ``model.*`` (the backbone) and ``fc.*``. The engine
    keeps ``fc`` in fp32 when the backbone runs in half precision (``fp32_children``, see
    :func:`sparkcurate.engine.runner.to_inference`): its logits are not rounded to fp16.
    """

    fp32_children = ("fc",)

    def __init__(self, backbone_config, n_labels: int, fc_dropout: float = 0.2, backbone: nn.Module | None = None):
        """``backbone``: a module already built from ``backbone_config`` (this package's own DeBERTa,
        :mod:`sparkcurate.models.lean`); None builds transformers' ``AutoModel`` from it."""
        super().__init__()
        if backbone is None:
            from transformers import AutoModel

            backbone = AutoModel.from_config(backbone_config)
        self.model = backbone
        self.dropout = nn.Dropout(fc_dropout)
        self.fc = nn.Linear(backbone_config.hidden_size, n_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self._head(hidden[:, 0, :])

    def packed_support(self, device: torch.device) -> tuple[bool, str]:
        try:
            from sparkcurate.engine.deberta_packed import packed_support
        except ImportError as exc:  # pragma: no cover - the module ships with the package
            return False, f"packed path unavailable: {exc}"
        return packed_support(self.model, device)

    def forward_packed(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                       attention_impl: str = "kernel") -> torch.Tensor:
        """``forward`` on packed tokens (``[T]`` ids, ``[B+1]`` boundaries); ``[B, n_labels]`` probabilities.

        Only the [CLS] rows reach the head, so the last layer runs for those rows alone (``rows="first"``).
        ``attention_impl`` is the packed attention backend ("kernel" on CUDA; "torch"/"reference" run on CPU).
        """
        from sparkcurate.engine.deberta_packed import packed_last_hidden

        first = packed_last_hidden(self.model, input_ids, cu_seqlens, max_seqlen, attention_impl, rows="first")
        return self._head(first)

    def _head(self, first: torch.Tensor) -> torch.Tensor:
        """Probabilities from the [CLS] states, in ``fc``'s dtype (fp32 under the engine) whatever the backbone's."""
        return torch.softmax(self.fc(self.dropout(first.to(self.fc.weight.dtype))).float(), dim=-1)


class SequenceRegressionModel(nn.Module):
    """A transformers ``*ForSequenceClassification`` model whose raw logits are the output (FineWeb-Edu family).

    Parameter names are the transformers model's own (wrapped under ``hf.`` is avoided by delegating state
    dicts), so ``save_pretrained`` checkpoints load strictly.
    """

    def __init__(self, config):
        super().__init__()
        from transformers import AutoModelForSequenceClassification

        self.hf = AutoModelForSequenceClassification.from_config(config)

    def state_dict(self, *args, **kwargs):  # names as in the checkpoint, without the wrapper's prefix
        return self.hf.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.hf.load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits.float()


class MeanPoolEmbeddingModel(nn.Module):
    """A sentence-embedding encoder: attention-mask-weighted mean of the last hidden state, L2-normalised
    (all-MiniLM-L6-v2 and other sentence-transformers models). Parameter names are the encoder's own."""

    def __init__(self, config):
        super().__init__()
        from transformers import AutoModel

        self.encoder = AutoModel.from_config(config)

    def state_dict(self, *args, **kwargs):
        return self.encoder.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.encoder.load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return torch.nn.functional.normalize(mean_pool(hidden, attention_mask).float(), dim=-1)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states that the attention mask keeps."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
