"""Probe: does making the GPU's context (and importing Triton) on a thread while torch imports shorten a fresh
worker's start? (issue 23, worker load)

Each row is a fresh interpreter, as a new Python worker: ``import torch``, then the device's context
(``torch.empty(1, device="cuda:0")``), then ``import triton``; timed from the interpreter's first line. Variants,
run in turn ``--repeats`` times (alternated, so drift hits all alike):

* ``none``: everything on the main thread, in that order (what a worker does without help);
* ``context``: a thread makes the primary context through the driver API (``libcuda`` by ctypes: ``cuInit``,
  ``cuDevicePrimaryCtxRetain``) from the first line, while torch imports;
* ``context_triton``: the same thread then imports Triton;
* ``triton``: a thread imports Triton only.

    python3 -m benchmarks.probes.early_cuda --repeats 3 --out $OUT/early-cuda.json

Prints and writes one JSON document: per variant the median (and every run) of ``import_torch_s``,
``context_s`` (what the main thread waited for the context after the import), ``triton_s`` and ``total_s``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

VARIANTS = ("none", "context", "context_triton", "triton")

CHILD = r"""
import time
t0 = time.perf_counter()
import json, sys, threading
variant = sys.argv[1]

def early():
    if variant in ("context", "context_triton"):
        import ctypes
        cuda = ctypes.CDLL("libcuda.so.1")
        dev, ctx = ctypes.c_int(), ctypes.c_void_p()
        cuda.cuInit(0); cuda.cuDeviceGet(ctypes.byref(dev), 0); cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev)
    if variant in ("context_triton", "triton"):
        import triton  # noqa: F401

thread = threading.Thread(target=early, daemon=True) if variant != "none" else None
if thread is not None:
    thread.start()
import torch
t1 = time.perf_counter()
torch.empty(1, device="cuda:0")
torch.cuda.synchronize()
t2 = time.perf_counter()
if thread is not None:
    thread.join()
import triton  # noqa: F401
t3 = time.perf_counter()
print(json.dumps({"import_torch_s": t1 - t0, "context_s": t2 - t1, "triton_s": t3 - t2, "total_s": t3 - t0}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            done = subprocess.run([sys.executable, "-c", CHILD, variant], capture_output=True, text=True,
                                  timeout=300, check=True)
            runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
    import torch

    summary = {v: {key: round(statistics.median(r[key] for r in rs), 3) for key in rs[0]} for v, rs in runs.items()}
    doc = {"device": torch.cuda.get_device_name(0), "date": date.today().isoformat(),
           "command": "python3 -m benchmarks.probes.early_cuda " + " ".join(argv or sys.argv[1:]),
           "medians": summary, "runs": {v: [{k: round(x, 3) for k, x in r.items()} for r in rs]
                                         for v, rs in runs.items()}}
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
