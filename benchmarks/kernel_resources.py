"""Registers, spills, shared memory and load pipelining of this package's Triton kernels for a GPU, on any machine.

Why: a GPU call is scarce, and the attention kernel's speed is ruled by what the compiler makes of it (seventh
round, benchmarks/NOTES.md: 255 registers a thread and unpipelined loads once the p2c term is in). Triton compiles
for a target GPU without one being present, and its wheel brings NVIDIA's ``ptxas``, whose ``-v`` report gives the
per-thread registers and spills; the TTGIR shows whether loads became asynchronous copies (pipelined) and how many
barriers the loop has. Compile with the Triton version the GPU machine runs (3.6.0 there) for numbers that match.

    python -m benchmarks.kernel_resources                                 # the attention kernel, default config
    python -m benchmarks.kernel_resources --config 64,64,4,3 32,32,4,2 --no-p2c
    python -m benchmarks.kernel_resources --kernel residual_norm
    python -m benchmarks.kernel_resources --kernel attention_smem          # the Gluon kernel (Hopper only)

Prints one JSON object per compiled variant. Launch arguments that Triton specializes at run time (pointers and
integers divisible by 16) are declared so here, as the launcher would see them for DeBERTa-base: without that
nothing vectorizes or pipelines and the numbers mislead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

#: Arguments of the attention kernel that are 16-divisible at DeBERTa-base's launch (strides 2304, pitches).
ATTENTION_ALIGNED = {"query", "key", "value", "pos_key", "pos_query", "slots", "cu_seqlens", "output", "scratch",
                     "stride_q", "stride_k", "stride_v", "band_pitch", "position_rows"}
NORM_ALIGNED = {"x", "residual", "weight", "bias", "out", "width", "stride_x", "stride_r", "stride_o"}


def _ptxas_report(ptx: str, arch: int) -> dict:
    """``ptxas -v`` of the PTX with the first bundled ptxas that accepts its version: registers, spills, stack."""
    import triton

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_text(ptx)
        errors = []
        for name in ("ptxas", "ptxas-blackwell"):
            tool = bin_dir / name
            if not tool.exists():
                continue
            done = subprocess.run([str(tool), "-v", f"--gpu-name=sm_{arch}a", str(source), "-o", os.devnull],
                                  capture_output=True, text=True)
            if done.returncode == 0:
                text = done.stderr
                numbers = {key: int(m.group(1)) for key, pattern in (
                    ("registers", r"Used (\d+) registers"), ("spill_store_bytes", r"(\d+) bytes spill stores"),
                    ("spill_load_bytes", r"(\d+) bytes spill loads"), ("stack_bytes", r"(\d+) bytes stack frame"))
                    for m in [re.search(pattern, text)] if m}
                return {"ptxas": name, **numbers}
            errors.append(f"{name}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    raise RuntimeError("no bundled ptxas accepted the PTX: " + "; ".join(errors) if errors else "no ptxas found")


def compile_report(fn, types: dict[str, str], constexprs: dict, aligned: set[str], warps: int, stages: int,
                   arch: int = 90) -> dict:
    """Compile ``fn`` for ``sm_<arch>`` with the given argument types and constexprs; what the compiler made of it."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if getattr(fn, "is_gluon", lambda: False)():  # a Gluon kernel: its own front end
        from triton.experimental.gluon._runtime import GluonASTSource as ASTSource  # noqa: N814
    names = fn.arg_names
    signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if n in aligned}
    source = ASTSource(fn=fn, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()},
                       attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": warps, "num_stages": stages})
    ttgir = compiled.asm["ttgir"]
    return {
        **_ptxas_report(compiled.asm["ptx"], arch),
        "shared_bytes": compiled.metadata.shared,
        "async_copies": ttgir.count("async_copy_global_to_local"),
        "barriers": len(re.findall(r"\b(?:gpu|ttg)\.barrier\b", ttgir)),
        "mma_ops": len(re.findall(r"\b(?:warp_group_dot|tt\.dot)\b", ttgir)),  # \b excludes "..._wait"
        "triton": triton.__version__,
    }


def attention(config: tuple[int, int, int, int], c2p: bool, p2c: bool, arch: int) -> dict:
    from sparkcurate.engine.kernels import relative_attention

    block_m, block_n, warps, stages = config
    half = "*fp16"
    types = {n: half for n in ("query", "key", "value", "pos_key", "pos_query", "output", "scratch")}
    types.update(slots="*i32", cu_seqlens="*i32", score_scale="fp32")
    constexprs = dict(HEAD_DIM=64, BLOCK_M=block_m, BLOCK_N=block_n, HAS_C2P=c2p, HAS_P2C=p2c, IEEE=False,
                      SCRATCH=True)
    report = compile_report(relative_attention._kernel(), types, constexprs, ATTENTION_ALIGNED, warps, stages, arch)
    return {"kernel": "attention", "config": list(config), "c2p": c2p, "p2c": p2c, **report}


def attention_smem(c2p: bool, p2c: bool, arch: int) -> dict:
    """The shared-memory (Gluon, Hopper) attention kernel: one launch config, fp16."""
    from sparkcurate.engine.kernels import relative_attention_smem as smem

    types = {n: "*fp16" for n in ("query", "key", "value", "pos_key", "pos_query", "output")}
    types.update(slots="*i32", cu_seqlens="*i32", score_scale="fp32")
    constexprs = dict(HEAD_DIM=64, BLOCK=smem.BLOCK, NUM_WARPS=smem.NUM_WARPS, HAS_C2P=c2p, HAS_P2C=p2c,
                      SCALAR_ACC=smem.scalar_mma_layout(smem.BLOCK, smem.BLOCK, smem.NUM_WARPS),
                      C2P_SHEAR=smem.shear_layouts(smem.SHEAR_PADS[0]), P2C_SHEAR=smem.shear_layouts(smem.SHEAR_PADS[1]))
    aligned = {"query", "key", "value", "pos_key", "pos_query", "slots", "cu_seqlens", "output", "stride_qkv",
               "position_rows"}
    report = compile_report(smem._kernel(), types, constexprs, aligned, smem.NUM_WARPS, 1, arch)
    return {"kernel": "attention_smem", "config": [smem.BLOCK, smem.BLOCK, smem.NUM_WARPS], "c2p": c2p, "p2c": p2c,
            "shear_pads": list(smem.SHEAR_PADS), **report}


def residual_norm(arch: int) -> dict:
    from sparkcurate.engine.kernels import residual_norm as module

    types = {n: "*fp16" for n in ("x", "residual", "weight", "bias", "out")}
    types["eps"] = "fp32"
    report = compile_report(module._kernel(), types, {"BLOCK": 1024, "ROWS": 4}, NORM_ALIGNED, 4, 1, arch)
    return {"kernel": "residual_norm", "width": 768, **report}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernel", choices=["attention", "attention_smem", "residual_norm"], default="attention")
    p.add_argument("--config", nargs="+", default=None, help="BLOCK_M,BLOCK_N,num_warps,num_stages (attention)")
    p.add_argument("--no-c2p", action="store_true")
    p.add_argument("--no-p2c", action="store_true")
    p.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for H100/H200")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET"):
        print("unset TRITON_INTERPRET: the interpreter compiles nothing", file=sys.stderr)
        return 2
    if args.kernel == "residual_norm":
        print(json.dumps(residual_norm(args.arch)))
        return 0
    if args.kernel == "attention_smem":
        from sparkcurate.engine.kernels.relative_attention_smem import gluon_problem

        if gluon_problem():
            print(gluon_problem(), file=sys.stderr)
            return 2
        print(json.dumps(attention_smem(not args.no_c2p, not args.no_p2c, args.arch)))
        return 0
    from sparkcurate.engine.kernels.relative_attention import LAUNCH_CONFIGS

    configs = [tuple(int(x) for x in c.split(",")) for c in args.config] if args.config else [LAUNCH_CONFIGS[64]]
    for config in configs:
        print(json.dumps(attention(config, not args.no_c2p, not args.no_p2c, args.arch)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
