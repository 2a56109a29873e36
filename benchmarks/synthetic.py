"""Deterministic synthetic documents with the length mixes of the anchors (benchmarks/NOTES.md).

Why synthetic: benchmarks must run without network or datasets, and must reproduce the *length mix*
that decides how much padding a batch carries (the thing packing removes).

Mixes (token counts, [CLS]/[SEP] included):

* ``DOMAIN`` -- NeMo's domain classifier after its 2000-character cut: 55% of documents 440-512
  tokens, the rest log-normal kept below 440 (parameters: median 222, sigma 0.6, chosen so the
  overall mean is ~358 tokens against the anchors' 361; the tail's median ends up ~200).
* ``QUALITY`` -- the quality classifier's shape (cut at 6000 characters / 1024 tokens): 60% of
  documents 900-1024 tokens, the rest log-normal kept below 900 (median 388); mean ~737.

Text is made of pseudo-words built from syllable pieces. The real DeBERTa-v3 tokenizer cannot be
downloaded here, so the *assumption* is ~1.3 tokens per word (English under DeBERTa-v3's
SentencePiece is about that): a document of ``n`` tokens gets ``round((n-2)/1.3)`` words, of which
``(n-2) - words`` are two-piece words. :func:`benchmark_tokenizer` builds a WordPiece tokenizer over
exactly those pieces, under which every document has exactly its target token count; a real
DeBERTa tokenizer would give roughly that (the benchmark always measures actual tokens). Pieces are
chosen so the text has ~3.5 characters per token, so a 512-token document stays under the
2000-character cut, as in the real mix.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOKENS_PER_WORD = 1.3
SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")
_CONSONANTS = "bcdfghjklmnprstvwxz"
_VOWELS = "aeiou"


@dataclass(frozen=True)
class LengthMix:
    """A two-part length distribution: a block of cut documents plus a log-normal tail below it."""

    name: str
    max_tokens: int
    max_chars: int
    cut_fraction: float  # share of documents that reached the cut
    cut_low: int  # their token counts are uniform in [cut_low, max_tokens]
    median: float  # the rest: log-normal with this median ...
    sigma: float  # ... and this log-space spread, kept in [min_tokens, cut_low)
    min_tokens: int = 8


DOMAIN = LengthMix("domain", 512, 2000, 0.55, 440, 222.0, 0.6)
QUALITY = LengthMix("quality", 1024, 6000, 0.60, 900, 388.0, 0.6)
MIXES = {m.name: m for m in (DOMAIN, QUALITY)}


def sample_token_lengths(n: int, mix: LengthMix, seed: int = 0) -> np.ndarray:
    """Target token counts (specials included) for ``n`` documents; deterministic in ``seed``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    is_cut = rng.random(n) < mix.cut_fraction
    lengths = rng.integers(mix.cut_low, mix.max_tokens + 1, size=n)
    tail = np.flatnonzero(~is_cut)
    draws = np.empty(0)
    while draws.size < tail.size:  # rejection keeps the tail inside [min_tokens, cut_low)
        more = rng.lognormal(math.log(mix.median), mix.sigma, size=2 * tail.size + 16)
        more = more[(more >= mix.min_tokens) & (more < mix.cut_low)]
        draws = np.concatenate([draws, more])
    lengths[tail] = np.round(draws[: tail.size]).astype(np.int64)
    return lengths.astype(np.int64)


def _pieces() -> tuple[list[str], list[str]]:
    """Word-initial pieces (consonant-vowel-consonant, 3 chars) and continuations (2 chars).

    Fixed widths make WordPiece's greedy longest match split every word exactly into the pieces it
    was built from.
    """
    heads = [a + b + c for a in _CONSONANTS for b in _VOWELS for c in _CONSONANTS]
    tails = [a + b for a in _CONSONANTS for b in _VOWELS]
    return heads, tails


def make_documents(n: int, mix: LengthMix = DOMAIN, seed: int = 0) -> list[str]:
    """``n`` deterministic documents whose benchmark-tokenizer token counts follow ``mix``."""
    heads, tails = _pieces()
    heads_a = np.array(heads)
    tails_a = np.array(tails)
    lengths = sample_token_lengths(n, mix, seed)
    rng = np.random.default_rng(seed + 1)
    docs = []
    for total in lengths:
        content = max(int(total) - 2, 1)
        words = max(1, min(content, round(content / TOKENS_PER_WORD)))
        doubles = content - words
        first = heads_a[rng.integers(0, len(heads), size=words)]
        second = np.full(words, "", dtype=object)
        which = rng.choice(words, size=doubles, replace=False)
        second[which] = tails_a[rng.integers(0, len(tails), size=doubles)]
        docs.append(" ".join(a + b for a, b in zip(first.tolist(), second.tolist())))
    return docs


def benchmark_tokenizer():
    """A fast WordPiece tokenizer over the synthetic pieces (``transformers.PreTrainedTokenizerFast``).

    It stands in for the DeBERTa-v3 tokenizer (not downloadable here): same special-token layout
    ([CLS] text [SEP]), ids inside DeBERTa-v3's 128,100-entry vocabulary, and a token count per
    document equal to the target of :func:`sample_token_lengths`.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    heads, tails = _pieces()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for piece in heads + ["##" + t for t in tails]:
        vocab[piece] = len(vocab)
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        unk_token="[UNK]", mask_token="[MASK]",
    )


def write_jsonl(out_dir: str | Path, n_docs: int, n_files: int, mix: LengthMix = DOMAIN, seed: int = 0,
                text_field: str = "text") -> list[Path]:
    """Write ``n_docs`` synthetic documents as ``n_files`` JSONL files (``{"id", text_field}`` per line).

    For the Spark end-to-end benchmark: documents are spread round-robin, so every file has the
    same length mix.
    """
    if n_files < 1:
        raise ValueError(f"n_files must be >= 1, got {n_files}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = make_documents(n_docs, mix, seed)
    paths = [out / f"part-{i:05d}.jsonl" for i in range(n_files)]
    handles = [p.open("w", encoding="utf-8") for p in paths]
    try:
        for i, text in enumerate(docs):
            handles[i % n_files].write(json.dumps({"id": f"doc-{i}", text_field: text}) + "\n")
    finally:
        for h in handles:
            h.close()
    return paths


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m benchmarks.synthetic OUT_DIR --docs 40000 --files 8 [--mix quality]``."""
    import argparse
    import logging

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--docs", type=int, default=40_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--mix", choices=sorted(MIXES), default="domain")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    paths = write_jsonl(args.out_dir, args.docs, args.files, MIXES[args.mix], args.seed)
    logging.getLogger(__name__).info("wrote %d documents to %d files under %s", args.docs, len(paths), args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
