"""Probe (CPU): which half-precision roundings move the benchmark head's probabilities, and by how much.

Why: the issue's "probabilities within 1e-2 of fp32" is the one target the engine has not met (benchmarks/NOTES.md,
ninth round: 2-4% of documents have some label further off, at most ~0.03). Whether any fp16 forward can meet it on
the benchmark's model, and which rounding to remove first, is a question of numerics, not of speed, so it is answered
here without a GPU: fp16 arithmetic runs at ~1 GFLOP/s on a CPU without fp16 units, fp32 at ~70, so each rounding of
a half-precision eager forward is *emulated*: every torch op runs in fp32 and its floating result is rounded to fp16
and back (a ``TorchFunctionMode``), matrix-product inputs are rounded as fp16 operands would be, and the weights are
rounded once. Products still accumulate in fp32, as cuBLAS's fp16 GEMMs do. Each variant then keeps one class of
values in fp32, and the per-document probability differences against the plain fp32 forward say what that class costs.

The model, documents and calibrated head are gpu_stage's (same seed, std and head), so the numbers are comparable to
the GPU rows of ``benchmarks/results``: the emulated ``fp16`` variant is Hugging Face's own fp16 forward, the
``engine`` variants keep the attention scores and softmax in fp32 as the engine's fused kernel does. transformers'
position helpers (log buckets) run unrounded: their float arithmetic is fp32 in a half-precision forward too.

Run from the repository root (2 CPU cores: ~11 min for the fp32 calibration, cached with ``--cache``; then 3-5 min a
variant on 128 documents, 10 for ``fp16``, whose attention tensors are all rounded)::

    python -m benchmarks.probes.precision_budget --eval-docs 128 --cache /tmp/calibrated.safetensors \
        --out benchmarks/results/<date>-cpu-precision-budget.json
    python -m benchmarks.probes.precision_budget --eval-docs 1024 --pick shortest --cache /tmp/calibrated.safetensors \
        --variants weights_only engine engine_exact_gelu_sum_head gemm_operands_only
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import logging
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

log = logging.getLogger("precision_budget")

# The modules whose adds and LayerNorms form the residual stream between sub-layers.
RESIDUAL_MODULES = ("DebertaV2SelfOutput", "DebertaV2Output")
ATTENTION_MODULES = ("DisentangledSelfAttention",)
HEAD_MODELS = ("ClsHeadModel", "ClsHead")


@dataclass(frozen=True)
class Variant:
    """Which values a half-precision forward would round, and which this variant keeps in fp32."""

    name: str
    doc: str
    round_weights: bool = True
    fp32_weights: str = ""  # regex: parameters whose names match keep every fp32 bit (with round_weights)
    round_activations: bool = True
    fp32_attention_inner: bool = False  # scores, position biases, softmax stay fp32 (Q/K/V and P@V inputs fp16)
    fp32_residual_sum: bool = False  # the add before each LayerNorm is not rounded (the LayerNorm output is)
    fp32_residual: bool = False  # residual adds and LayerNorm outputs stay fp32 (GEMM inputs still fp16)
    fp32_gemm_out: bool = False  # linear-layer outputs stay fp32 until their next use
    fp32_head: bool = False  # the classification head's weights and logits in fp32 (its input is rounded)
    tanh_gelu: bool = False  # the cuBLASLt epilogue's GELU


_ENGINE = dict(fp32_attention_inner=True)
VARIANTS = {v.name: v for v in (
    Variant("fp16", "every op's result and every weight in fp16 (Hugging Face's fp16 eager forward)"),
    Variant("weights_only", "fp16-rounded weights, fp32 activations", round_activations=False),
    Variant("engine", "as the engine today: attention scores and softmax in fp32, tanh GELU", tanh_gelu=True,
            **_ENGINE),
    Variant("engine_exact_gelu", "the engine with the exact GELU (SPARKCURATE_GELU_EPILOGUE=off)", **_ENGINE),
    Variant("engine_sum", "engine + the residual sum not rounded before LayerNorm", tanh_gelu=True,
            fp32_residual_sum=True, **_ENGINE),
    Variant("engine_head", "engine + an fp32 classification head", tanh_gelu=True, fp32_head=True, **_ENGINE),
    Variant("engine_sum_head", "engine + both", tanh_gelu=True, fp32_residual_sum=True, fp32_head=True, **_ENGINE),
    Variant("engine_exact_gelu_sum_head", "engine_sum_head with the exact GELU", fp32_residual_sum=True,
            fp32_head=True, **_ENGINE),
    Variant("engine_residual_head", "engine + the residual stream in fp32 + an fp32 head", tanh_gelu=True,
            fp32_residual=True, fp32_head=True, **_ENGINE),
    Variant("engine_exact_gelu_residual_head", "engine_residual_head with the exact GELU", fp32_residual=True,
            fp32_head=True, **_ENGINE),
    Variant("split_weights", "engine_exact_gelu_sum_head with fp32 weights (what fp16 hi + lo weight pairs leave)",
            round_weights=False, fp32_residual_sum=True, fp32_head=True, **_ENGINE),
    Variant("split_weights_tanh", "split_weights with the tanh GELU", round_weights=False, tanh_gelu=True,
            fp32_residual_sum=True, fp32_head=True, **_ENGINE),
    Variant("gemm_operands_only", "only weights and GEMM operands rounded (every output fp32), fp32 head",
            fp32_residual=True, fp32_gemm_out=True, fp32_head=True, **_ENGINE),
)}
DEFAULT_VARIANTS = ["engine", "engine_sum_head", "weights_only", "engine_exact_gelu", "engine_sum", "engine_head",
                    "engine_exact_gelu_sum_head", "engine_residual_head", "gemm_operands_only", "fp16"]

# Ops whose tensor operands are GEMM operands: fp16 on the GPU, so rounded here before the fp32 product.
_GEMM_NAMES = ("linear", "matmul", "bmm", "baddbmm", "addmm", "mm", "__matmul__")


def _round(t):
    import torch

    if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
        # Clamped to fp16's range: the fp32 forward masks with finfo(float32).min, the fp16 one with fp16's min.
        return t.clamp(-65504.0, 65504.0).to(torch.float16).to(torch.float32)
    return t


def rounding_mode(variant: Variant, stack: list[str]):
    """A TorchFunctionMode rounding each op's fp32 result to fp16 unless ``variant`` keeps that class in fp32."""
    import torch
    from torch.overrides import TorchFunctionMode

    class Fp16Rounding(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            gemm = name in _GEMM_NAMES
            projection = gemm and _is_projection(args)
            if gemm:  # operands are fp16 on the GPU; weights were rounded (or deliberately not) beforehand
                args = tuple(a if isinstance(a, torch.nn.Parameter) else _round(a) for a in args)
            out = func(*args, **kwargs)
            in_residual = any(m in RESIDUAL_MODULES for m in stack)
            in_attention = any(m in ATTENTION_MODULES for m in stack)
            residual_add = in_residual and name in ("add", "__add__")
            keep = (
                (variant.fp32_residual and in_residual and (residual_add or name == "layer_norm"))
                or (variant.fp32_residual_sum and residual_add)
                or (variant.fp32_attention_inner and in_attention and not projection)
                or (variant.fp32_gemm_out and gemm)
                or (variant.fp32_head and _in_head(stack))
                or bool(stack and stack[-1] in HEAD_MODELS)  # the head's softmax runs on .float() logits
            )
            if keep or not isinstance(out, torch.Tensor):
                return out
            return _round(out)

    return Fp16Rounding()


def _in_head(stack: list[str]) -> bool:
    """Inside the classification head: a Linear run directly by the head model (not by its backbone)."""
    return len(stack) >= 2 and stack[-2] in HEAD_MODELS and stack[-1] == "Linear"


def _is_projection(args) -> bool:
    """A linear layer's call (weights among its operands): its output is a stored fp16 tensor even in the kernel."""
    import torch

    return any(isinstance(a, torch.nn.Parameter) for a in args)


def _module_stack(model) -> tuple[list[str], list]:
    """Forward hooks that keep the class names of the modules being run, innermost last."""
    stack: list[str] = []
    handles = []
    for module in model.modules():
        cls = type(module).__name__
        handles.append(module.register_forward_pre_hook(lambda m, a, c=cls: stack.append(c) and None))
        handles.append(module.register_forward_hook(lambda m, a, o: stack.pop() and None))  # None: output kept
    return stack, handles


# transformers' position helpers: their float arithmetic (log-bucket boundaries, the score scale) does not depend on
# the model's dtype, so a half-precision forward computes it in fp32 as well; rounding it would move buckets.
_POSITION_HELPERS = ("make_log_bucket_position", "build_relative_position", "build_rpos", "scaled_size_sqrt")


@contextlib.contextmanager
def exact_position_helpers():
    """Run transformers' DeBERTa position helpers outside the rounding mode."""
    import torch
    from transformers.models.deberta_v2 import modeling_deberta_v2 as deberta

    def unrounded(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            with torch._C.DisableTorchFunction():
                return fn(*args, **kwargs)
        return call

    saved = {name: getattr(deberta, name) for name in _POSITION_HELPERS if hasattr(deberta, name)}
    try:
        for name, fn in saved.items():
            setattr(deberta, name, unrounded(fn))
        yield
    finally:
        for name, fn in saved.items():
            setattr(deberta, name, fn)


def _set_gelu(model, approximate: str) -> None:
    from torch import nn

    for module in model.modules():
        if type(module).__name__ == "DebertaV2Intermediate":
            module.intermediate_act_fn = nn.GELU(approximate=approximate)


def run_variant(model, docs, idx_batches, variant: Variant | None) -> np.ndarray:
    """[N, K] probabilities of the documents in ``idx_batches`` (concatenated in that order), on ``model``'s device."""
    import copy

    import torch

    from benchmarks.gpu_stage import pad_batch

    m = model
    device = next(model.parameters()).device
    if variant is not None and (variant.round_weights or variant.tanh_gelu):
        m = copy.deepcopy(model)
        if variant.round_weights:
            head = {id(p) for p in m.fc.parameters()} if variant.fp32_head else set()
            keep = re.compile(variant.fp32_weights) if variant.fp32_weights else None
            with torch.no_grad():
                for name, p in m.named_parameters():
                    if id(p) not in head and not (keep and keep.search(name)):
                        p.copy_(_round(p.data))
        if variant.tanh_gelu:
            _set_gelu(m, "tanh")
    stack, handles = _module_stack(m)
    outs = []
    try:
        with torch.inference_mode():
            for idx in idx_batches:
                ids, mask = (t.to(device) for t in pad_batch(docs, idx))
                if variant is not None and variant.round_activations:
                    with exact_position_helpers(), rounding_mode(variant, stack):
                        outs.append(m(ids, mask).float().cpu().numpy())
                else:
                    outs.append(m(ids, mask).float().cpu().numpy())
    finally:
        for h in handles:
            h.remove()
    return np.concatenate(outs)


def doc_diffs(probs: np.ndarray, ref: np.ndarray) -> dict:
    d = np.abs(probs - ref).max(axis=1)
    return dict(mean_doc_max_diff=float(d.mean()), p90=float(np.quantile(d, 0.9)), max=float(d.max()),
                over_1e2_fraction=float((d > 1e-2).mean()),
                argmax_agreement=float((probs.argmax(1) == ref.argmax(1)).mean()))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--eval-docs", type=int, default=128, help="domain-mix documents compared")
    p.add_argument("--pick", choices=("first", "shortest"), default="first",
                   help="the first N of gpu_stage's 12,000 documents (the head's calibration set), or the N shortest "
                        "(many documents for the CPU time of few: a wider search for the worst one)")
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    p.add_argument("--keep-fp32-weights", nargs="+", default=[], metavar="REGEX",
                   help="also run engine_exact_gelu_sum_head with the weights whose names match REGEX kept in fp32 "
                        "(one variant per REGEX, named keep32:REGEX): which layers need more than fp16 weights")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="where the emulation runs (cuda: minutes instead of an hour; "
                   "still fp32 arithmetic with TF32 off, so the same numbers up to summation order)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, help="safetensors file: reuse the calibrated model between runs")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--smoke", action="store_true", help="the tiny model and a few documents (seconds)")
    return p.parse_args(argv)


def build_calibrated(args, docs, config):
    """gpu_stage's model and head (same seed), optionally cached: the fp32 calibration is the slow part."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from benchmarks.gpu_stage import build_model, calibrate_head

    model = build_model(config, args.seed)
    made_by = {"seed": str(args.seed), "smoke": str(bool(args.smoke))}  # what the cached weights depend on
    if args.cache and Path(args.cache).exists():
        with safe_open(args.cache, "pt") as f:
            cached_by = f.metadata() or {}
        if cached_by != made_by:
            raise SystemExit(f"--cache {args.cache} holds a model made with {cached_by}, this run needs {made_by}: "
                             "pass another file")
        model.load_state_dict(load_file(args.cache))
        log.info("calibrated model from %s", args.cache)
        return model
    calibrate_head(model, docs, torch.device(args.device), measure_bf16_noise=False)
    if args.cache:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.cache, metadata=made_by)
    return model


def main(argv: list[str] | None = None) -> int:
    import torch

    from benchmarks.gpu_stage import MARGIN, domain_setup, sorted_batches

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv if argv is not None else sys.argv[1:])
    if args.threads:
        torch.set_num_threads(args.threads)
    _, config, docs = domain_setup(args.smoke, args.seed)
    if args.smoke:
        args.eval_docs = min(args.eval_docs, 24)
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference and the emulation stay true fp32
    model = build_calibrated(args, docs, config).to(args.device)
    n = min(args.eval_docs, len(docs.ids))
    picked = np.arange(n) if args.pick == "first" else np.argsort(docs.lengths, kind="stable")[:n]
    lengths = docs.lengths[picked]
    batches = [picked[b] for b in sorted_batches(lengths, 4096 if args.smoke else 16_384, padded=True, max_rows=32)]
    t0 = time.time()
    ref_cache = Path(f"{args.cache}.ref-{args.pick}{n}.npy") if args.cache else None
    if ref_cache is not None and ref_cache.exists():
        ref = np.load(ref_cache)
    else:
        ref = run_variant(model, docs, batches, None)
        if ref_cache is not None:
            np.save(ref_cache, ref)
    log.info("fp32 reference: %d docs in %.0f s", n, time.time() - t0)
    top2 = np.sort(ref, axis=1)[:, -2:]
    where = torch.cuda.get_device_name(model.fc.weight.device) if args.device.startswith("cuda") else "CPU"
    rows: list[dict] = []
    out = dict(date=dt.date.today().isoformat(), device=f"{where} (fp16 roundings emulated in fp32)",
               command="python -m benchmarks.probes.precision_budget " + " ".join(argv or sys.argv[1:]),
               docs=int(n), tokens=int(lengths.sum()),
               picked=f"the {args.pick} {n} of gpu_stage's 12,000 domain-mix documents",
               decisive_fraction=float(((top2[:, 1] - top2[:, 0]) >= MARGIN).mean()),
               results=rows)
    variants = [VARIANTS[name] for name in args.variants] + [
        replace(VARIANTS["engine_exact_gelu_sum_head"], name=f"keep32:{regex}", fp32_weights=regex,
                doc=f"engine_exact_gelu_sum_head with the weights matching {regex!r} in fp32")
        for regex in args.keep_fp32_weights]
    for variant in variants:
        name = variant.name
        t0 = time.time()
        probs = run_variant(model, docs, batches, variant)
        row = dict(name=name, doc=variant.doc, **doc_diffs(probs, ref), seconds=round(time.time() - t0, 1))
        log.info("%-40s mean %.2e  p90 %.2e  max %.2e  >1e-2 %.3f  argmax %.3f", name, row["mean_doc_max_diff"],
                 row["p90"], row["max"], row["over_1e2_fraction"], row["argmax_agreement"])
        rows.append(row)
        if args.out:  # after every variant: a run cut short keeps what it measured
            Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    if args.out:
        log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
