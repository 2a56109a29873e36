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


def special_layout(tokenizer) -> tuple[int, int] | None:
    """How many special tokens a single-sequence encoding puts before and after the text (``[CLS] x [SEP]``:
    (1, 1)), or None when that cannot be relied on (a slow tokenizer, specials in the middle, none at all).

    Why: with the layout known, the encoding of a text under a smaller token limit is a prefix of its encoding
    under a larger one plus the same closing specials (truncation cuts the content, then the specials are added).
    """
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not getattr(tokenizer, "is_fast", False):
        return None
    mask = list(backend.encode("hello world", add_special_tokens=True).special_tokens_mask)
    prefix = next((i for i, m in enumerate(mask) if not m), len(mask))
    suffix = next((i for i, m in enumerate(reversed(mask)) if not m), len(mask))
    if prefix == len(mask) or any(mask[prefix:len(mask) - suffix]):
        return None
    return prefix, suffix


def derivable(text: str, max_chars: int | None, base_chars: int | None) -> bool:
    """True when ``text`` cut at ``max_chars`` is the same string as cut at ``base_chars`` (None: no cut)."""
    n = len(text)
    return min(n, n if max_chars is None else max_chars) == min(n, n if base_chars is None else base_chars)


def shrink_ids(ids: np.ndarray, max_tokens: int, layout: tuple[int, int]) -> np.ndarray:
    """``ids`` (one encoding under a larger token limit) as the same text's encoding under ``max_tokens``."""
    if len(ids) <= max_tokens:
        return ids
    prefix, suffix = layout
    keep = max_tokens - prefix - suffix
    return np.concatenate([ids[: prefix + keep], ids[len(ids) - suffix:]]) if suffix else ids[: prefix + keep]


class RustTokenizer:
    """A checkpoint's ``tokenizer.json`` through the ``tokenizers`` library alone, for the engine.

    Why: transformers' ``AutoTokenizer`` costs a fresh worker seconds of imports (measured ~6 s with torch on a
    busy CPU, against 0.07 s for ``tokenizers``), while the engine only ever calls the Rust backend
    (:func:`_encode_fast`, :func:`special_layout`). It offers what the engine reads of a transformers fast
    tokenizer: ``_tokenizer`` / ``backend_tokenizer``, ``is_fast``, ``pad_token_id``, ``get_vocab``.

    What can differ from transformers' tokenizer: transformers 5 rebuilds some classes' normalizer and
    pre-tokenizer from their Python code and ``tokenizer_config.json`` (DeBERTa-v2 among them) rather than taking
    them from ``tokenizer.json``; for the DeBERTa-v3 tokenizers both give the same ids (tests/test_lean_deberta.py
    checks the fixture's), but a repository whose ``tokenizer.json`` disagrees with its ``tokenizer_config.json``
    would tokenize as its ``tokenizer.json`` says here.
    """

    is_fast = True

    def __init__(self, backend, pad_token: str | None, source: str) -> None:
        self._tokenizer = backend
        self.source = source
        self.pad_token = pad_token
        self.pad_token_id = backend.token_to_id(pad_token) if pad_token is not None else None

    @property
    def backend_tokenizer(self):
        return self._tokenizer

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def __repr__(self) -> str:
        return f"RustTokenizer({self.source!r}, vocab {self._tokenizer.get_vocab_size()})"


def pad_token_of(config: dict | None) -> str | None:
    """The pad token a ``tokenizer_config.json`` / ``special_tokens_map.json`` object names (a string, or an
    added-token object with ``content``), or None."""
    value = (config or {}).get("pad_token")
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None
