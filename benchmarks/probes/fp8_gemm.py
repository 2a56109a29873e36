"""Probe: would FP8 GEMMs pay on an H100, and would a trained classifier's predictions survive them? (issue 23)

Two questions, answered separately because the second needs no fast kernel:

1. **Speed** (``python3 -m benchmarks.probes.fp8_gemm --out $OUT/fp8-gemm.json``, ~1 minute on an H100): the four
   linear layers of a DeBERTa-base layer on a 65k-token micro-batch, fp16 ``F.linear`` (the engine today; the
   intermediate one with cuBLASLt's GELU epilogue, as the engine runs it) against ``torch._scaled_mm`` on e4m3
   operands with row-wise scales (one per token, one per output feature), with and without ``use_fast_accum``,
   and the per-token quantisation the activations would need (amax, scale, cast: PyTorch ops, unfused; a fused
   one would sit in the preceding kernel's epilogue). Each form's largest and mean error against the fp32 product
   is printed beside its milliseconds.
2. **Precision** (:func:`simulated_fp8_linears`, used by ``benchmarks.trained_precision --fp8-sim``): every linear
   layer of the engine whose output has at least ``MIN_OUT_FEATURES`` features takes e4m3-rounded operands with
   the same row-wise scales, multiplied exactly in fp32 (TF32 off) and rounded to the activations' dtype, which is
   what an FP8 tensor-core GEMM with fp32 accumulation returns. Everything else (attention, LayerNorm, the head's
   output layer) stays the fp16 engine's. The row is slow (fp32 GEMMs); only its agreement with fp32 is the
   measurement.

The precision target (trained model: argmax agreement >= 99.9%, no document more than 1e-2 from fp32) decides
whether FP8 is worth a fused kernel; the issue says to take FP8 only if it holds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger("fp8_gemm")

#: e4m3's largest finite value: a row's absolute maximum is scaled to it.
E4M3_MAX = 448.0
#: Linear layers with fewer output features (a classification head's output) keep the engine's own product.
MIN_OUT_FEATURES = 256
#: A DeBERTa-base layer's linear layers on one micro-batch: (name, tokens, in features, out features).
SHAPES = (("qkv", 65_536, 768, 2304), ("attention_out", 65_536, 768, 768), ("intermediate", 65_536, 768, 3072),
          ("output", 65_536, 3072, 768))


def quantize_rows(x, dim: int = -1):
    """``x`` as e4m3 values with one fp32 scale per row along ``dim`` (``x ~= q * scale``)."""
    import torch

    amax = x.abs().amax(dim=dim, keepdim=True).float().clamp(min=1e-12)
    scale = amax / E4M3_MAX
    q = (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scale


def fp8_product(x, weight, bias=None):
    """``x @ weight.T + bias`` as an FP8 GEMM with fp32 accumulation returns it: operands rounded to e4m3 with
    row-wise scales, the product exact in fp32 (TF32 off), the result in ``x``'s dtype."""
    import torch

    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    qx, sx = quantize_rows(x2)
    qw, sw = quantize_rows(weight)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        out = (qx.float() @ qw.float().t()) * sx * sw.t()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype).reshape(*shape[:-1], weight.shape[0])


@contextlib.contextmanager
def simulated_fp8_linears(min_out: int = MIN_OUT_FEATURES) -> Iterator[dict[str, int]]:
    """Within the block every ``F.linear`` with at least ``min_out`` output features, and the GELU-epilogue GEMM
    (``torch._addmm_activation``), computes :func:`fp8_product`; yields counters of the calls taken and left."""
    import torch
    import torch.nn.functional as F

    calls = {"fp8": 0, "kept": 0}
    linear, addmm_activation = F.linear, torch._addmm_activation

    def fp8_linear(x, weight, bias=None):
        if not hasattr(weight, "shape") or weight.dim() != 2 or weight.shape[0] < min_out:
            calls["kept"] += 1
            return linear(x, weight, bias)
        calls["fp8"] += 1
        return fp8_product(x, weight, bias)

    def fp8_addmm_activation(bias, x, weight_t, beta=1, alpha=1, use_gelu=False):
        calls["fp8"] += 1
        out = fp8_product(x, weight_t.t(), bias)
        return F.gelu(out.float(), approximate="tanh").to(out.dtype) if use_gelu else F.relu(out)

    F.linear, torch._addmm_activation = fp8_linear, fp8_addmm_activation
    try:
        yield calls
    finally:
        F.linear, torch._addmm_activation = linear, addmm_activation


def _forms(x, w, b, gelu: bool) -> dict[str, Callable[[], Any]]:
    """The products timed for one shape: fp16 today, and the FP8 GEMM from pre-quantised operands."""
    import torch
    import torch.nn.functional as F

    qx, sx = quantize_rows(x)
    qw, sw = quantize_rows(w)
    today = (lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True)) if gelu else (lambda: F.linear(x, w, b))
    forms = {"fp16 (engine today)": today}
    for out_dtype in (torch.float16, torch.bfloat16):
        for fast in (False, True):
            name = f"fp8 rowwise -> {str(out_dtype).split('.')[-1]}{' fast-accum' if fast else ''}"
            forms[name] = (lambda o=out_dtype, f=fast: torch._scaled_mm(qx, qw.t(), scale_a=sx, scale_b=sw.t(),
                                                                        bias=b.to(o), out_dtype=o, use_fast_accum=f))
    forms["quantize activations (amax, scale, cast)"] = lambda: quantize_rows(x)
    return forms


def measure(repeats: int) -> list[dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    from benchmarks.attention_kernel import time_call

    torch.manual_seed(0)
    rows = []
    for name, tokens, k, n in SHAPES:
        x32 = torch.randn(tokens, k, device="cuda")
        w32 = torch.randn(n, k, device="cuda") * 0.05
        b32 = torch.randn(n, device="cuda") * 0.05
        x, w, b = x32.half(), w32.half(), b32.half()
        gelu = name == "intermediate"
        want = F.linear(x32, w32, b32)
        want = F.gelu(want) if gelu else want
        with torch.inference_mode():
            for form, fn in _forms(x, w, b, gelu).items():
                entry: dict[str, Any] = {"shape": name, "tokens": tokens, "in": k, "out": n, "form": form}
                try:
                    ms = time_call(fn, repeats)
                    got = fn()
                except Exception as exc:  # an unsupported dtype combination is a result, not a failure
                    entry["error"] = f"{type(exc).__name__}: {exc}"[:300]
                    log.info("%-14s %-44s %s", name, form, entry["error"])
                    rows.append(entry)
                    continue
                entry["ms"] = round(ms, 4)
                entry["tflops"] = round(2 * tokens * k * n / ms / 1e9, 1)
                if form.startswith("fp8"):
                    got = F.gelu(got.float()) if gelu else got
                if not form.startswith("quantize"):
                    err = (got.float() - want).abs()
                    entry.update(max_abs_err=float(err.max()), mean_abs_err=float(err.mean()))
                log.info("%-14s %-44s %8.3f ms %7.1f TFLOP/s %s", name, form, ms, entry["tflops"],
                         f"mean err {entry['mean_abs_err']:.3e}" if "mean_abs_err" in entry else "")
                rows.append(entry)
    return rows


def layer_totals(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Milliseconds of one layer's four products per form (a form missing for a shape is left out)."""
    totals: dict[str, list[float]] = {}
    for r in rows:
        if "ms" in r:
            totals.setdefault(r["form"], []).append(r["ms"])
    return {form: round(sum(ms), 4) for form, ms in totals.items() if len(ms) == len(SHAPES)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, help="results JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    rows = measure(args.repeats)
    result = {"card": torch.cuda.get_device_name(), "torch": torch.__version__,
              "command": "python3 -m benchmarks.probes.fp8_gemm" + (f" --repeats {args.repeats}"),
              "rows": rows, "layer_ms": layer_totals(rows)}
    log.info("one layer's products: %s", json.dumps(result["layer_ms"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
