"""Several classifiers in one pass vs one run per classifier (issue: "one pass over domain + quality +
fineweb-edu costs clearly less than three separate runs").

Runs the real job (``sparkcurate.pipeline.run``: JSONL read, classify, write, rejects, summary) on synthetic
documents with small models of the three real architectures (DeBERTa-v2 heads for domain and quality, a BERT
regression model for FineWeb-Edu) built like the test fixtures, on this machine's CPU. What one pass saves is
the reading, parsing, writing and counting that separate runs repeat; the model work is the same either way.

    python -m benchmarks.one_pass --docs 4000 --master 'local[2]'
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


def classifiers(models: dict[str, Path], names: list[str]):
    from sparkcurate.classifiers.registry import get

    return [get(n)(model=str(models[n]), device="cpu") for n in names]


def timed_run(spark, data: Path, out: Path, clfs) -> float:
    from sparkcurate.pipeline import JobOptions, run

    start = time.perf_counter()
    summary = run(spark, JobOptions(input=str(data), output=str(out), classifiers=clfs, quiet=True))
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
    parser.add_argument("--results", default="benchmarks/results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from benchmarks.synthetic import write_jsonl
    from sparkcurate.spark.session import get_session

    names = ["domain", "quality", "fineweb-edu"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = build_models(root / "models")
        write_jsonl(root / "data", args.docs, args.files)
        spark = get_session(args.master, {"spark.ui.enabled": "false"})
        timed_run(spark, root / "data", root / "warm", classifiers(models, names))  # JVM, workers, models warm
        one, separate = [], []
        for i in range(args.repeat):
            # Alternate which goes first, so a change in machine load biases neither side.
            steps = [("one", names), ("sep", names)] if i % 2 == 0 else [("sep", names), ("one", names)]
            for kind, group in steps:
                if kind == "one":
                    one.append(timed_run(spark, root / "data", root / f"one-{i}", classifiers(models, group)))
                else:
                    separate.append(sum(timed_run(spark, root / "data", root / f"sep-{i}-{n}",
                                                  classifiers(models, [n])) for n in group))
            log.info("round %d: one pass %.1f s, three runs %.1f s", i, one[-1], separate[-1])
        spark.stop()
    best_one, best_sep = min(one), min(separate)
    result = {
        "device": f"CPU: {platform.processor() or platform.machine()}, {args.master}",
        "date": date.today().isoformat(),
        "command": "python -m benchmarks.one_pass " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "docs": args.docs,
        "note": "small models of the real architectures on CPU: the saving is the repeated read/parse/write",
        "results": [
            {"name": "one_pass_domain_quality_fineweb", "seconds": round(best_one, 2),
             "docs_per_s": round(args.docs / best_one, 1), "all_seconds": [round(x, 2) for x in one]},
            {"name": "three_separate_runs", "seconds": round(best_sep, 2),
             "docs_per_s": round(args.docs / best_sep, 1), "all_seconds": [round(x, 2) for x in separate]},
        ],
        "speedup": round(best_sep / best_one, 2),
    }
    out = Path(args.results) / f"{result['date']}-cpu-one-pass.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"one pass: {best_one:.1f} s   three runs: {best_sep:.1f} s   ({result['speedup']}x)   -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
