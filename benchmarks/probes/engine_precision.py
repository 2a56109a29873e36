"""Probe (GPU): the engine's probability differences from fp32 under each of its precision choices, in one run.

Why: benchmarks/probes/precision_budget.py (CPU, emulated fp16) ranks the roundings that move the benchmark head's
probabilities; this measures the real engine's choices on the GPU, on gpu_stage's model, head and documents:

- ``head``: the classification head in fp32 (default: ``ClsHeadModel.fp32_children``) or fp16 (before);
- ``sum``: the residual sum before each LayerNorm kept in fp32 (default) or rounded to fp16 (before,
  ``residual_norm.ROUND_SUM``);
- ``gelu``: cuBLASLt's tanh GELU in the GEMM epilogue (default) or the exact GELU (``SPARKCURATE_GELU_EPILOGUE=off``).

Each combination: one warm-up and the median of three timed passes over the same tokens, with gpu_stage's agreement
measures against the padded fp32 forward. Run on the GPU machine from the repository root (~1 min on an H100)::

    python3 -m benchmarks.probes.engine_precision --docs 3000 --out $OUT/engine-precision.json
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("engine_precision")

# Most informative first: a call that runs out of time still reports the defaults against the previous defaults.
COMBOS = [
    dict(head="fp32", sum="fp32", gelu="tanh"),
    dict(head="fp16", sum="fp16", gelu="tanh"),
    dict(head="fp32", sum="fp32", gelu="exact"),
    dict(head="fp16", sum="fp16", gelu="exact"),
    dict(head="fp32", sum="fp16", gelu="tanh"),
    dict(head="fp16", sum="fp32", gelu="tanh"),
]


def apply(engine, fc32, combo: dict) -> None:
    """Set the engine to ``combo`` (the head's fp32 weights are restored from ``fc32``, never re-widened)."""
    import torch

    from sparkcurate.engine.kernels import residual_norm
    from sparkcurate.engine.kernels.gelu_epilogue import EPILOGUE_ENV

    fc = engine.model.fc.to(torch.float32)
    fc.load_state_dict(fc32)  # into fp32 parameters: loading into fp16 ones would round the copy
    if combo["head"] == "fp16":
        fc.to(torch.float16)
    residual_norm.ROUND_SUM = combo["sum"] == "fp16"
    os.environ[EPILOGUE_ENV] = "auto" if combo["gelu"] == "tanh" else "off"


def main(argv: list[str] | None = None) -> int:
    import torch

    from benchmarks.gpu_stage import (
        CALIBRATION, INIT_STD, agreement, arrival_batches, build_model, calibrate_head, collect, domain_setup,
        median_pass, run_padded, sync,
    )
    from sparkcurate.engine.runner import EngineConfig, InferenceEngine

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=3000, help="domain-mix documents compared (the first N of 12,000)")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--init-std", type=float, default=INIT_STD, help="std of the random backbone's matrices")
    p.add_argument("--combos", type=int, default=len(COMBOS), help="measure only the first N combinations")
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help="CPU, the tiny model, 24 documents: the code path only "
                   "(on the CPU the engine runs fp32 without the fused kernels, so every combination is the same)")
    args = p.parse_args(argv if argv is not None else sys.argv[1:])
    device = torch.device("cpu" if args.smoke else "cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference stays true fp32
    tokenizer, config, docs = domain_setup(args.smoke)
    if args.smoke:
        args.docs = min(args.docs, 24)
    base = build_model(config, 0, args.init_std)
    calibrate_head(base, docs, device)
    n = min(args.docs, len(docs.ids))
    model = copy.deepcopy(base).to(device, torch.float32)
    batches = arrival_batches(n, 64)
    ref = collect(run_padded(model, docs, batches, device)(batches), n)
    del model
    engine = InferenceEngine(copy.deepcopy(base), tokenizer,
                             EngineConfig(max_tokens=docs.max_tokens, max_chars=docs.max_chars), device=device)
    fc32 = {k: v.detach().clone() for k, v in engine.model.fc.state_dict().items()}
    assert all(v.dtype == torch.float32 for v in fc32.values()), "the engine converted its head"
    tokens = engine.tokenize(docs.texts[:n])
    rows = []
    card = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(device)
    out = dict(device=card, date=dt.date.today().isoformat(),
               command="python3 -m benchmarks.probes.engine_precision " + " ".join(argv or sys.argv[1:]),
               docs=n, tokens=int(tokens.lengths.sum()), reference="padded fp32 forward, batches of 64, no TF32",
               calibration=CALIBRATION, init_std=args.init_std, results=rows)
    for combo in COMBOS[:args.combos]:
        apply(engine, fc32, combo)
        engine.predict_tokenized(tokens)  # warm-up: this combination's kernels and GEMM configurations
        sync(device)
        probs, secs, passes = median_pass(lambda: engine.predict_tokenized(tokens), args.passes, device)
        row = dict(**combo, docs_per_s=round(n / secs, 1), pass_seconds=passes, **agreement(probs, ref))
        rows.append(row)
        log.info("head %s sum %s gelu %-5s %8.1f docs/s  agree %.4f  max %.4f  p99.9 %.4f  >1e-2 %.4f", row["head"],
                 row["sum"], row["gelu"], row["docs_per_s"], row["argmax_agreement"], row["max_prob_abs_diff"],
                 row["prob_abs_diff_p999"], row["prob_diff_over_1e2_fraction"])
        if args.out:  # after every combination: a call cut short keeps what it measured
            Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
