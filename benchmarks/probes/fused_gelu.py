"""Probe: the feed-forward GEMM with its exact GELU in the epilogue (``sparkcurate.engine.linear_gelu``).

Run on the GPU machine: ``python3 -m benchmarks.probes.fused_gelu`` (~3 min on an H100).

Part 1 times ``gelu(x @ W.T + b)`` at DeBERTa-base's shape (x ``[65536, 768]`` and ``[49152, 768]`` fp16, W
``[3072, 768]``): cuBLAS's linear layer alone, cuBLAS + PyTorch's GELU (what the model runs), and the fused kernel
in several launch configs. Part 2 runs the engine's whole forward on the GPU-stage documents with the fused kernel
off and on (the fastest config of part 1), alternating, and prints docs/s and how far "on" is from "off".
"""

from __future__ import annotations

import os
import time

CONFIGS = (
    "128,256,64,8,8,3",
    "128,128,64,8,8,4",
    "128,128,64,8,8,3",
    "256,128,64,8,8,3",
    "128,128,128,8,8,3",
    "256,128,64,8,8,2",
)


def cuda_ms(fn, repeats: int = 20) -> float:
    import torch

    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def gemm_part() -> str:
    """Part 1; returns the fastest config (over both row counts)."""
    import torch
    import torch.nn.functional as F

    from sparkcurate.engine import linear_gelu

    torch.manual_seed(0)
    dense = torch.nn.Linear(768, 3072).to("cuda", torch.float16)
    totals: dict[str, float] = {}
    for rows in (65_536, 49_152):
        x = torch.randn(rows, 768, device="cuda", dtype=torch.float16)
        flops = 2 * rows * 768 * 3072
        with torch.inference_mode():
            base = cuda_ms(lambda: F.linear(x, dense.weight, dense.bias))
            both = cuda_ms(lambda: F.gelu(F.linear(x, dense.weight, dense.bias)))
            print(f"gemm rows {rows}: cuBLAS linear {base:.3f} ms ({flops / base / 1e9:.0f} TFLOP/s), "
                  f"+ GELU {both:.3f} ms", flush=True)
            want = F.gelu(F.linear(x, dense.weight, dense.bias)).float()
            for config in CONFIGS:
                os.environ[linear_gelu.CONFIG_ENV] = config
                try:
                    got = linear_gelu.linear_gelu(x, dense)
                    ms = cuda_ms(lambda: linear_gelu.linear_gelu(x, dense))
                except Exception as exc:  # a config that does not compile is a result
                    print(f"gemm rows {rows}: fused {config} FAILED {exc!r:.200}", flush=True)
                    totals[config] = float("inf")
                    continue
                diff = (got.float() - want).abs().max().item()
                totals[config] = totals.get(config, 0.0) + ms
                print(f"gemm rows {rows}: fused {config:18s} {ms:.3f} ms ({flops / ms / 1e9:.0f} TFLOP/s) "
                      f"vs cuBLAS + GELU {both:.3f}; max |diff| {diff:.2e}", flush=True)
    best = min(totals, key=totals.get)
    print(f"best config {best}", flush=True)
    return best


def forward_part(config: str, rounds: int = 2) -> None:
    import numpy as np
    import torch

    from benchmarks.gpu_stage import backbone_config, build_model, calibrate_head, load_docs
    from benchmarks.synthetic import DOMAIN, QUALITY, benchmark_tokenizer
    from sparkcurate.engine import linear_gelu
    from sparkcurate.engine.runner import EngineConfig, InferenceEngine

    os.environ[linear_gelu.CONFIG_ENV] = config
    tokenizer = benchmark_tokenizer()
    for mix, n in ((DOMAIN, 12000), (QUALITY, 6000)):
        docs = load_docs(mix, n, tokenizer, 0)
        model = build_model(backbone_config(False, len(tokenizer)), 0)
        calibrate_head(model, docs, torch.device("cuda"))
        engine = InferenceEngine(model, tokenizer, EngineConfig(max_tokens=docs.max_tokens, max_chars=docs.max_chars),
                                 device="cuda")
        tokens = engine.tokenize(docs.texts)
        first = None
        for round_ in range(rounds + 1):  # round 0 untimed (compiles)
            for setting in ("off", "auto"):
                os.environ[linear_gelu.FUSED_ENV] = setting
                torch.cuda.synchronize()
                start = time.perf_counter()
                probs = engine.predict_tokenized(tokens)
                torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                first = probs if first is None else first
                print(f"forward {mix.name:8s} round {round_} fused gelu {setting:4s} {n / seconds:8.1f} docs/s "
                      f"agree with off {float((probs.argmax(1) == first.argmax(1)).mean()):.4f} "
                      f"max|dp| {float(np.abs(probs - first).max()):.2e}", flush=True)


def main() -> None:
    forward_part(gemm_part())


if __name__ == "__main__":
    main()
