"""Several classifiers in one pass vs one run per classifier (issue: "one pass over domain + quality +
fineweb-edu costs clearly less than three separate runs").

Runs the real job (``sparkcurate.pipeline.run``: JSONL read, classify, write, rejects, summary) on synthetic
documents with small models of the three real architectures (DeBERTa-v2 heads for domain and quality, a BERT
regression model for FineWeb-Edu) built like the test fixtures, on this machine's CPU. What one pass saves is
the reading, parsing, writing and counting that separate runs repeat; the model work is the same either way.

    python -m benchmarks.one_pass --docs 4000 --master 'local[2]'
    python3 -m benchmarks.one_pass --gpu --docs 50000 --files 16 --tasks-per-gpu 4   # GPU machine, base-size models

``--gpu``: the GPU machine's local-cluster with GPU-scheduled tasks (as ``benchmarks.spark_e2e``), and models of
the published sizes (DeBERTa-v3-base shaped domain and quality heads, a BERT-base FineWeb-Edu regressor; random
weights), so the model work has its real weight against the reading, parsing and writing that one pass saves.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

log = logging.getLogger("benchmarks.one_pass")


def build_models(root: Path) -> dict[str, Path]:
    from tests.fixtures.tiny_models import (
        DOMAIN_LABELS, QUALITY_LABELS, make_deberta_classifier, make_fineweb_edu_classifier)

    return {"domain": make_deberta_classifier(root / "domain", DOMAIN_LABELS, seed=1),
            "quality": make_deberta_classifier(root / "quality", QUALITY_LABELS, seed=2, max_tokens=1024),
            "fineweb-edu": make_fineweb_edu_classifier(root / "fineweb", seed=3)}


def build_base_models(root: Path) -> dict[str, Path]:
    """Published-size models (random weights) for the GPU run, all with the benchmark's WordPiece tokenizer."""
    from benchmarks.spark_e2e import write_checkpoint
    from sparkcurate.classifiers.quality import QUALITY_LABELS

    return {"domain": write_checkpoint(root / "domain", smoke=False, seed=1),
            "quality": write_checkpoint(root / "quality", smoke=False, seed=2, labels=QUALITY_LABELS),
            "fineweb-edu": write_bert_regressor(root / "fineweb", seed=3)}


def write_bert_regressor(out: Path, seed: int) -> Path:
    """HuggingFaceFW/fineweb-edu-classifier's layout at its real size (BERT-base, one regression output)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from benchmarks.synthetic import benchmark_tokenizer

    tokenizer = benchmark_tokenizer()
    config = BertConfig(vocab_size=max(len(tokenizer), 30522), hidden_size=768, num_hidden_layers=12,
                        num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512, num_labels=1,
                        problem_type="regression", pad_token_id=tokenizer.pad_token_id,
                        architectures=["BertForSequenceClassification"])
    torch.manual_seed(seed)
    BertForSequenceClassification(config).eval().save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


def classifiers(models: dict[str, Path], names: list[str], device: str = "cpu"):
    from sparkcurate.classifiers.registry import get

    return [get(n)(model=str(models[n]), device=device) for n in names]


def timed_run(spark, data: Path, out: Path, clfs, schema: str | None = None) -> float:
    from sparkcurate.pipeline import JobOptions, run

    start = time.perf_counter()
    summary = run(spark, JobOptions(input=str(data), output=str(out), classifiers=clfs, quiet=True, schema=schema))
    elapsed = time.perf_counter() - start
    assert summary["output_records"] + summary["filtered_records"] + summary["rejected_records"] == \
        summary["input_records"]
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=4000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--gpu", action="store_true", help="GPU local-cluster and published-size models")
    parser.add_argument("--tasks-per-gpu", type=int, default=4)
    parser.add_argument("--fresh-apps", action="store_true",
                        help="every timed run in its own Spark application, as separate jobs run: Spark start, "
                             "Python workers and model loads counted on both sides (default: one warm application)")
    parser.add_argument("--results", default="benchmarks/results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from benchmarks.synthetic import write_jsonl

    names = ["domain", "quality", "fineweb-edu"]
    device = "auto" if args.gpu else "cpu"
    schema = "id STRING, text STRING"  # given, as a production job would (no inference pass on either side)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = build_base_models(root / "models") if args.gpu else build_models(root / "models")
        write_jsonl(root / "data", args.docs, args.files)
        write_jsonl(root / "warm-data", min(args.docs, 2000), 2, seed=2)
        spark = session(args)

        def run_one(tag: str, group: list[str]) -> float:
            nonlocal spark
            if not args.fresh_apps:
                return timed_run(spark, root / "data", root / tag, classifiers(models, group, device), schema)
            spark.stop()
            start = time.perf_counter()  # the new application's start is part of a separate job's cost
            spark = session(args)
            return (time.perf_counter() - start
                    + timed_run(spark, root / "data", root / tag, classifiers(models, group, device), schema))

        # JVM, Python workers, models and (on GPUs) kernel caches warm before anything is timed.
        timed_run(spark, root / "warm-data", root / "warm", classifiers(models, names, device), schema)
        one, separate = [], []
        for i in range(args.repeat):
            # Alternate which goes first, so a change in machine load biases neither side.
            steps = ["one", "sep"] if i % 2 == 0 else ["sep", "one"]
            for kind in steps:
                if kind == "one":
                    one.append(run_one(f"one-{i}", names))
                else:
                    separate.append(sum(run_one(f"sep-{i}-{n}", [n]) for n in names))
            log.info("round %d: one pass %.1f s, three runs %.1f s", i, one[-1], separate[-1])
        spark.stop()
    best_one, best_sep = min(one), min(separate)
    if args.gpu:
        from benchmarks.spark_e2e import card

        where = f"{card()}, local-cluster, {args.tasks_per_gpu} tasks per GPU"
        note = "published-size models (random weights) on the GPU; " + (
            "each run its own Spark application (start and model loads counted)" if args.fresh_apps
            else "models stay loaded in the workers between runs")
    else:
        where = f"CPU: {platform.processor() or platform.machine()}, {args.master}"
        note = "small models of the real architectures on CPU: " + (
            "each run its own Spark application (start and model loads counted)" if args.fresh_apps
            else "the saving is the repeated read/parse/write")
    result = {
        "device": where,
        "date": date.today().isoformat(),
        "command": "python -m benchmarks.one_pass " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "docs": args.docs,
        "note": note,
        "results": [
            {"name": "one_pass_domain_quality_fineweb", "seconds": round(best_one, 2),
             "docs_per_s": round(args.docs / best_one, 1), "all_seconds": [round(x, 2) for x in one]},
            {"name": "three_separate_runs", "seconds": round(best_sep, 2),
             "docs_per_s": round(args.docs / best_sep, 1), "all_seconds": [round(x, 2) for x in separate]},
        ],
        "speedup": round(best_sep / best_one, 2),
    }
    tag = card().replace(" ", "-") if args.gpu else "cpu"
    suffix = "-fresh-apps" if args.fresh_apps else ""
    out = Path(args.results) / f"{result['date']}-{tag}-one-pass{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"one pass: {best_one:.1f} s   three runs: {best_sep:.1f} s   ({result['speedup']}x)   -> {out}")
    return 0


def session(args):
    """The CPU master given, or (``--gpu``) the GPU local-cluster of the Spark benchmark."""
    if args.gpu:
        from benchmarks.spark_e2e import gpu_session

        return gpu_session(argparse.Namespace(gpus=1, tasks_per_gpu=args.tasks_per_gpu, partition_mb=0,
                                              executor_mb=32_768, smoke=False))
    from sparkcurate.spark.session import get_session

    return get_session(args.master, {"spark.ui.enabled": "false"})


if __name__ == "__main__":
    raise SystemExit(main())
