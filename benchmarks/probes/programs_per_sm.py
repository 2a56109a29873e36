"""Probe: persistent attention programs per SM (16 vs 32) in the whole forward, not just one layer.

Run on the GPU machine: ``python3 -m benchmarks.probes.programs_per_sm`` (~1.5 min on an H100). The engine
(fp16, packed) on pre-tokenized documents of the GPU-stage benchmark's two mixes, ``PROGRAMS_PER_SM`` switched
between timed passes (alternating, each after one untimed pass with the new value).
"""

from __future__ import annotations

import time


def main() -> None:
    import torch

    from benchmarks.gpu_stage import backbone_config, build_model, load_docs
    from benchmarks.synthetic import DOMAIN, QUALITY, benchmark_tokenizer
    from sparkcurate.engine.kernels import relative_attention
    from sparkcurate.engine.runner import EngineConfig, InferenceEngine

    tokenizer = benchmark_tokenizer()
    for mix, n in ((DOMAIN, 12000), (QUALITY, 6000)):
        docs = load_docs(mix, n, tokenizer, 0)
        model = build_model(backbone_config(False, len(tokenizer)), 0)
        config = EngineConfig(max_tokens=docs.max_tokens, max_chars=docs.max_chars)
        engine = InferenceEngine(model, tokenizer, config, device="cuda")
        tokens = engine.tokenize(docs.texts)
        engine.predict_tokenized(tokens)
        for per_sm in (16, 32, 16, 32):
            relative_attention.PROGRAMS_PER_SM = per_sm
            engine.predict_tokenized(tokens)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            engine.predict_tokenized(tokens)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            print(f"{mix.name:8s} per_sm={per_sm:2d} {n / seconds:8.1f} docs/s "
                  f"peak {torch.cuda.max_memory_allocated() / 1e9:.2f} GB", flush=True)


if __name__ == "__main__":
    main()
