"""``PromptInferenceEngine``: the inference engine, tokenizing a prompt built around each document.

Why an engine of its own: the decoder classifiers (Aegis, the instruction-data guard) expect the document inside
a fixed prompt before tokenizing; only *what* is tokenized changes, so batching, precision and the forward stay
the plain engine's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from sparkcurate.engine.runner import EngineConfig, InferenceEngine
from sparkcurate.engine.tokenize import Tokenized, cut, tokenize

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


class PromptInferenceEngine(InferenceEngine):
    """The inference engine, tokenizing ``prompt(text[:max_chars])`` instead of the text (Aegis wraps the
    document's first 6000 characters in its safety prompt, then tokenizes up to 4096 tokens)."""

    def __init__(self, model: "nn.Module", tokenizer, config: EngineConfig, device: "str | torch.device",
                 prompt: Callable[[str], str] | None = None):
        super().__init__(model, tokenizer, config, device)
        self.prompt = prompt
        # The prompt is part of what is tokenized: engines with different prompts never share tokens.
        marker = prompt("\x00") if prompt is not None else None
        self.tokenize_key = (*self.tokenize_key, marker)

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        pieces = cut(texts, self.config.max_chars)
        if self.prompt is not None:
            pieces = [self.prompt(t) for t in pieces]
        return tokenize(self.tokenizer, pieces, self.config.max_tokens, None)
