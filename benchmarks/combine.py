"""Merge one card's GPU-stage and Spark end-to-end results into ``benchmarks/results/<date>-<card>.json`` with
the names the project tracks (sparkcurate_spark_e2e, sparkcurate_gpu_stage, predict_batch_udf_fp32,
sorted_bf16_baseline, ...). Both inputs must come from the same card; the commands that made them are kept.

    python -m benchmarks.combine benchmarks/results/2026-11-26-h100-gpu-stage.json \\
        benchmarks/results/2026-11-26-h100-spark-e2e.json --out benchmarks/results/2026-11-26-h100.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KEYS = ("name", "mix", "docs", "docs_per_s", "tokens_per_s", "argmax_agreement", "decisive_agreement",
        "max_prob_abs_diff", "decisive_max_prob_abs_diff", "prob_abs_diff_p999", "prob_diff_over_1e2_fraction",
        "worst_doc_margin", "peak_gpu_gb", "seconds", "notes", "timings_s", "task_devices", "tasks_per_gpu",
        "speedup_vs_predict_batch_udf")


def combine(gpu_stage: dict, e2e: dict, note: str | None = None) -> dict:
    results = []
    for r in e2e["results"]:
        results.append({k: r[k] for k in KEYS if k in r})
    for r in gpu_stage["results"]:
        row = {k: r[k] for k in KEYS if k in r}
        if r.get("mix") == "quality":
            row["name"] = f"{r['name']}_quality"
        results.append(row)
    doc = {"device": gpu_stage["device"], "date": gpu_stage["date"],
           "command": {"gpu_stage": gpu_stage["command"], "spark_e2e": e2e["command"]},
           "e2e_device": e2e["device"], "results": results}
    if note:
        doc["note"] = note
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("gpu_stage")
    p.add_argument("spark_e2e")
    p.add_argument("--out", required=True)
    p.add_argument("--note", help="a line kept in the file (e.g. which tracked variant this run left out)")
    args = p.parse_args(argv)
    doc = combine(json.loads(Path(args.gpu_stage).read_text()), json.loads(Path(args.spark_e2e).read_text()),
                  args.note)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    for r in doc["results"]:
        print(f"{r['name']:34s} {r.get('docs_per_s', '-'):>10} docs/s  agreement {r.get('argmax_agreement', '-')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
