"""Probe: queuing the next batch before waiting for the current one (``collect_ahead``), with and without tokenizing.

Run on the GPU machine: ``python3 -m benchmarks.probes.batch_lookahead`` (~3 min on an H100). The engine (fp16,
packed) on the GPU-stage benchmark's documents, cut into batches as a Spark task gets them, timed in alternating
rounds (best of them printed last):

* ``whole``: all documents pre-tokenized in one call (no batch boundaries: the upper bound);
* ``pre-tokenized, one at a time``: ``predict_tokenized`` per batch (each waits for its results before the next
  batch is queued: the GPU idles while the host finishes one batch and prepares the next);
* ``pre-tokenized, one ahead``: ``collect_ahead(submit, collect)``;
* ``tokenizing, one at a time``: the prefetch thread tokenizing, ``predict_tokenized`` per batch (how
  ``predict_batches`` and the Spark stage worked before ``collect_ahead``);
* ``tokenizing, one ahead``: ``predict_batches`` as it is now.
"""

from __future__ import annotations

import time
from collections import defaultdict


def main() -> None:
    import torch

    from benchmarks.gpu_stage import backbone_config, build_model, load_docs
    from benchmarks.synthetic import DOMAIN, QUALITY, benchmark_tokenizer
    from sparkcurate.engine.runner import EngineConfig, InferenceEngine, collect_ahead, prefetch

    tokenizer = benchmark_tokenizer()
    for mix, n, batch_docs in ((DOMAIN, 12000, 2000), (DOMAIN, 12000, 500), (QUALITY, 6000, 1000)):
        docs = load_docs(mix, n, tokenizer, 0)
        model = build_model(backbone_config(False, len(tokenizer)), 0)
        engine = InferenceEngine(model, tokenizer, EngineConfig(max_tokens=docs.max_tokens, max_chars=docs.max_chars),
                                 device="cuda")
        batches = [docs.texts[i:i + batch_docs] for i in range(0, n, batch_docs)]
        whole = engine.tokenize(docs.texts)
        parts = [engine.tokenize(b) for b in batches]
        engine.predict_tokenized(whole)  # compile and warm up
        modes = {
            "whole": lambda: engine.predict_tokenized(whole),
            "pre-tokenized, one at a time": lambda: [engine.predict_tokenized(t) for t in parts],
            "pre-tokenized, one ahead": lambda: list(collect_ahead(parts, engine.submit, engine.collect)),
            "tokenizing, one at a time": lambda: [engine.predict_tokenized(t)
                                                  for t in prefetch(batches, engine.tokenize, 2)],
            "tokenizing, one ahead": lambda: list(engine.predict_batches(batches)),
        }
        best: dict[str, float] = defaultdict(lambda: float("inf"))
        for round_ in range(3):
            for name, work in modes.items():
                torch.cuda.synchronize()
                start = time.perf_counter()
                work()
                torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                best[name] = min(best[name], seconds)
                print(f"{mix.name:8s} batches of {batch_docs:5d} round {round_} {name:30s} {n / seconds:8.1f} docs/s",
                      flush=True)
        for name in modes:
            print(f"BEST {mix.name:8s} batches of {batch_docs:5d} {name:30s} {n / best[name]:8.1f} docs/s", flush=True)


if __name__ == "__main__":
    main()
