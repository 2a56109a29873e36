"""Probe: host syncs in the engine's forward, and the fused residual + LayerNorm on vs off.

Run on the GPU machine: ``python3 -m benchmarks.probes.sync_and_fused_norm`` (~1.5 min on an H100). The domain
mix of the GPU-stage benchmark (12,000 documents), the engine in its defaults (fp16, packed), timed three ways:
pre-tokenized in one call, pre-tokenized in 2000-document calls, and through ``predict_batches`` (tokenizing on
the prefetch thread, as a Spark task does). ``SPARKCURATE_FUSED_NORM`` alternates between off and auto. Then
the host syncs of one 2000-document call, by where they come from (``torch.cuda.set_sync_debug_mode``).
"""

from __future__ import annotations

import os
import time
import warnings
from collections import Counter
from typing import Callable


def timed(label: str, docs: int, work: Callable[[], object], repeats: int = 2) -> None:
    import torch

    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        work()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    print(f"{label:52s} {best:7.3f} s  {docs / best:8.1f} docs/s", flush=True)


def main() -> None:
    import torch

    from benchmarks.gpu_stage import backbone_config, build_model, load_docs
    from benchmarks.synthetic import DOMAIN, benchmark_tokenizer
    from sparkcurate.engine.kernels.residual_norm import FUSED_ENV
    from sparkcurate.engine.runner import EngineConfig, InferenceEngine

    tokenizer = benchmark_tokenizer()
    docs = load_docs(DOMAIN, 12000, tokenizer, 0)
    model = build_model(backbone_config(False, len(tokenizer)), 0)
    config = EngineConfig(max_tokens=docs.max_tokens, max_chars=docs.max_chars)
    engine = InferenceEngine(model, tokenizer, config, device="cuda")
    n = len(docs.texts)
    batches = [docs.texts[i:i + 2000] for i in range(0, n, 2000)]
    whole = engine.tokenize(docs.texts)
    parts = [engine.tokenize(b) for b in batches]
    engine.predict_tokenized(whole)  # compile and warm up
    for mode in ("off", "auto", "off", "auto"):
        os.environ[FUSED_ENV] = mode
        timed(f"[{mode}] predict_tokenized all {n} at once", n, lambda: engine.predict_tokenized(whole))
        timed(f"[{mode}] predict_tokenized {len(parts)} x 2000 (pre-tokenized)", n,
              lambda: [engine.predict_tokenized(t) for t in parts])
        timed(f"[{mode}] predict_batches {len(batches)} x 2000 (prefetch thread)", n,
              lambda: list(engine.predict_batches(batches)))
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine.predict_tokenized(parts[0])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    print(f"host syncs in one 2000-document predict_tokenized: {sum(syncs.values())}")
    for where, count in syncs.most_common():
        print(f"  {count:3d} {where}")


if __name__ == "__main__":
    main()
