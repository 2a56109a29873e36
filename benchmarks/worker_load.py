"""Where a fresh Python worker's model load goes, for the lean load and transformers' load side by side.

Why: in a fresh Spark application every Python worker pays these once before its GPU does any work, and with
one task per GPU that time does not shrink when GPUs are added (benchmarks/NOTES.md, scaling). Issue 23's target:
the load, imports included, <= 3 s. Each path runs in its own new interpreter (imports cold in it; the first one
also meets the coldest page cache, so the lean path goes first), as a worker runs it: the classifier as the driver
ships it (fingerprint set), then resolve + fingerprint, ``load_model``, ``make_engine``, two predicts.

    python3 -m benchmarks.worker_load

Rows: ``lean`` (``SPARKCURATE_LEAN_LOAD=on``: this package's DeBERTa modules, ``tokenizer.json`` via tokenizers),
``full`` (``=off``: transformers' modules and ``AutoTokenizer``; its DeBERTa import timed apart, as before), each
with an empty Triton cache (the first batch compiles the kernels: a fresh machine), and ``lean_triton_cached``: the
lean path again on the cache the first row filled (a second worker on the same node, or a cache kept on the node's
disk). Writes one JSON document (device, date, command, rows of phase -> seconds, and how far each lean row's
first-batch probabilities are from the full row's) to ``--out`` (default
``benchmarks/results/<date>-<card>-worker-load.json``) and prints it. The checkpoint is DeBERTa-v3-base-shaped
(``--smoke``: tiny), written first; writing it is not part of a load. On a machine without CUDA the rows run on the
CPU in fp32 (imports and CPU load only; the lean row is forced on there).

The phases after the imports are the steps of ``DistributedDataClassifier.load_engine``: from ``cuda_init`` (now the
driver's init, ``torch.cuda.is_available``) the device's context is created on a thread (``CudaStart``), overlapping
the checkpoint's read and ``import_packed_kernels`` (Triton, Gluon); ``cuda_init_wait`` is what is left of it, and
``cuda_context_thread_s`` its own time (not a phase: it overlaps them).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROWS = ("lean", "full", "lean_triton_cached")
TEXTS = ["word " * n for n in (50, 200, 400, 500)] * 8


class Phases:
    """Seconds between successive marks."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.last, 3)
        self.last = now

    def since_start(self) -> float:
        return round(time.perf_counter() - self.start, 3)


def child(model: str, fingerprint: str, path: str) -> dict:
    """One worker's load in this (fresh) interpreter: phase -> seconds and what was loaded."""
    phases = Phases()
    import numpy  # noqa: F401
    import pyarrow  # noqa: F401

    phases.mark("import_numpy_pyarrow")
    import torch

    phases.mark("import_torch")
    from sparkcurate.classifiers import DomainClassifier
    from sparkcurate.classifiers.base import artifacts_fingerprint
    from sparkcurate.engine.runner import InferenceEngine, import_packed_kernels  # noqa: F401  (the stage's imports)
    from sparkcurate.spark.devices import CudaStart

    phases.mark("import_sparkcurate")
    # From here on the steps of DistributedDataClassifier.load_engine, each timed (keep the two in step).
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    cuda = CudaStart(device)  # the context is created on a thread; "cuda_init" is now the driver's init alone
    if device != "cpu":
        phases.mark("cuda_init")
    if path == "full":
        from transformers.models.deberta_v2 import modeling_deberta_v2  # noqa: F401

        phases.mark("import_transformers_deberta")
    clf = DomainClassifier(model=model, device="auto")
    clf.model_fingerprint = fingerprint  # as the driver's pre-flight ships it
    model_dir = clf.resolve_dir()
    if artifacts_fingerprint(model_dir) != fingerprint:
        raise SystemExit("the checkpoint changed between the parent and this child")
    phases.mark("resolve_and_fingerprint")
    module, tokenizer = clf.load_model(model_dir, [], device)
    phases.mark("load_model_build_weights_tokenizer")
    import_packed_kernels(module, device, clf.packed)
    phases.mark("import_packed_kernels")
    cuda.wait()
    if device != "cpu":
        phases.mark("cuda_init_wait")
    engine = clf.make_engine(module, tokenizer, device)
    phases.mark("engine_to_device")
    load_total = phases.since_start()
    outputs = engine.predict(TEXTS)
    if device != "cpu":
        torch.cuda.synchronize()
    phases.mark("first_predict_kernel_compile_or_cache_load")
    first_result = phases.since_start()
    engine.predict(TEXTS)
    if device != "cpu":
        torch.cuda.synchronize()
    phases.mark("second_predict")
    return {
        "device": device,
        "card": torch.cuda.get_device_name(0) if device != "cpu" else "cpu",
        "seconds": phases.seconds,
        "cuda_context_thread_s": round(cuda.seconds, 3),  # overlapped: not a phase; cuda_init_wait is what is left
        "load_total_s": load_total,
        "to_first_result_s": first_result,
        "backbone": f"{type(module.model).__module__}.{type(module.model).__qualname__}",
        "tokenizer": type(tokenizer).__name__,
        "transformers_modules_imported": sum(1 for m in sys.modules if m.split(".")[0] == "transformers"),
        "kernels": engine.active_kernels(),
        "outputs": outputs.round(6).tolist(),
    }


def run_row(row: str, model: str, fingerprint: str, triton_cache: Path) -> dict:
    """One row in a new interpreter, with its switch and Triton cache directory."""
    path = "full" if row == "full" else "lean"
    env = {**os.environ, "SPARKCURATE_LEAN_LOAD": "off" if path == "full" else "on",
           "TRITON_CACHE_DIR": str(triton_cache), "PYTHONPATH": os.pathsep.join(
               p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "benchmarks.worker_load", "--child", path, "--model", model,
                           "--fingerprint", fingerprint], capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        return {"name": row, "error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"name": row, **result, "process_s": round(time.perf_counter() - started, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny checkpoint (CPU tests of the harness)")
    parser.add_argument("--out", default=None, help="the JSON file to write")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--child", choices=("lean", "full"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--fingerprint", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.model, args.fingerprint, args.child)))
        return 0
    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; rows are {', '.join(ROWS)}")
    from benchmarks.spark_e2e import write_checkpoint
    from sparkcurate.classifiers.base import artifacts_fingerprint

    work = Path(tempfile.mkdtemp(prefix="worker-load-"))
    started = time.perf_counter()
    ckpt = write_checkpoint(work / "model", smoke=args.smoke)
    write_s = round(time.perf_counter() - started, 3)
    fingerprint = artifacts_fingerprint(ckpt)
    caches = {"lean": work / "triton-lean", "full": work / "triton-full", "lean_triton_cached": work / "triton-lean"}
    results = [run_row(row, str(ckpt), fingerprint, caches[row]) for row in rows]
    import numpy as np  # here, not at the top: a child times its own numpy import

    card = next((r["card"] for r in results if "card" in r), "cpu")
    outputs = {r["name"]: np.asarray(r.pop("outputs")) for r in results if "outputs" in r}
    agreement = {f"{name}_vs_full": {"max_abs_diff": float(np.abs(out - outputs["full"]).max()),
                                     "argmax_agreement": float((out.argmax(1) == outputs["full"].argmax(1)).mean())}
                 for name, out in outputs.items() if name != "full" and "full" in outputs}
    doc = {"device": card, "date": date.today().isoformat(),
           "command": "python3 -m benchmarks.worker_load " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
           "checkpoint": "tiny (smoke)" if args.smoke else "DeBERTa-v3-base-shaped, 26 labels",
           "write_checkpoint_not_part_of_a_load_s": write_s,
           "target": "load in a worker, imports included (load_total_s) <= 3 s (issue 23)",
           "results": results, "outputs_agreement": agreement}
    name = "cpu-smoke" if args.smoke else card.replace(" ", "-")
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / \
        f"{doc['date']}-{name}-worker-load.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    print(f"-> {out}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
