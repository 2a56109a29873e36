"""Probe (GPU): how to multiply fp16 activations by an fp32 weight kept as an fp16 pair, exactly and fast.

Why: ``precision="fp16-split"`` (sparkcurate/engine/kernels/split_weights.py) needs ``x @ (hi + lo).T`` rounded once, as an
fp32-weight product would be. For each linear shape of DeBERTa-base (65,536 rows) this measures the share of outputs
that equal the correctly rounded fp32-weight product (float64 reference) and the time (median of 20 calls) of:

- ``fp16``: plain fp16 weights (what the fp16 engine does);
- ``two_gemm_beta_c``: ``addmm(x @ lo.T * 2**-11, x, hi.T)``, the second product added through cuBLAS's ``beta * C``;
- ``doubled_k``: one GEMM over ``[x, x * 2**-11] @ [hi, lo].T`` (the engine's choice), copy of ``x`` included;
- ``two_gemm_fp32_out``: both products with fp32 outputs (``torch.mm(..., out_dtype=torch.float32)``), summed, rounded.

Run on the GPU machine from the repository root (seconds)::

    python3 -m benchmarks.probes.split_gemm --out $OUT/split-gemm.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

SHAPES = {"attention (768 -> 768)": (768, 768), "intermediate (768 -> 3072)": (3072, 768),
          "output (3072 -> 768)": (768, 3072)}


def main(argv: list[str] | None = None) -> int:
    import torch

    from benchmarks.attention_kernel import time_call
    from sparkcurate.engine.kernels.split_weights import LO_SHIFT, linear, split

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=65_536)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv if argv is not None else sys.argv[1:])
    gen = torch.Generator(device="cuda").manual_seed(0)
    scale = 2.0**-LO_SHIFT
    rows = []
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device="cuda", generator=gen) * 0.05
        x = torch.randn(args.rows, k, device="cuda", generator=gen).half()
        want = (x.double() @ w.double().T).half()
        pair = split(w, torch.float16)
        hi, lo, plain = pair.hi.contiguous(), pair.lo.contiguous(), w.half()
        ways = {
            "fp16": lambda: torch.mm(x, plain.t()),
            "two_gemm_beta_c": lambda: torch.addmm(torch.mm(x, lo.t()).mul_(scale), x, hi.t()),
            "doubled_k": lambda: linear(x, pair),
            "two_gemm_fp32_out": lambda: (torch.mm(x, hi.t(), out_dtype=torch.float32)
                                          + torch.mm(x, lo.t(), out_dtype=torch.float32).mul_(scale)).half(),
        }
        for way, fn in ways.items():
            rows.append(dict(shape=name, way=way, correctly_rounded=round((fn() == want).float().mean().item(), 4),
                             ms=round(time_call(fn, 20), 4)))
            row = rows[-1]
            print(f"{name:28s} {way:18s} correctly rounded {row['correctly_rounded']:.4f}  {row['ms']:.3f} ms",
                  flush=True)
    if args.out:
        out = dict(device=torch.cuda.get_device_name(), date=dt.date.today().isoformat(), torch=torch.__version__,
                   command="python3 -m benchmarks.probes.split_gemm " + " ".join(argv or sys.argv[1:]),
                   rows_per_gemm=args.rows, weights="N(0, 0.05) fp32", activations="N(0, 1) fp16", results=rows)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
