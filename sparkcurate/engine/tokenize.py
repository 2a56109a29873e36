"""Tokenization, kept apart from the forward pass so it can run on other cores while the GPU works.

The character cut comes first: a fast tokenizer encodes a whole document before truncating, so a 50 MB document
would cost seconds of CPU for 512 tokens of output. Slicing to ``max_chars`` first bounds that work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np


def enable_tokenizer_threads() -> None:
    """Let the Rust tokenizer use its thread pool inside Spark's forked Python workers.

    The tokenizers library turns parallelism off after a fork unless told otherwise; our workers fork before any
    tokenizer is created, so enabling it is safe.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


def cut(texts: Sequence[str], max_chars: int | None) -> list[str]:
    """The character slice NeMo Curator applies before tokenizing (``max_chars``)."""
    if not max_chars:
        return list(texts)
    return [t[:max_chars] for t in texts]


@dataclass
class Tokenized:
    """Token ids of a batch of documents, one int32 array per document, in input order."""

    ids: list[np.ndarray]
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def total_tokens(self) -> int:
        return int(self.lengths.sum())


def tokenize(tokenizer, texts: Sequence[str], max_tokens: int, max_chars: int | None = None) -> Tokenized:
    """Encode with truncation to ``max_tokens`` (special tokens included), after the character cut."""
    pieces = cut(texts, max_chars)
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and getattr(tokenizer, "is_fast", False):
        ids = _encode_fast(tokenizer, backend, pieces, max_tokens)
    else:
        enc = tokenizer(pieces, truncation=True, max_length=max_tokens, add_special_tokens=True,
                        return_attention_mask=False)
        ids = [np.asarray(x, dtype=np.int32) for x in enc["input_ids"]]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    return Tokenized(ids=ids, lengths=lengths)


def _encode_fast(tokenizer, backend, texts: list[str], max_tokens: int) -> list[np.ndarray]:
    """The Rust tokenizer directly: batch encoding on its own threads, no Python-side padding or dict building.

    The backend is configured once per tokenizer for our truncation; its results equal ``tokenizer(...)`` with
    ``truncation=True, max_length=max_tokens``.
    """
    key = ("_sparkcurate_trunc", max_tokens)
    if getattr(tokenizer, "_sparkcurate_trunc", None) != key:
        backend.no_padding()
        backend.enable_truncation(max_length=max_tokens)
        tokenizer._sparkcurate_trunc = key
    encodings = backend.encode_batch(texts, add_special_tokens=True)
    return [np.asarray(e.ids, dtype=np.int32) for e in encodings]
