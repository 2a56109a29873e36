"""CPU path vs a plain transformers loop (issue: "CPU path: not slower than a plain transformers loop on the same
machine and data").

Two ways to classify the same synthetic documents (domain length mix) with the same DeBERTa-v2/v3 head
checkpoint, on this machine's CPU, in one process:

* ``plain_transformers_loop``: what a user writes by hand: texts cut at 2000 characters (NeMo's cut), batches of
  32 in arrival order, ``tokenizer(batch, truncation=True, max_length=512, padding=True, return_tensors="pt")``,
  the model under ``torch.inference_mode()``, fp32, softmax probabilities. The module is the classifier's own
  (``load_module``), so the weights and the head are identical: what differs is the loop only.
* ``sparkcurate_engine_cpu``: ``engine.predict(texts)`` with the classifier's default CPU engine (fp32,
  length-sorted micro-batches under an 8,192-token budget, padded forward).

Rounds alternate which variant goes first, and the best round of each is kept, because the machine may be shared
with other jobs. The probabilities of both must agree to ~1e-5 (the same math on differently shaped batches).

    python -m benchmarks.cpu_path --shape xsmall --docs 192 --repeat 3     # the committed measurement (~13 min)
    python -m benchmarks.cpu_path --smoke                                  # tiny model, 40 docs, seconds (CI)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path

import numpy as np

log = logging.getLogger("benchmarks.cpu_path")

# Backbone shapes. xsmall is DeBERTa-v3-xsmall's published shape (12 layers, hidden 384); base is the shape of the
# published domain classifier (DeBERTa-v3-base); tiny is spark_e2e's smoke shape. --layers overrides the depth.
SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128},
    "xsmall": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "intermediate_size": 1536},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
}
# Std of the backbone's weight matrices, per shape (see write_shaped_checkpoint for why not the default 0.02).
INIT_STD = {"tiny": 0.2, "xsmall": 0.05, "base": 0.05}
PLAIN_BATCH = 32  # a hand-written loop's usual batch size
MAX_CHARS, MAX_TOKENS = 2000, 512  # NeMo's domain classifier limits (the classifier's defaults)


def write_shaped_checkpoint(out: Path, shape: str, layers: int | None = None, seed: int = 0,
                            head_scale: float = 3.0, init_std: float | None = None) -> Path:
    """A published-layout DeBERTa head checkpoint of ``shape``, as ``benchmarks.spark_e2e.write_checkpoint``
    writes one (config.json + base_model dir, model.safetensors, the benchmark's WordPiece tokenizer).

    Why a writer here: ``write_checkpoint`` knows only the tiny and base shapes, and base is too slow for a
    benchmark of minutes on a 2-core CPU. Why ``init_std`` and ``head_scale``: with the default 0.02 init every
    document gets almost the same [CLS] state, and a large head saturates the softmax, so all documents get the
    same probabilities and a parity check could not catch results returned in the wrong order. Measured on the
    domain mix with a head scaled by 3: the probabilities' std across documents is 0.14 for tiny at 0.2 (0.005 at
    0.05) and 0.08 for xsmall at 0.05. Wider is not better for deep models: xsmall at 0.2 is ill-conditioned (its
    fp32 probabilities differ from fp64 by 8e-3), which would hide the ~1e-6 parity under its own noise.
    """
    import torch
    from transformers import DebertaV2Config

    from benchmarks.synthetic import benchmark_tokenizer
    from sparkcurate.classifiers.domain import DOMAIN_LABELS
    from sparkcurate.models.heads import ClsHeadModel

    tokenizer = benchmark_tokenizer()
    dims = dict(SHAPES[shape])
    if layers:
        dims["num_hidden_layers"] = layers
    # The real vocabulary size (128,100) except for tiny: the embedding table is looked up, not multiplied, so it
    # costs memory, not time.
    vocab = max(len(tokenizer), 128) if shape == "tiny" else 128_100
    cfg = DebertaV2Config(vocab_size=vocab, relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm",
                          share_att_key=True, pos_att_type=["p2c", "c2p"], max_relative_positions=-1,
                          position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7,
                          max_position_embeddings=512, **dims)
    base = out / "base_model"
    base.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(base)
    torch.manual_seed(seed)
    model = ClsHeadModel(cfg, len(DOMAIN_LABELS))
    with torch.no_grad():
        for param in model.model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, init_std or INIT_STD[shape])
        model.fc.weight.mul_(head_scale)  # fairly decisive predictions, short of a saturated softmax
    from benchmarks.spark_e2e import save_head_checkpoint

    return save_head_checkpoint(out, model, base, DOMAIN_LABELS, tokenizer)


def plain_loop(ckpt: Path) -> Callable[[Sequence[str]], np.ndarray]:
    """The hand-written loop, over the classifier's own module (identical weights and head)."""
    import torch
    from transformers import AutoTokenizer

    from sparkcurate.classifiers import DomainClassifier

    model = DomainClassifier(model=str(ckpt), device="cpu").load_module(ckpt).float().eval()
    tokenizer = AutoTokenizer.from_pretrained(str(ckpt))

    def predict(texts: Sequence[str]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), PLAIN_BATCH):
                batch = [t[:MAX_CHARS] for t in texts[start:start + PLAIN_BATCH]]
                enc = tokenizer(batch, truncation=True, max_length=MAX_TOKENS, padding=True, return_tensors="pt")
                out.append(model(enc["input_ids"], enc["attention_mask"]).float().numpy())
        return np.concatenate(out)

    return predict


def engine_predict(ckpt: Path):
    """The classifier's default CPU engine (what the Spark stage uses on a CPU)."""
    from sparkcurate.classifiers import DomainClassifier

    clf = DomainClassifier(model=str(ckpt), device="cpu")
    clf.preflight()
    return clf.load_engine("cpu")


def batch_shapes(lengths: np.ndarray, budget: int, max_batch: int) -> dict[str, list[tuple[int, int]]]:
    """(rows, padded width) of every forward each variant runs on these documents."""
    from sparkcurate.engine.batching import plan_microbatches

    plain = [(len(part), int(part.max())) for part in
             (lengths[i:i + PLAIN_BATCH] for i in range(0, len(lengths), PLAIN_BATCH))]
    engine = [(len(idx), int(lengths[idx].max())) for idx in plan_microbatches(lengths, budget, max_batch)]
    return {"plain_transformers_loop": plain, "sparkcurate_engine_cpu": engine}


def work(shapes: list[tuple[int, int]]) -> dict[str, int]:
    """What the padded forwards cost: tokens through the linear layers (padding included) and attention score
    cells (rows x width^2, per head and layer), which grow with the square of the padded width."""
    return {"forwards": len(shapes), "padded_tokens": sum(r * w for r, w in shapes),
            "attention_cells": sum(r * w * w for r, w in shapes), "largest_forward_rows": max(r for r, _ in shapes)}


def timed(fn: Callable[[Sequence[str]], np.ndarray], texts: Sequence[str]) -> tuple[dict[str, float], np.ndarray]:
    """Wall seconds, and the process's user and system CPU seconds (system time shows allocation churn)."""
    before, start = os.times(), time.perf_counter()
    probs = fn(texts)
    wall, after = time.perf_counter() - start, os.times()
    return {"wall": wall, "user": after.user - before.user, "sys": after.system - before.system}, probs


def measure(variants: dict[str, Callable], texts: list[str], repeat: int, warm_up: int) -> dict[str, dict]:
    """Warm each variant up, then time ``repeat`` rounds with alternating order; keep every round's seconds."""
    for name, fn in variants.items():
        t, _ = timed(fn, texts[:warm_up])
        log.info("warm-up %s: %d docs in %.2f s", name, warm_up, t["wall"])
    runs: dict[str, dict] = {name: {"times": [], "load": [], "probs": None} for name in variants}
    names = list(variants)
    for i in range(repeat):
        for name in names if i % 2 == 0 else names[::-1]:
            t, probs = timed(variants[name], texts)
            runs[name]["times"].append(t)
            runs[name]["load"].append(round(os.getloadavg()[0], 2))
            runs[name]["probs"] = probs
            log.info("round %d %s: %.2f s (%.1f docs/s; cpu user %.1f s, sys %.1f s; load %.2f)", i, name,
                     t["wall"], len(texts) / t["wall"], t["user"], t["sys"], os.getloadavg()[0])
    return runs


def cpu_name() -> str:
    """platform.processor() is often empty on Linux: fall back to /proc/cpuinfo's model name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="xsmall")
    parser.add_argument("--layers", type=int, default=None, help="override the shape's number of layers")
    parser.add_argument("--docs", type=int, default=192)
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds per variant, order alternated")
    parser.add_argument("--warm-up-docs", type=int, default=2 * PLAIN_BATCH)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny model, 40 documents, one round (CI)")
    parser.add_argument("--results", default="benchmarks/results")
    args = parser.parse_args(argv)
    if args.smoke:
        args.shape, args.docs, args.repeat, args.warm_up_docs = "tiny", 40, 1, 8
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch
    import transformers

    from benchmarks.synthetic import DOMAIN, make_documents

    texts = make_documents(args.docs, DOMAIN, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_shaped_checkpoint(Path(tmp) / "model", args.shape, args.layers, args.seed)
        engine = engine_predict(ckpt)
        variants = {"plain_transformers_loop": plain_loop(ckpt), "sparkcurate_engine_cpu": engine.predict}
        lengths = engine.tokenize(texts).lengths
        runs = measure(variants, texts, args.repeat, args.warm_up_docs)
    tokens = int(lengths.sum())
    shapes = batch_shapes(lengths, engine.budget, engine.config.max_batch_size)
    plain_p, engine_p = runs["plain_transformers_loop"]["probs"], runs["sparkcurate_engine_cpu"]["probs"]
    diff = float(np.abs(plain_p - engine_p).max())
    agree = float((plain_p.argmax(axis=1) == engine_p.argmax(axis=1)).mean())
    # How much the probabilities differ between documents: the parity check means something only if this is far
    # above max_prob_abs_diff (results in the wrong order would then show).
    spread = float(engine_p.std(axis=0).max())
    results = []
    for name, run in runs.items():
        best = min(run["times"], key=lambda t: t["wall"])
        cost = work(shapes[name])
        results.append({
            "name": name, "docs": args.docs, "seconds": round(best["wall"], 3),
            "docs_per_s": round(args.docs / best["wall"], 2), "tokens_per_s": round(tokens / best["wall"], 1),
            **cost, "padding_fraction": round(1 - tokens / cost["padded_tokens"], 4),
            "cpu_user_s": round(best["user"], 2), "cpu_sys_s": round(best["sys"], 2),
            "all_seconds": [round(t["wall"], 3) for t in run["times"]], "load_avg_1m_after": run["load"],
            "max_prob_abs_diff": diff, "argmax_agreement": agree, "prob_std_across_docs": spread,
        })
    results[0].update(batch_size=PLAIN_BATCH, order="arrival")
    results[1].update(token_budget=engine.budget, max_batch_size=engine.config.max_batch_size,
                      precision=engine.precision, forward="packed" if engine.packed else "padded",
                      order="length-sorted")
    dims = dict(SHAPES[args.shape], **({"num_hidden_layers": args.layers} if args.layers else {}))
    doc = {
        "device": f"CPU: {cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "date": date.today().isoformat(),
        "command": "python -m benchmarks.cpu_path " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "platform_processor": platform.processor(), "torch_num_threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "model": {"shape": args.shape, **dims, "labels": 26, "random_weights": True},
        "docs": args.docs, "tokens": tokens, "mean_tokens": round(tokens / args.docs, 1),
        "max_chars": MAX_CHARS, "max_tokens": MAX_TOKENS, "repeat": args.repeat, "warm_up_docs": args.warm_up_docs,
        "note": "best of the rounds; rounds alternate which variant runs first; same process, documents, weights",
        "results": results,
        "speedup": round(results[1]["docs_per_s"] / results[0]["docs_per_s"], 3),
    }
    name = "cpu-path-smoke" if args.smoke else "cpu-path"
    out = Path(args.results) / f"{doc['date']}-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    for r in results:
        print(f"{r['name']:26s} {r['docs_per_s']:>9} docs/s {r['tokens_per_s']:>10} tokens/s  "
              f"padding {r['padding_fraction']:.1%}")
    print(f"speedup {doc['speedup']}x   max |prob diff| {diff:.2e} (spread across docs {spread:.2e})   -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
