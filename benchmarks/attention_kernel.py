"""One layer's packed DeBERTa attention: this package's tile kernel against disentangled-flash.

Why: the attention was 43% of the packed forward on an H100 (NOTES.md, third round). This times
one DeBERTa-v3-base attention layer (Q/K/V projection + relative-position scores + softmax + values,
i.e. everything ``packed_attention`` / ``forward_packed`` do) on micro-batches of the domain and
quality length mixes, for several launch configs of the tile kernel, and checks both against a
strict-fp32 run of the same layer.

    python3 -m benchmarks.attention_kernel                     # GPU; writes results/<date>-<card>-attention.json
    python3 -m benchmarks.attention_kernel --configs 64,64,4,2 32,32,4,2
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger("attention_kernel")

DEFAULT_CONFIGS = ["64,64,4,2", "64,64,8,2", "32,32,2,2", "32,32,4,2"]


def micro_batch_lengths(mix, budget: int, seed: int) -> list[int]:
    """Lengths of one micro-batch of ``budget`` tokens drawn from a mix (sorted, as the engine sorts)."""
    from benchmarks.synthetic import sample_token_lengths

    lengths = sample_token_lengths(4 * budget // 300, mix, seed=seed)
    out, total = [], 0
    for n in lengths:
        if total + int(n) > budget:
            break
        out.append(int(n))
        total += int(n)
    return sorted(out)


def build_layer(device, seed: int = 0, hidden: int = 768, heads: int = 12):
    """One layer of a DeBERTa-v3-base-shaped random backbone (std 0.05, as gpu_stage); smaller for the CPU test."""
    import torch
    from transformers import DebertaV2Config, DebertaV2Model

    config = DebertaV2Config(
        vocab_size=1000, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=heads, intermediate_size=3072,
        max_position_embeddings=512, relative_attention=True, position_buckets=256, max_relative_positions=-1,
        pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False,
        type_vocab_size=0,
    )
    torch.manual_seed(seed)
    model = DebertaV2Model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.05)
    return model.to(device)


def time_call(fn, repeats: int, on_cuda: bool = True) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` timed calls (after 3 warm calls): CUDA events on a GPU,
    the wall clock elsewhere (Triton's CPU interpreter, for the harness's own test)."""
    import time

    import torch

    for _ in range(3 if on_cuda else 1):
        fn()
    times = []
    for _ in range(repeats):
        if not on_cuda:
            start_s = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - start_s))
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def rel_err(got, want) -> float:
    return float(((got.float() - want.float()).norm() / want.float().norm()).item())


def bench_mix(name, mix, args, model_half, model_fp32, device) -> list[dict]:
    import torch

    from sparkcurate.engine.kernels import dflash_attention, relative_attention, relative_attention_smem
    from sparkcurate.engine.kernels.backends import PackedInfo
    from sparkcurate.engine.kernels.relative_attention import packed_attention

    default_pads = relative_attention_smem.SHEAR_PADS
    lengths = micro_batch_lengths(mix, args.budget, args.seed)
    total, longest = sum(lengths), max(lengths)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    cu_dev = cu.to(device)
    info = PackedInfo(tuple(cu.tolist()), tuple(lengths), longest)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    width = model_half.config.hidden_size
    hidden32 = torch.randn(total, width, generator=gen).to(device)
    hidden = hidden32.to(args.dtype)
    flops = sum(4 * n * n * width + 4 * n * 512 * width for n in lengths) + 2 * total * width * 3 * width
    rows = []
    with torch.inference_mode():
        tables32, slots32 = relative_attention.tile_tables_for(model_fp32, longest)
        want = packed_attention(tables32[0], hidden32, cu_dev, longest, slots32)
        tables, slots = relative_attention.tile_tables_for(model_half, longest)
        variants = [(c, shear, pps, fp32, "both") for c in args.configs for shear in args.shears
                    for pps in args.programs_per_sm for fp32 in args.scratch_fp32
                    if shear == "scratch" or (shear == "gather" and not fp32 and pps == args.programs_per_sm[0])]
        if "smem" in args.shears:  # the shared-memory kernel has one launch config, and its shear pads
            variants += [(pads or "smem", "smem", None, False, "both") for pads in args.smem_pads]
        if args.ablation:  # what the position terms cost
            first = next(v for v in variants if v[1] == args.shears[0])[:4]
            variants += [(*first, "content"), (*first, "c2p")]
        for config, shear, pps, fp32, terms in variants:
            parts = None if shear == "smem" else tuple(int(x) for x in config.split(","))
            layer = tables[0]
            if terms != "both":
                layer = dataclasses.replace(layer, pos_query=None, pos_key=None if terms == "content" else layer.pos_key)
            relative_attention.SCRATCH_FP32 = fp32
            if shear == "smem" and config != "smem":
                relative_attention_smem.SHEAR_PADS = tuple(int(x) for x in config.split(","))

            def call():
                return packed_attention(layer, hidden, cu_dev, longest, slots, config=parts, shear=shear,
                                        programs_per_sm=pps)
            try:
                got = call()
                ms = time_call(call, args.repeats, device.type == "cuda")
            except Exception as exc:  # a config that does not compile is a result, not a crash
                log.warning("%s config %s failed: %s", name, config, exc)
                rows.append({"mix": name, "impl": "triton", "config": config, "shear": shear, "error": repr(exc)[:300]})
                continue
            finally:
                relative_attention.SCRATCH_FP32 = False
                relative_attention_smem.SHEAR_PADS = default_pads
            rows.append({"mix": name, "impl": "triton", "config": config, "shear": shear, "programs_per_sm": pps,
                         "scratch_fp32": fp32, "terms": terms, "ms": ms, "tokens": total, "tflops": flops / ms / 1e9,
                         "rel_err_vs_fp32": rel_err(got, want) if terms == "both" else None})
            log.info("%s triton %s %s pps=%s fp32=%s terms=%s: %.3f ms, %.1f TFLOP/s, rel err %s", name, config,
                     shear, pps, fp32, terms, ms, rows[-1]["tflops"], rows[-1]["rel_err_vs_fp32"])
        if device.type == "cuda" and dflash_attention.dflash_problem() is None:
            from disentangled_flash.packed import PackedSequenceInfo

            dinfo = PackedSequenceInfo(info.offsets, info.lengths, info.max_seqlen)
            wrapper = dflash_attention.attentions_for(model_half, "triton")[0]

            def dflash():
                return wrapper.forward_packed(hidden, cu_dev, longest, packed_info=dinfo)[0]

            got = dflash()
            ms = time_call(dflash, args.repeats, True)
            rows.append({"mix": name, "impl": "disentangled-flash", "config": "heuristic", "ms": ms, "tokens": total,
                         "tflops": flops / ms / 1e9, "rel_err_vs_fp32": rel_err(got, want)})
            log.info("%s dflash: %.3f ms, %.1f TFLOP/s, rel err %.2e", name, ms, rows[-1]["tflops"],
                     rows[-1]["rel_err_vs_fp32"])
    return rows


def main(argv: list[str] | None = None) -> int:
    import torch

    from benchmarks.synthetic import DOMAIN, QUALITY

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="BLOCK_M,BLOCK_N,num_warps,num_stages")
    p.add_argument("--budget", type=int, default=65_536, help="tokens per micro-batch (the engine's GPU default)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--precision", choices=["fp16", "bf16"], default="fp16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shears", nargs="+", default=["smem", "scratch", "gather"])
    p.add_argument("--programs-per-sm", type=int, nargs="+", default=[4])
    p.add_argument("--scratch-fp32", type=int, nargs="+", default=[0], help="0: scratch in the weights' dtype; 1: fp32")
    p.add_argument("--smem-pads", nargs="+", default=[None],
                   help="shared-memory kernel: c2p,p2c row pads to time (relative_attention_smem.shear_layouts)")
    p.add_argument("--ablation", action="store_true",
                   help="also time the kernel without the position terms and with c2p only")
    p.add_argument("--out-dir", default="benchmarks/results")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        log.error("needs a CUDA GPU")
        return 2
    device = torch.device("cuda")
    args.dtype = torch.float16 if args.precision == "fp16" else torch.bfloat16
    model32 = build_layer(device).float()
    model_half = build_layer(device).to(args.dtype)
    rows = bench_mix("domain", DOMAIN, args, model_half, model32, device)
    rows += bench_mix("quality", QUALITY, args, model_half, model32, device)
    card = torch.cuda.get_device_name(device)
    today = dt.date.today().isoformat()
    out = Path(args.out_dir) / f"{today}-{card.split()[1].lower()}-attention.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    import triton
    import transformers

    out.write_text(json.dumps({
        "device": card, "date": today, "command": "python3 -m benchmarks.attention_kernel " + " ".join(argv or sys.argv[1:]),
        "precision": args.precision, "torch": torch.__version__, "triton": triton.__version__,
        "transformers": transformers.__version__, "results": rows,
    }, indent=2) + "\n")
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
