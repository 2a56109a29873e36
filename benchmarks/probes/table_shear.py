"""Probe: the p2c table (shear "table") against the scratch shear in the whole forward, and GELU in the GEMM epilogue.

Run on the GPU machine: ``python3 -m benchmarks.probes.table_shear`` (~3 min on an H100). The engine (fp16,
packed) on pre-tokenized documents of the GPU-stage benchmark's two mixes; each variant is set through the
environment the engine reads per call (``SPARKCURATE_ATTENTION_SHEAR``, ``SPARKCURATE_ATTENTION_CONFIG``), timed
in alternating rounds after one untimed pass each (Triton compiles there). Printed per variant: docs/s, peak GPU
memory, and against the first variant's probabilities (decisive head calibrated as in ``benchmarks.gpu_stage``) (the current default) the argmax agreement and the largest
probability difference, so a variant that changes results shows.

The "tanh-gelu" variant is a question, not a product option: it replaces each feed-forward block's
``gelu(dense(x))`` (erf form, two kernels) by cuBLASLt's bias + GELU epilogue (``torch._addmm_activation``, the
tanh form, one kernel), to see what the fusion would buy and what the approximation does to the predictions.
"""

from __future__ import annotations

import contextlib
import os
import time

VARIANTS = (
    ("scratch 64x64", {"SPARKCURATE_ATTENTION_SHEAR": "scratch", "SPARKCURATE_ATTENTION_CONFIG": "64,64,4,3"}, False),
    ("table 64x64", {"SPARKCURATE_ATTENTION_SHEAR": "table", "SPARKCURATE_ATTENTION_CONFIG": "64,64,4,3"}, False),
    ("table 128x64 w8", {"SPARKCURATE_ATTENTION_SHEAR": "table", "SPARKCURATE_ATTENTION_CONFIG": "128,64,8,3"}, False),
    ("table 128x32 w4", {"SPARKCURATE_ATTENTION_SHEAR": "table", "SPARKCURATE_ATTENTION_CONFIG": "128,32,4,3"}, False),
    ("table 64x64 tanh-gelu", {"SPARKCURATE_ATTENTION_SHEAR": "table", "SPARKCURATE_ATTENTION_CONFIG": "64,64,4,3"},
     True),
)


@contextlib.contextmanager
def tanh_gelu_epilogue(model, enabled: bool):
    """Swap every DeBERTa feed-forward block's forward for the fused bias + tanh-GELU GEMM while active."""
    import torch
    from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2Intermediate

    blocks = [m for m in model.modules() if isinstance(m, DebertaV2Intermediate)] if enabled else []
    for block in blocks:
        dense = block.dense
        block.forward = lambda h, d=dense: torch._addmm_activation(
            d.bias, h.reshape(-1, h.shape[-1]), d.weight.t(), use_gelu=True).reshape(*h.shape[:-1], -1)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


def main(argv: list[str] | None = None) -> None:
    import argparse

    import numpy as np
    import torch

    from benchmarks.gpu_stage import backbone_config, build_model, calibrate_head, load_docs
    from benchmarks.synthetic import DOMAIN, QUALITY, benchmark_tokenizer
    from sparkcurate.engine.runner import EngineConfig, InferenceEngine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, few documents (checks the probe runs)")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.smoke else "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    tokenizer = benchmark_tokenizer()
    for mix, n in ((DOMAIN, 40 if args.smoke else 12000), (QUALITY, 20 if args.smoke else 6000)):
        docs = load_docs(mix, n, tokenizer, 0)
        model = build_model(backbone_config(args.smoke, len(tokenizer)), 0)
        calibrate_head(model, docs, device)  # decisive head, as in the GPU-stage benchmark
        config = EngineConfig(max_tokens=docs.max_tokens, max_chars=docs.max_chars)
        engine = InferenceEngine(model, tokenizer, config, device=device)
        tokens = engine.tokenize(docs.texts)
        first = None
        for round_ in range(3):  # round 0 untimed (compiles), then two timed rounds
            for name, env, tanh in VARIANTS:
                os.environ.update(env)
                with tanh_gelu_epilogue(engine.model, tanh):
                    sync()
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    start = time.perf_counter()
                    probs = engine.predict_tokenized(tokens)
                    sync()
                    seconds = time.perf_counter() - start
                if first is None:
                    first = probs
                same = float((probs.argmax(1) == first.argmax(1)).mean())
                diff = float(np.abs(probs - first).max())
                peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else float("nan")
                print(f"{mix.name:8s} round {round_} {name:24s} {n / seconds:8.1f} docs/s peak {peak:.2f} GB "
                      f"agree {same:.4f} max|dp| {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
