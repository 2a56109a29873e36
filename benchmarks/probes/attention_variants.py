"""Probe: variants of the tile attention kernel's p2c shear and register use, one layer and whole forward.

Run on the GPU machine: ``python3 -m benchmarks.probes.attention_variants`` (~7 min on an H100).

Why: compiled for sm_90 (Triton 3.6, ``ptxas -v``), the kernel uses 255 registers a thread and spills, so only two
4-warp programs fit an SM; the p2c term alone adds ~115 registers (its ``[2 * BLOCK, BLOCK]`` fp32 tile) and two
barriers a key tile. Each variant is a set of ``relative_attention.KERNEL_FLAGS`` (``SPARKCURATE_ATTENTION_FLAGS``)
and a launch config. Part 1 times one layer's attention per variant (``benchmarks.attention_kernel``'s harness, with
the relative error against strict fp32); part 2 runs the engine's whole forward on the GPU-stage documents for the
baseline and the three fastest variants of part 1, alternating, and prints docs/s and how far each variant's
probabilities are from the baseline's.
"""

from __future__ import annotations

import argparse
import os
import time

#: (name, SPARKCURATE_ATTENTION_FLAGS, SPARKCURATE_ATTENTION_CONFIG); the first is the baseline.
VARIANTS = (
    ("baseline", "", "64,64,4,3"),
    ("buffers2", "P2C_BUFFERS=2", "64,64,4,3"),
    ("split", "P2C_SPLIT=1", "64,64,4,3"),
    ("split+buffers2", "P2C_SPLIT=1,P2C_BUFFERS=2", "64,64,4,3"),
    ("split+buffers2+reg168", "P2C_SPLIT=1,P2C_BUFFERS=2,maxnreg=168", "64,64,4,3"),
    ("aligned+split+buffers2", "ALIGNED=1,P2C_SPLIT=1,P2C_BUFFERS=2", "64,64,4,3"),
    ("aligned+split+mask+buffers2", "ALIGNED=1,P2C_SPLIT=1,P2C_MASK=1,P2C_BUFFERS=2", "64,64,4,3"),
    ("reg168", "maxnreg=168", "64,64,4,3"),
    ("buffers2+reg168", "P2C_BUFFERS=2,maxnreg=168", "64,64,4,3"),
    ("split+buffers2 w8", "P2C_SPLIT=1,P2C_BUFFERS=2", "64,64,8,3"),
)


def use(flags: str, config: str) -> None:
    from sparkcurate.engine import relative_attention

    os.environ[relative_attention.FLAGS_ENV] = flags
    os.environ[relative_attention.CONFIG_ENV] = config


def one_layer(names: list[str], smoke: bool = False) -> dict[str, float]:
    """Part 1: milliseconds of one layer (domain + quality micro-batch of 65,536 tokens) per variant."""
    import torch

    from benchmarks.attention_kernel import build_layer, micro_batch_lengths, rel_err, time_call
    from benchmarks.synthetic import DOMAIN, QUALITY
    from sparkcurate.engine import packed
    from sparkcurate.engine.relative_attention import packed_attention

    device = torch.device("cpu" if smoke else "cuda")
    size = {"hidden": 64, "heads": 2} if smoke else {}
    model32, model16 = build_layer(device, **size).float(), build_layer(device, **size).to(torch.float16)
    width, budget = model32.config.hidden_size, 400 if smoke else 65_536
    batches = []
    use("", VARIANTS[0][2])
    with torch.inference_mode():
        for mix in (DOMAIN, QUALITY):
            lengths = micro_batch_lengths(mix, budget, 0)
            cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
            cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
            hidden32 = torch.randn(int(cu[-1]), width, generator=torch.Generator().manual_seed(0)).to(device)
            tables32, slots32 = packed._tile_tables_for(model32, max(lengths))
            want = packed_attention(tables32[0], hidden32, cu.to(device), max(lengths), slots32)
            tables, slots = packed._tile_tables_for(model16, max(lengths))
            batches.append((mix.name, tables[0], hidden32.half(), cu.to(device), max(lengths), slots, want))
    total = {}
    for name, flags, config in VARIANTS:
        if name not in names:
            continue
        use(flags, config)
        parts = []
        try:
            with torch.inference_mode():
                for mix_name, layer, hidden, cu_dev, longest, slots, want in batches:
                    def call():
                        return packed_attention(layer, hidden, cu_dev, longest, slots)
                    err = rel_err(call(), want)
                    parts.append((mix_name, time_call(call, 1 if smoke else 10, not smoke), err))
        except Exception as exc:  # a variant that does not compile is a result
            print(f"layer {name:30s} FAILED {exc!r:.300}", flush=True)
            continue
        total[name] = sum(ms for _, ms, _ in parts)
        print(f"layer {name:30s} " + " ".join(f"{m} {ms:.3f} ms (err {e:.2e})" for m, ms, e in parts), flush=True)
    return total


def whole_forward(names: list[str], rounds: int) -> None:
    """Part 2: the engine's docs/s per variant, alternating, with the probability difference to the baseline."""
    import numpy as np
    import torch

    from benchmarks.gpu_stage import backbone_config, build_model, calibrate_head, load_docs
    from benchmarks.synthetic import DOMAIN, QUALITY, benchmark_tokenizer
    from sparkcurate.engine.runner import EngineConfig, InferenceEngine

    tokenizer = benchmark_tokenizer()
    chosen = [v for v in VARIANTS if v[0] in names]
    for mix, n in ((DOMAIN, 12000), (QUALITY, 6000)):
        docs = load_docs(mix, n, tokenizer, 0)
        model = build_model(backbone_config(False, len(tokenizer)), 0)
        calibrate_head(model, docs, torch.device("cuda"))
        engine = InferenceEngine(model, tokenizer, EngineConfig(max_tokens=docs.max_tokens, max_chars=docs.max_chars),
                                 device="cuda")
        tokens = engine.tokenize(docs.texts)
        first = None
        for round_ in range(rounds + 1):  # round 0 untimed (compiles)
            for name, flags, config in chosen:
                use(flags, config)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                probs = engine.predict_tokenized(tokens)
                torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                first = probs if first is None else first
                print(f"forward {mix.name:8s} round {round_} {name:30s} {n / seconds:8.1f} docs/s "
                      f"peak {torch.cuda.max_memory_allocated() / 1e9:.2f} GB "
                      f"agree {float((probs.argmax(1) == first.argmax(1)).mean()):.4f} "
                      f"max|dp| {float(np.abs(probs - first).max()):.2e}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=[v[0] for v in VARIANTS])
    parser.add_argument("--forward-variants", type=int, default=3, help="fastest one-layer variants to run whole")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="part 1 only, on the CPU through Triton's interpreter")
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    times = one_layer(args.variants, args.smoke)
    if args.smoke:
        return
    ranked = sorted((name for name in times if name != VARIANTS[0][0]), key=times.get)
    whole_forward([VARIANTS[0][0], *ranked[: args.forward_variants]], args.rounds)


if __name__ == "__main__":
    main()
