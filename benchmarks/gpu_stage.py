"""GPU-stage benchmark: DeBERTa-v3-base-shaped classifier over synthetic documents, without Spark.

Why: the numbers to beat (the anchors in benchmarks/NOTES.md) are for the GPU stage alone; this script
reproduces them (arrival-order fp32, sorted bf16, packed bf16) and times sparkcurate's own engine
on the same documents, so every change can be compared on one card in one run.

Run on the GPU machine from the repository root::

    python3 -m benchmarks.gpu_stage                       # full: 12,000 domain + 6,000 quality docs
    python3 -m benchmarks.gpu_stage --memory-fraction 0.2 # defaults must fit a 16 GB card (80 GB x 0.2)
    python3 -m benchmarks.gpu_stage --smoke               # CPU, tiny model, ~50 docs, seconds (CI)
    python3 -m benchmarks.gpu_stage --profile-ops         # + CUDA time per op category ("op_profile")
    python3 -m benchmarks.gpu_stage --variants packed_bf16 packed_bf16_allrows packed_autotune

packed_bf16 / packed_fp32 / packed_autotune run disentangled-flash's kernel with its tuning mode from
SPARKCURATE_DFLASH_TUNING (auto, autotune, heuristic; default auto; packed_autotune always autotunes);
packed_triton_bf16 and the engine (sparkcurate_gpu_stage) run this package's tile kernel.

Model: random weights, DeBERTa-v3-base shape (12 layers, hidden 768, 12 heads, 256 position
buckets, vocab 128,100) with a 26-label head. Random backbones give near-identical [CLS] states, so
the head is *calibrated* (bias centres the fp32 [CLS] states of 256 documents, weights scaled to a
logit spread of ~4): predictions are decisive and spread over classes, like a trained model's, and
argmax agreement measures precision effects rather than near-ties (the anchors in benchmarks/NOTES.md,
"Measuring agreement"). Agreement is also reported on documents whose fp32 top-two margin is >= 0.1.

Tokenizer: the real DeBERTa-v3 tokenizer cannot be downloaded; benchmarks/synthetic.py builds a
WordPiece tokenizer whose token counts follow the length mix exactly (see its docstring).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import json
import logging
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger("gpu_stage")

N_LABELS = 26
CALIBRATION: dict = {}
MARGIN = 0.1  # fp32 top-two probability margin that makes a document "decisive"
SMOKE_DOMAIN = dict(max_tokens=128, max_chars=500, cut_low=110, median=55.0)  # --smoke: the domain mix, shorter
WIDE_MARGIN = 0.5
INIT_STD = 0.05  # std of the random backbone's matrices (see build_model)


@dataclass
class Docs:
    """One length mix, tokenized once (tokenization is not part of the GPU stage)."""

    mix_name: str
    texts: list[str]
    ids: list[np.ndarray]
    lengths: np.ndarray
    max_tokens: int
    max_chars: int


@dataclass
class Result:
    name: str
    mix: str
    docs: int
    tokens: int
    seconds: float
    docs_per_s: float
    tokens_per_s: float
    model_tflops: float
    peak_gpu_gb: float | None
    argmax_agreement: float | None = None
    decisive_agreement: float | None = None
    decisive_fraction: float | None = None
    wide_margin_agreement: float | None = None
    wide_margin_fraction: float | None = None
    max_prob_abs_diff: float | None = None
    decisive_max_prob_abs_diff: float | None = None
    prob_abs_diff_p999: float | None = None
    prob_diff_over_1e2_fraction: float | None = None
    worst_doc_margin: float | None = None
    classes_predicted: int | None = None
    padded_tokens: int | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- model


def backbone_config(smoke: bool, vocab_size: int):
    """DeBERTa-v3-base shape (or a tiny one for --smoke)."""
    from transformers import DebertaV2Config

    common = dict(
        relative_attention=True, max_relative_positions=-1, pos_att_type=["p2c", "c2p"], share_att_key=True,
        norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0, max_position_embeddings=512,
        hidden_act="gelu", layer_norm_eps=1e-7,
    )
    if smoke:
        return DebertaV2Config(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=128, position_buckets=32, **common)
    return DebertaV2Config(vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                           intermediate_size=3072, position_buckets=256, **common)


class _LocalClsHead:
    """Fallback when sparkcurate.models.heads is not importable: the same padded forward."""

    @staticmethod
    def build(config, n_labels: int):
        import torch
        from torch import nn
        from transformers import AutoModel

        class ClsHead(nn.Module):
            def __init__(self):
                super().__init__()
                self.model = AutoModel.from_config(config)
                self.dropout = nn.Dropout(0.2)
                self.fc = nn.Linear(config.hidden_size, n_labels)

            def forward(self, input_ids, attention_mask):
                hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                return torch.softmax(self.fc(self.dropout(hidden[:, 0, :])).float(), dim=-1)

        return ClsHead()


def build_model(config, seed: int, init_std: float = INIT_STD):
    """fp32 classifier on the CPU; the lead's ClsHeadModel when available (the engine needs it).

    Matrices are re-drawn with std ``init_std`` (HF's init is 0.02). The [CLS] states of different
    documents must differ by much more than bf16 rounding moves them, or no head can be decisive.
    Measured on an H100 (base shape, 256 domain docs; spread / bf16 noise of the [CLS] state):
    std 0.02 -> 6.3, 0.03 -> 12.6, 0.045 -> 16.3, 0.05 -> 15.5, 0.07 -> 12.7, 0.1 -> 2.2, 0.2 -> 0.7
    (deep random nets turn chaotic as std grows; NOTES eleventh round). 0.05 is the default.
    """
    import torch

    torch.manual_seed(seed)
    try:
        from sparkcurate.models.heads import ClsHeadModel

        model = ClsHeadModel(config, N_LABELS)
    except ImportError as exc:
        log.warning("sparkcurate.models.heads unavailable (%s): using a local head", exc)
        model = _LocalClsHead.build(config, N_LABELS)
    with torch.no_grad():
        for p in model.model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, init_std)
    return model.eval()


def calibrate_head(model, docs: Docs, device, n: int = 256, logit_std: float = 4.0, k: int = 16,
                   measure_bf16_noise: bool = True) -> None:
    """Make the random head decisive, like a trained one (see module doc).

    A random backbone's [CLS] states differ little between documents, so a random head would mostly
    read the common part plus rounding noise. Trained heads read the directions along which
    documents differ: here the head mixes the top-``k`` principal components of the fp32 [CLS]
    states (whitened), centred by the bias and scaled to a logit spread of ``logit_std``.
    ``measure_bf16_noise=False`` skips the logged bf16 comparison (bf16 on a CPU without bf16 units takes
    an hour); the head does not depend on it.
    """
    import torch

    idx = np.arange(min(n, len(docs.ids)))
    ids, mask = pad_batch(docs, idx)
    with torch.no_grad():
        backbone = model.model.to(device)
        cls = []
        for lo in range(0, len(idx), 32):
            out = backbone(input_ids=ids[lo:lo + 32].to(device), attention_mask=mask[lo:lo + 32].to(device))
            cls.append(out.last_hidden_state[:, 0, :].float().cpu())
        cls = torch.cat(cls).double()
        mean = cls.mean(0)
        errors = {}  # [CLS] error of a half-precision copy on the first 32 documents, per dtype
        if measure_bf16_noise:
            for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
                half = copy.deepcopy(backbone).to(dtype)
                out = half(input_ids=ids[:32].to(device), attention_mask=mask[:32].to(device))
                errors[name] = out.last_hidden_state[:, 0, :].double().cpu() - cls[:32]
                del half
        noise = errors["bf16"].norm(dim=1).mean().item() if errors else float("nan")
        spread = (cls - mean).norm(dim=1).mean().item()
        CALIBRATION.update(cls_spread=round(spread, 5), bf16_cls_noise=round(noise, 5),
                           spread_over_noise=round(spread / max(noise, 1e-12), 2))
        log.info("head calibration: [CLS] spread %.4f, bf16 noise %.4f", spread, noise)
        _, sing, vh = torch.linalg.svd(cls - mean, full_matrices=False)
        k = min(k, int((sing > sing[0] * 1e-6).sum()))
        whiten = vh[:k] / sing[:k, None] * math.sqrt(len(idx))  # unit variance along each component
        gen = torch.Generator().manual_seed(1234)
        w = torch.randn(model.fc.weight.shape[0], k, generator=gen, dtype=torch.float64) @ whiten
        w *= logit_std / ((cls - mean) @ w.T).std()
        for name, err in errors.items():  # what the head reads of the rounding (an fp32 head on half [CLS] states)
            ref = torch.softmax((cls[:32] - mean) @ w.T, dim=1)
            got = torch.softmax((cls[:32] + err - mean) @ w.T, dim=1)
            CALIBRATION[f"{name}_logit_noise_over_spread"] = round(float((err @ w.T).std()) / logit_std, 5)
            CALIBRATION[f"{name}_max_prob_diff_32docs"] = round(float((got - ref).abs().max()), 5)
        model.fc.weight.copy_(w.float())
        model.fc.bias.copy_((-(mean @ w.T)).float())
    model.to("cpu")


def model_flops(lengths: np.ndarray, config) -> float:
    """Useful forward FLOPs (no padding): linear layers + content attention + relative-position scores."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    slots = 2 * config.position_buckets
    per_token = 2 * (4 * h * h + 2 * h * inter) + 4 * slots * h
    lengths = lengths.astype(np.float64)
    return float(layers * (lengths.sum() * per_token + (4 * h * lengths * lengths).sum()))


# --------------------------------------------------------------------------- batching


def pad_batch(docs: Docs, idx: np.ndarray, pad_id: int = 0):
    """Right-padded [B, S] ids and mask (CPU tensors) for documents ``idx``."""
    import torch

    width = int(docs.lengths[idx].max())
    ids = np.full((len(idx), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(idx), width), dtype=np.int64)
    for row, i in enumerate(idx):
        n = int(docs.lengths[i])
        ids[row, :n] = docs.ids[i]
        mask[row, :n] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def arrival_batches(n: int, size: int) -> list[np.ndarray]:
    return [np.arange(lo, min(n, lo + size)) for lo in range(0, n, size)]


def sorted_batches(lengths: np.ndarray, budget: int, padded: bool, max_rows: int = 256) -> list[np.ndarray]:
    """Longest first; the budget counts rows x longest (padded) or the sum of lengths (packed): the engine's own
    micro-batch plan, so the baselines batch exactly as sparkcurate does."""
    from sparkcurate.engine.batching import plan_microbatches

    return plan_microbatches(lengths, budget, max_rows, padded=padded)


# --------------------------------------------------------------------------- variants


def to_device(t, device):
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def run_padded(model, docs: Docs, batches, device) -> Callable[[list], Any]:
    """Padded HF forward over ``batches``; returns a runner that yields [N, K] probs on the host."""
    import torch

    def run(selected):
        outs = []
        with torch.inference_mode():
            for idx in selected:
                ids, mask = pad_batch(docs, idx)
                outs.append((idx, model(to_device(ids, device), to_device(mask, device))))
        return outs

    return run


def run_packed(model, docs: Docs, batches, device, impl: str, rows: str = "first") -> Callable[[list], Any]:
    """Packed forward; returns a runner that yields [N, K] probs on the device.

    ``rows="first"`` is what the engine runs: ``model.forward_packed`` (fused QKV, [CLS]-only last layer).
    ``rows="all"`` computes every token's last hidden state and picks the [CLS] rows afterwards (the path
    before the [CLS]-only last layer; kept as the ``packed_bf16_allrows`` variant to measure the gain).
    """
    import torch

    from sparkcurate.engine.deberta_packed import packed_last_hidden

    def forward(ids, cu_cpu, longest):
        if rows == "first":
            return model.forward_packed(ids, cu_cpu, longest, attention_impl=impl)
        hidden = packed_last_hidden(model.model, ids, cu_cpu, longest, impl, rows="all")
        first = hidden.index_select(0, to_device(cu_cpu[:-1].long(), device))
        return torch.softmax(model.fc(first).float(), dim=-1)

    def run(selected):
        outs = []
        with torch.inference_mode():
            for idx in selected:
                flat = np.concatenate([docs.ids[i] for i in idx]).astype(np.int64)
                cu = np.zeros(len(idx) + 1, dtype=np.int32)
                np.cumsum(docs.lengths[idx], out=cu[1:])
                ids = to_device(torch.from_numpy(flat), device)
                outs.append((idx, forward(ids, torch.from_numpy(cu), int(docs.lengths[idx].max()))))
        return outs

    return run


def collect(outs, n: int) -> np.ndarray:
    """One device-to-host copy at the end, then input order."""
    import torch

    values = torch.cat([o for _, o in outs]).float().cpu().numpy()
    order = np.concatenate([i for i, _ in outs])
    probs = np.empty_like(values)
    probs[order] = values
    if len(order) != n:
        raise RuntimeError(f"internal error: {len(order)} results for {n} documents")
    return probs


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, run, batches, n_docs: int, warm: list) -> tuple[np.ndarray, float, float | None]:
    """Warm up (compilation, allocator) on ``warm``, then time one full pass."""
    import torch

    if warm:
        run(warm)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    outs = run(batches)
    probs = collect(outs, n_docs)  # includes the final sync
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return probs, seconds, peak


def warm_subset(batches: list, k: int = 8) -> list:
    """Evenly spaced batches (sorted batches: every length family gets compiled before timing)."""
    if len(batches) <= k:
        return list(batches)
    picks = np.linspace(0, len(batches) - 1, k).round().astype(int)
    return [batches[i] for i in sorted(set(picks.tolist()))]


def agreement(probs: np.ndarray, ref: np.ndarray | None) -> dict:
    if ref is None:
        return {}
    top2 = np.sort(ref, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) >= MARGIN
    wide = (top2[:, 1] - top2[:, 0]) >= WIDE_MARGIN
    same = probs.argmax(1) == ref.argmax(1)
    doc_diff = np.abs(probs - ref).max(axis=1)  # each document's largest probability difference
    return dict(
        wide_margin_agreement=float(same[wide].mean()) if wide.any() else None,
        wide_margin_fraction=float(wide.mean()),
        argmax_agreement=float(same.mean()),
        decisive_agreement=float(same[decisive].mean()) if decisive.any() else None,
        decisive_fraction=float(decisive.mean()),
        max_prob_abs_diff=float(doc_diff.max()),
        # Where the largest differences are: on decisive documents too, how many documents pass 1e-2, and the
        # fp32 top-two margin of the worst one (a near-tie document moves most under rounding).
        decisive_max_prob_abs_diff=float(doc_diff[decisive].max()) if decisive.any() else None,
        prob_abs_diff_p999=float(np.quantile(doc_diff, 0.999)),
        prob_diff_over_1e2_fraction=float((doc_diff > 1e-2).mean()),
        worst_doc_margin=float(top2[doc_diff.argmax(), 1] - top2[doc_diff.argmax(), 0]),
    )


def make_result(name, docs: Docs, probs, seconds, peak, ref, config, padded_tokens=None, notes="", **extra):
    tokens = int(docs.lengths.sum())
    return Result(
        name=name, mix=docs.mix_name, docs=len(docs.ids), tokens=tokens, seconds=round(seconds, 4),
        docs_per_s=round(len(docs.ids) / seconds, 1), tokens_per_s=round(tokens / seconds, 1),
        model_tflops=round(model_flops(docs.lengths, config) / seconds / 1e12, 2),
        peak_gpu_gb=None if peak is None else round(peak, 3), padded_tokens=padded_tokens,
        classes_predicted=int(len(np.unique(probs.argmax(1)))), notes=notes, extra=extra,
        **agreement(probs, ref),
    )


def padded_token_count(docs: Docs, batches) -> int:
    return int(sum(len(b) * int(docs.lengths[b].max()) for b in batches))


# --------------------------------------------------------------------------- one mix


def bench_mix(args, docs: Docs, base_model, config, tokenizer, device) -> list[Result]:
    """All variants on one length mix; the fp32 arrival-order run is the agreement reference."""
    import torch

    results: list[Result] = []
    n = len(docs.ids)
    ref = None
    wanted = set(args.variants)

    if "arrival_fp32_b64" in wanted:
        model = copy.deepcopy(base_model).to(device, torch.float32)
        batches = arrival_batches(n, 64)
        probs, secs, peak = timed(device, run_padded(model, docs, batches, device), batches, n, batches[:2])
        ref = probs
        results.append(make_result("arrival_fp32_b64", docs, probs, secs, peak, ref, config,
                                   padded_tokens=padded_token_count(docs, batches)))
        del model
        log_result(results[-1])

    # On the CPU (--smoke) the "bf16" variants run in fp32: CPU bf16 kernels would make the smoke slow.
    half = torch.bfloat16 if device.type == "cuda" else torch.float32
    bf16 = copy.deepcopy(base_model).to(device, half)
    if "sorted_bf16_baseline" in wanted:
        batches = sorted_batches(docs.lengths, args.token_budget, padded=True)
        probs, secs, peak = timed(device, run_padded(bf16, docs, batches, device), batches, n, warm_subset(batches, 3))
        results.append(make_result("sorted_bf16_baseline", docs, probs, secs, peak, ref, config,
                                   padded_tokens=padded_token_count(docs, batches),
                                   notes=str(half).replace("torch.", ""),
                                   token_budget=args.token_budget))
        log_result(results[-1])

    # packed_bf16 keeps disentangled-flash's kernel (the earlier rounds' number); packed_triton_bf16 is ours.
    impl = "dflash" if device.type == "cuda" else "reference"
    packed_batches = sorted_batches(docs.lengths, args.token_budget, padded=False)
    # Warm-up is a whole pass: kernel configs are compiled per (length family, occupancy family).
    packed_warm = packed_batches if device.type == "cuda" else packed_batches[:1]
    half_name = str(half).replace("torch.", "")
    for name, rows, variant_impl in (("packed_bf16", "first", impl), ("packed_bf16_allrows", "all", impl),
                                     ("packed_triton_bf16", "first", "triton")):
        if name in wanted and (device.type == "cuda" or variant_impl != "triton"):
            runner = run_packed(bf16, docs, packed_batches, device, variant_impl, rows=rows)
            probs, secs, peak = timed(device, runner, packed_batches, n, packed_warm)
            results.append(make_result(name, docs, probs, secs, peak, ref, config,
                                       notes=f"attention_impl={variant_impl}, rows={rows}, {half_name}, "
                                             f"tuning={tuning_mode_name()}",
                                       token_budget=args.token_budget))
            log_result(results[-1])
            del runner  # its closure holds the model: the later variants' peaks must not count it
    if "packed_autotune" in wanted and device.type == "cuda":
        results.append(bench_packed_autotune(bf16, docs, packed_batches, device, impl, ref, config, args))
    del bf16

    # Exactness check of the kernel inside the benchmark (strict fp32). Domain mix only, and warmed on
    # a subset, to keep the run short: its speed is not a target.
    if "packed_fp32" in wanted and device.type == "cuda" and docs.mix_name == "domain":
        fp32 = copy.deepcopy(base_model).to(device, torch.float32)
        runner = run_packed(fp32, docs, packed_batches, device, impl)
        probs, secs, peak = timed(device, runner, packed_batches, n, warm_subset(packed_batches))
        results.append(make_result("packed_fp32", docs, probs, secs, peak, ref, config,
                                   notes=f"attention_impl={impl}, strict fp32", token_budget=args.token_budget))
        log_result(results[-1])
        del fp32, runner

    if "sparkcurate_gpu_stage" in wanted:
        # Nothing of the earlier variants may stay allocated: the engine's peak is its own.
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            log.info("GPU memory allocated before the engine: %.3f GB", torch.cuda.memory_allocated(device) / 1e9)
        results.extend(bench_engine(args, docs, base_model, config, tokenizer, device, ref))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def tuning_mode_name() -> str:
    """disentangled-flash's tuning mode in force for the packed variants (SPARKCURATE_DFLASH_TUNING)."""
    from sparkcurate.engine.kernels.dflash_attention import tuning_mode

    return tuning_mode()


def bench_packed_autotune(model, docs: Docs, batches, device, impl, ref, config, args) -> Result:
    """packed_bf16 with disentangled-flash's run-time autotuning (KernelTuningOptions(mode="autotune")).

    Why: "auto" (the default) takes launch configs from saved profiles, else a heuristic; this shows what
    benchmarking every candidate config on this card would gain. The warm-up pass does the tuning (every
    workload family the timed pass meets), so the timed pass measures the tuned configs only.
    """
    from sparkcurate.engine.kernels.dflash_attention import set_tuning_mode

    previous = set_tuning_mode("autotune")
    try:
        runner = run_packed(model, docs, batches, device, impl)
        start = time.perf_counter()
        runner(batches)
        sync(device)
        tune_secs = time.perf_counter() - start
        probs, secs, peak = timed(device, runner, batches, len(docs.ids), [])
    finally:
        set_tuning_mode(previous)
    result = make_result("packed_autotune", docs, probs, secs, peak, ref, config,
                         notes=f"attention_impl={impl}, tuning=autotune, warm-up+tuning {tune_secs:.1f}s",
                         token_budget=args.token_budget, tuning_warmup_s=round(tune_secs, 2))
    log_result(result)
    return result


def median_pass(work, passes: int, device):
    """Run ``work`` ``passes`` times; the last pass's output, the median seconds and every pass's seconds.

    Why the median of several: one engine pass is 1.5-5 s, and single passes of the tokenizing variant moved by
    several percent between runs (3,455 vs 3,575 docs/s on the same code and card kind).
    """
    seconds = []
    out = None
    for _ in range(max(1, passes)):
        sync(device)
        start = time.perf_counter()
        out = work()
        sync(device)
        seconds.append(round(time.perf_counter() - start, 4))
    return out, float(np.median(seconds)), seconds


def bench_engine(args, docs: Docs, base_model, config, tokenizer, device, ref) -> list[Result]:
    """The lead's InferenceEngine, defaults except length limits (guarded: it may not exist yet)."""
    try:
        from sparkcurate.engine.runner import EngineConfig, InferenceEngine
    except ImportError as exc:
        log.warning("sparkcurate_gpu_stage skipped: %s", exc)
        return [skipped("sparkcurate_gpu_stage", docs, f"engine not importable: {exc}")]
    try:
        cfg = EngineConfig(max_tokens=docs.max_tokens, max_chars=docs.max_chars)
        engine = InferenceEngine(copy.deepcopy(base_model), tokenizer, cfg, device=device)
        tokens = engine.tokenize(docs.texts)
        if not np.array_equal(tokens.lengths, docs.lengths):
            log.warning("engine tokenization differs from the benchmark's (%d vs %d tokens)",
                        tokens.total_tokens, int(docs.lengths.sum()))
        probs, secs, passes, peak = time_engine(engine, tokens, args.engine_passes, device)
        notes = engine_notes(engine)
        out = [make_result("sparkcurate_gpu_stage", docs, probs, secs, peak, ref, config, notes=notes,
                           oom_retries=engine.oom_retries, pass_seconds=passes)]
        log_result(out[-1])
        if device.type == "cuda":
            out.append(bench_exact_gelu(engine, tokens, docs, ref, config, notes, args.engine_passes, device))
        batches = [docs.texts[i:i + 2000] for i in range(0, len(docs.texts), 2000)]
        probs2, secs2, passes2 = median_pass(lambda: np.concatenate(list(engine.predict_batches(batches))),
                                             args.engine_passes, device)
        out.append(make_result("sparkcurate_with_tokenize", docs, probs2, secs2, None, ref, config,
                               notes=notes + ", tokenizing 2000-doc batches on a prefetch thread",
                               pass_seconds=passes2))
        log_result(out[-1])
        engine = None  # freed: the split engine's peak memory is its own
        out.append(bench_fp16_split(args, docs, base_model, tokenizer, tokens, ref, config, device))
        return out
    except Exception as exc:  # report, don't lose the other variants' numbers
        log.exception("sparkcurate_gpu_stage failed")
        return [skipped("sparkcurate_gpu_stage", docs, f"failed: {type(exc).__name__}: {exc}")]


def time_engine(engine, tokens, passes: int, device) -> tuple[np.ndarray, float, list[float], float | None]:
    """A warm-up pass (kernel compilation, allocator), then :func:`median_pass` over ``passes`` timed passes:
    probabilities, median seconds, every pass's seconds, and the peak GPU memory (GB) of the timed passes."""
    import torch

    engine.predict_tokenized(tokens)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    probs, secs, seconds = median_pass(lambda: engine.predict_tokenized(tokens), passes, device)
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return probs, secs, seconds, peak


def engine_notes(engine) -> str:
    return f"{engine.precision}, {'packed' if engine.packed else 'padded'}, budget {engine.budget}"


def bench_fp16_split(args, docs: Docs, base_model, tokenizer, tokens, ref, config, device) -> Result:
    """The engine with ``precision="fp16-split"`` (sparkcurate/engine/kernels/split_weights.py): every linear layer's fp32
    weight as an fp16 pair in one doubled-K GEMM, the exact GELU. What probabilities within 1e-2 of fp32 cost, same
    run."""
    import torch

    from sparkcurate.engine.runner import EngineConfig, InferenceEngine

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    cfg = EngineConfig(max_tokens=docs.max_tokens, max_chars=docs.max_chars, precision="fp16-split")
    engine = InferenceEngine(copy.deepcopy(base_model), tokenizer, cfg, device=device)
    probs, secs, seconds, peak = time_engine(engine, tokens, args.engine_passes, device)
    result = make_result("sparkcurate_fp16_split", docs, probs, secs, peak, ref, config, notes=engine_notes(engine),
                         oom_retries=engine.oom_retries, pass_seconds=seconds)
    log_result(result)
    return result


def bench_exact_gelu(engine, tokens, docs: Docs, ref, config, notes: str, passes: int, device) -> Result:
    """The engine with the exact (erf) GELU as its own kernel instead of cuBLASLt's tanh GELU in the GEMM's
    epilogue (sparkcurate/engine/kernels/gelu_epilogue.py): what the epilogue costs in agreement and gains in speed,
    measured in the same run."""
    from sparkcurate.engine.kernels.gelu_epilogue import EPILOGUE_ENV

    previous = os.environ.get(EPILOGUE_ENV)
    os.environ[EPILOGUE_ENV] = "off"
    try:
        engine.predict_tokenized(tokens)  # warm-up: the unfused path's GEMM configs
        probs, secs, seconds = median_pass(lambda: engine.predict_tokenized(tokens), passes, device)
    finally:
        if previous is None:
            os.environ.pop(EPILOGUE_ENV, None)
        else:
            os.environ[EPILOGUE_ENV] = previous
    result = make_result("sparkcurate_exact_gelu", docs, probs, secs, None, ref, config,
                         notes=notes + f", {EPILOGUE_ENV}=off", pass_seconds=seconds)
    log_result(result)
    return result


def skipped(name: str, docs: Docs, why: str) -> Result:
    return Result(name=name, mix=docs.mix_name, docs=len(docs.ids), tokens=int(docs.lengths.sum()), seconds=0.0,
                  docs_per_s=0.0, tokens_per_s=0.0, model_tflops=0.0, peak_gpu_gb=None, notes="SKIPPED: " + why)


def log_result(r: Result) -> None:
    log.info("%-26s %-8s %8.1f docs/s %10.0f tok/s agree=%s peak=%s GB %s", r.name, r.mix, r.docs_per_s,
             r.tokens_per_s, r.argmax_agreement, r.peak_gpu_gb, r.notes)


# --------------------------------------------------------------------------- op profile

#: Kernel/op name patterns per category, tried in order (lower-case names); the rest is "copy/other".
OP_CATEGORIES = (
    ("attention (packed kernel)", re.compile(r"deberta_attention|disentangled")),
    ("layer_norm", re.compile(r"layer_?norm")),
    ("softmax", re.compile(r"softmax")),
    ("gemm", re.compile(r"gemm|gemv|cublas|cutlass|xmma|nvjet|wgmma|"
                        r"^aten::(mm|bmm|addmm|baddbmm|addbmm|matmul|linear|einsum)$")),
    ("copy/other", re.compile(r"copy|memcpy|memset|gather|index|scatter|cat_|catarray|^aten::(cat|to|clone)$")),
    ("elementwise", re.compile(r"elementwise|gelu|^aten::(add|add_|mul|mul_|div|div_|sub|rsub|gelu|where|"
                               r"masked_fill_?|clamp|exp|neg|sign|abs|log|ceil|sqrt|lt|gt|le|ge|eq|ne|tanh|erf|"
                               r"bitwise_not|logical_not|__and__|__or__)$")),
)


def op_category(name: str) -> str:
    low = name.lower()
    for category, pattern in OP_CATEGORIES:
        if pattern.search(low):
            return category
    return "copy/other"


def op_time_rows(events, on_cuda: bool) -> list[tuple[str, float, int]]:
    """(name, microseconds, calls) per op: self CUDA kernel time on a GPU, self CPU time on the CPU.

    Self times sum to the total without double counting (a CPU op's time excludes its children's; on a GPU
    only kernel/memcpy events carry device time).
    """
    from torch.autograd import DeviceType

    rows = []
    for evt in events:
        if on_cuda:
            if evt.device_type != DeviceType.CUDA:
                continue
            micros = float(evt.self_device_time_total)
        else:
            micros = float(evt.self_cpu_time_total)
        if micros > 0:
            rows.append((evt.key, micros, evt.count))
    return rows


def summarize_ops(rows: list[tuple[str, float, int]], top: int = 15) -> dict:
    """Time per category (ms and share of the total) plus the ``top`` most expensive ops."""
    total = sum(us for _, us, _ in rows) or 1.0
    cats: dict[str, dict] = {name: {"ms": 0.0, "calls": 0} for name, _ in OP_CATEGORIES}
    cats.setdefault("copy/other", {"ms": 0.0, "calls": 0})
    for name, us, calls in rows:
        cat = cats[op_category(name)]
        cat["ms"] += us / 1e3
        cat["calls"] += calls
    for cat in cats.values():
        cat["ms"] = round(cat["ms"], 3)
        cat["share"] = round(cat["ms"] * 1e3 / total, 4)
    ranked = sorted(rows, key=lambda r: -r[1])[:top]
    return {
        "total_ms": round(total / 1e3, 3),
        "categories": cats,
        "top_ops": [{"name": n[:160], "category": op_category(n), "ms": round(us / 1e3, 3), "calls": c,
                     "share": round(us / total, 4)} for n, us, c in ranked],
    }


def profile_ops(docs: Docs, base_model, device, budget: int, n_batches: int = 4) -> dict:
    """CUDA time per op category of the engine's packed forward on a few micro-batches (--profile-ops).

    Runs ``model.forward_packed`` (what the engine calls) at the engine's default precision (fp16 on a GPU)
    on ``n_batches`` evenly spaced micro-batches of the engine's packed plan, after a warm-up over the same
    batches, under torch.profiler. On the CPU (--smoke) it profiles CPU ops of disentangled-flash's torch
    backend (or the HF reference loop when the package is missing): the harness is exercised, the shares
    say nothing about a GPU.
    """
    from torch.profiler import ProfilerActivity, profile

    from sparkcurate.engine.runner import PRECISIONS, EngineConfig

    on_cuda = device.type == "cuda"
    precision = EngineConfig().resolved_precision(device)
    model = copy.deepcopy(base_model).to(device, PRECISIONS[precision]).eval()
    if on_cuda:
        ok, reason = model.packed_support(device)
        if not ok:
            log.warning("op profile skipped: %s", reason)
            return {"skipped": reason}
        impl = "kernel"
    else:
        try:
            import disentangled_flash  # noqa: F401

            impl = "torch"
        except ImportError:
            impl = "reference"
    batches = sorted_batches(docs.lengths, budget, padded=False)
    selected = warm_subset(batches, n_batches)
    run = run_packed(model, docs, batches, device, impl)
    run(selected)  # warm-up: kernel compilation, wrapper build, allocator
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        run(selected)
        sync(device)
    wall = time.perf_counter() - start
    summary = summarize_ops(op_time_rows(prof.key_averages(), on_cuda))
    picked = np.concatenate(selected)
    del model
    return {
        "activity": "cuda" if on_cuda else "cpu",
        "time_basis": "self CUDA kernel time" if on_cuda else "self CPU time of ops",
        "mix": docs.mix_name, "attention_impl": impl, "precision": precision, "tuning": tuning_mode_name(),
        "micro_batches": len(selected), "docs": len(picked), "tokens": int(docs.lengths[picked].sum()),
        "token_budget": budget, "profiled_wall_s": round(wall, 4), **summary,
    }


def log_op_profile(op: dict) -> None:
    if "categories" not in op:
        return
    log.info("op profile (%s, %s, %d micro-batches, %d tokens): %.2f ms", op["time_basis"], op["precision"],
             op["micro_batches"], op["tokens"], op["total_ms"])
    for name, cat in sorted(op["categories"].items(), key=lambda kv: -kv[1]["ms"]):
        log.info("  %-32s %10.3f ms %6.1f%% %7d calls", name, cat["ms"], 100 * cat["share"], cat["calls"])


# --------------------------------------------------------------------------- main


def load_docs(mix, n: int, tokenizer, seed: int) -> Docs:
    from benchmarks.synthetic import make_documents

    texts = make_documents(n, mix, seed)
    cut = [t[: mix.max_chars] for t in texts]
    backend = tokenizer._tokenizer
    backend.no_padding()
    backend.enable_truncation(max_length=mix.max_tokens)
    ids = [np.asarray(e.ids, dtype=np.int32) for e in backend.encode_batch(cut, add_special_tokens=True)]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    return Docs(mix.name, texts, ids, lengths, mix.max_tokens, mix.max_chars)


def domain_setup(smoke: bool, seed: int = 0):
    """``(tokenizer, config, docs)``: gpu_stage's tokenizer, model config and domain-mix documents (12,000; the smoke
    run's 48 short ones). Probes that start from these measure the same model, head (calibrated on the first 256
    documents) and documents as the benchmark."""
    from benchmarks.synthetic import DOMAIN, benchmark_tokenizer

    tokenizer = benchmark_tokenizer()
    config = backbone_config(smoke, len(tokenizer))
    mix = replace(DOMAIN, **SMOKE_DOMAIN) if smoke else DOMAIN
    return tokenizer, config, load_docs(mix, 48 if smoke else 12_000, tokenizer, seed)


def card_name(device) -> tuple[str, str]:
    """(long description, short slug for the file name)."""
    import torch

    if device.type != "cuda":
        return "cpu", "cpu"
    name = torch.cuda.get_device_name(device)
    m = re.search(r"(h100|h200|a100|l40s?|a10g?|t4|l4)", name.lower())
    return name, (m.group(1) if m else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"))


def print_table(results: list[Result]) -> None:
    """The table goes last on stdout (the device tool returns the tail of the output)."""
    head = f"{'variant':26} {'mix':8} {'docs/s':>8} {'tok/s':>10} {'TFLOP/s':>8} {'agree':>7} {'agree>m':>7} " \
           f"{'maxdp':>7} {'peakGB':>7}  notes"
    print(head)
    print("-" * len(head))
    for r in results:
        fmt = lambda v, p=4: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
        print(f"{r.name:26} {r.mix:8} {r.docs_per_s:8.1f} {r.tokens_per_s:10.0f} {r.model_tflops:8.1f} "
              f"{fmt(r.argmax_agreement):>7} {fmt(r.decisive_agreement):>7} {fmt(r.max_prob_abs_diff, 3):>7} "
              f"{fmt(r.peak_gpu_gb, 2):>7}  {r.notes}")


def parse_args(argv):
    p = argparse.ArgumentParser(description="GPU-stage benchmark (no Spark)")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model, ~50 docs: a seconds-long check")
    p.add_argument("--docs", type=int, default=None, help="domain-mix documents (default 12000; smoke 50)")
    p.add_argument("--quality-docs", type=int, default=None, help="quality-mix documents (default 6000; smoke 20)")
    p.add_argument("--token-budget", type=int, default=None, help="tokens per micro-batch (default 65536; smoke 4096)")
    p.add_argument("--variants", nargs="+", default=["arrival_fp32_b64", "sorted_bf16_baseline", "packed_bf16",
                                                      "packed_triton_bf16", "packed_fp32", "sparkcurate_gpu_stage"],
                   help="packed_bf16 runs disentangled-flash's kernel, packed_triton_bf16 (GPU) this package's; "
                        "also: packed_bf16_allrows (every row of the last layer, then pick [CLS]; the path before "
                        "the [CLS]-only last layer), packed_autotune (GPU: disentangled-flash autotune mode)")
    p.add_argument("--engine-passes", type=int, default=3,
                   help="timed passes of each engine variant (the median is reported, every pass in the row)")
    p.add_argument("--profile-ops", action="store_true",
                   help="profile the packed forward on a few domain-mix micro-batches; time per op category goes "
                        "into the results JSON as 'op_profile'")
    p.add_argument("--profile-batches", type=int, default=4, help="micro-batches profiled by --profile-ops")
    p.add_argument("--memory-fraction", type=float, default=None,
                   help="torch.cuda.set_per_process_memory_fraction (0.2 of 80 GB = a 16 GB card); "
                        "skips the fp32 reference variant, which is not a default")
    p.add_argument("--out-dir", default="benchmarks/results")
    p.add_argument("--init-std", type=float, default=INIT_STD, help="std of the random backbone matrices")
    p.add_argument("--sweep-init-std", type=float, nargs="+", default=None,
                   help="only measure [CLS] spread / bf16 noise for these init stds, then exit")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.docs = args.docs if args.docs is not None else (48 if args.smoke else 12_000)
    args.quality_docs = args.quality_docs if args.quality_docs is not None else (16 if args.smoke else 6_000)
    args.token_budget = args.token_budget or (4096 if args.smoke else 65_536)
    if args.memory_fraction is not None:
        if not 0 < args.memory_fraction <= 1:
            p.error("--memory-fraction must be in (0, 1]")
        args.variants = [v for v in args.variants if v not in ("arrival_fp32_b64", "packed_fp32")]
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    from benchmarks.synthetic import DOMAIN, QUALITY, benchmark_tokenizer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv if argv is not None else sys.argv[1:])
    log.info("disentangled-flash tuning mode: %s", tuning_mode_name())  # a bad SPARKCURATE_DFLASH_TUNING fails here
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if not args.smoke and device.type != "cuda":
        log.error("no CUDA device: run with --smoke on a CPU machine")
        return 2
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference stays true fp32
        if args.memory_fraction:
            torch.cuda.set_per_process_memory_fraction(args.memory_fraction, torch.cuda.current_device())
    tokenizer = benchmark_tokenizer()
    config = backbone_config(args.smoke, len(tokenizer))
    if args.smoke:  # same shape of mix, shorter documents: seconds on a CPU
        DOMAIN, QUALITY = (replace(DOMAIN, **SMOKE_DOMAIN),
                           replace(QUALITY, max_tokens=256, max_chars=1000, cut_low=225, median=97.0))
    mixes = [(DOMAIN, args.docs), (QUALITY, args.quality_docs)]
    all_docs = [load_docs(mix, n, tokenizer, args.seed) for mix, n in mixes if n > 0]
    if args.sweep_init_std:
        for std in args.sweep_init_std:
            CALIBRATION.clear()
            calibrate_head(build_model(config, args.seed, std), all_docs[0], device)
            print(f"init_std={std}: {CALIBRATION}")
        return 0
    base = build_model(config, args.seed, args.init_std)
    calibrate_head(base, all_docs[0], device)
    results: list[Result] = []
    for docs in all_docs:
        log.info("%s mix: %d docs, %d tokens (mean %.1f)", docs.mix_name, len(docs.ids), docs.lengths.sum(),
                 docs.lengths.mean())
        results.extend(bench_mix(args, docs, base, config, tokenizer, device))
    op_profile = None
    if args.profile_ops:
        op_profile = profile_ops(all_docs[0], base, device, args.token_budget, args.profile_batches)
        log_op_profile(op_profile)
    write_results(args, device, results, op_profile)
    print_table(results)
    return 0


def write_results(args, device, results: list[Result], op_profile: dict | None = None) -> Path:
    import torch
    import transformers

    long_name, slug = card_name(device)
    date = dt.date.today().isoformat()
    suffix = "-smoke" if args.smoke else (f"-mem{args.memory_fraction:g}" if args.memory_fraction else "")
    out = Path(args.out_dir) / f"{date}-{slug}{suffix}-gpu-stage.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        import disentangled_flash

        dflash = disentangled_flash.__version__
    except ImportError:
        dflash = None
    payload = {
        "device": long_name, "date": date, "command": "python3 -m benchmarks.gpu_stage " + " ".join(sys.argv[1:]),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "disentangled_flash": dflash},
        "memory_fraction": args.memory_fraction, "token_budget": args.token_budget,
        "agreement": f"vs arrival_fp32_b64 probabilities; 'decisive' = fp32 top-two margin >= {MARGIN}, "
                     f"'wide_margin' >= {WIDE_MARGIN}; "
                     "head calibrated for decisive predictions (see module docstring)",
        "calibration": CALIBRATION, "init_std": args.init_std,
        "dflash_tuning": tuning_mode_name(),
        "results": [r.__dict__ for r in results],
    }
    if op_profile is not None:
        payload["op_profile"] = op_profile
    out.write_text(json.dumps(payload, indent=2, default=_json_default))
    log.info("wrote %s", out)
    return out


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if math.isnan(value) else float(value)
    raise TypeError(f"not JSON-serialisable: {type(value)}")


if __name__ == "__main__":
    raise SystemExit(main())
