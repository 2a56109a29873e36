"""Probe: DeBERTa's intermediate projection + GELU as two kernels, or GELU in cuBLASLt's GEMM epilogue.

Run on the GPU machine: ``python3 -m benchmarks.probes.gelu_epilogue`` (~20 s on an H100). The question: the
engine's profile (benchmarks/NOTES.md, eighth round) spends 7% of the forward in PyTorch's GELU kernel, one read and
one write of the ``[tokens, 3072]`` intermediate; cuBLASLt can apply GELU in the GEMM's epilogue
(``torch._addmm_activation(..., use_gelu=True)``), but its GELU is the tanh approximation, not the exact erf
GELU DeBERTa uses. Prints the time of each form on a 65k-token micro-batch (DeBERTa-base shape) and how far each
is from the fp32 exact GELU, next to plain fp16 rounding's distance.
"""

from __future__ import annotations


def main() -> None:
    import torch
    import torch.nn.functional as F

    from benchmarks.attention_kernel import time_call

    torch.manual_seed(0)
    tokens, width, inner = 65_536, 768, 3072
    x32 = torch.randn(tokens, width, device="cuda")
    w32 = torch.randn(inner, width, device="cuda") * 0.05
    b32 = torch.randn(inner, device="cuda") * 0.05
    x, w, b = x32.half(), w32.half(), b32.half()
    want = F.gelu(F.linear(x.float(), w.float(), b.float()))
    forms = {
        "linear + exact gelu (engine today)": lambda: F.gelu(F.linear(x, w, b)),
        "linear + tanh gelu": lambda: F.gelu(F.linear(x, w, b), approximate="tanh"),
        "addmm with cuBLASLt gelu epilogue": lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True),
        "linear alone (no gelu)": lambda: F.linear(x, w, b),
    }
    with torch.inference_mode():
        for label, form in forms.items():
            got = form()
            ms = time_call(form, 50)
            err = (got.float() - want).abs()
            print(f"{label:40s} {ms:7.3f} ms   max abs err {err.max().item():.3e}   mean {err.mean().item():.3e}",
                  flush=True)


if __name__ == "__main__":
    main()
