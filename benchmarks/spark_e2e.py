"""End-to-end Spark benchmark: JSONL read -> classify -> JSONL written partitioned by source file, with the
``predict_batch_udf`` + Hugging Face fp32 baseline measured in the same run, on the same card.

Runs sparkcurate's real job (``sparkcurate.pipeline.run``: rejects, persisted rows, summary, model load included)
in local-cluster mode with GPU-scheduled tasks (the discovery script in conf/), on synthetic documents of the
anchors' length mix (benchmarks/NOTES.md), with a DeBERTa-v3-base-shaped classifier (random weights, 26 labels)
written in the published checkpoint layout.

    python3 -m benchmarks.spark_e2e --docs 100000 --tasks-per-gpu 4        # on a GPU machine with Spark installed
    python3 -m benchmarks.spark_e2e --smoke                                  # CPU, tiny model, seconds (CI)
    python3 -m benchmarks.spark_e2e --docs 200000 --files 64 --layouts 1x1,2x1,1x4,2x4 --warm-up-docs 2000
                                                            # GPU scaling: one Spark application per layout

The input schema is passed (``id STRING, text STRING``) unless ``--infer-schema``: inference is a full extra
read of the data that a production job avoids the same way (``--schema``).

Formats and the RAPIDS Accelerator (issues 20 and 21; ``benchmarks/spark_formats.py`` has the rows): ``--formats``
runs, on the same documents and each in a fresh application, JSONL in/out re-serialized (today's path), JSONL
byte-exact, Parquet in/out and attribute files, and the baseline; with ``--rapids-jar`` also the
``--rapids-formats`` rows with the plugin on, per memory variant, each output checked against the plugin-off one
(same records and labels, probabilities within 1e-6) and its GPU/CPU operators recorded. On the GPU machine
(Python with torch; Spark 4.2.0 and Java 17 unpacked under /tmp/kit, the RAPIDS jar in its Spark's jars/):

    source /tmp/kit/env.sh && export PYTHONPATH=$PWD:$PYTHONPATH HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    python3 -m benchmarks.spark_e2e --formats all --docs 100000 --files 32 --tasks-per-gpu 1 \
        --warm-up-docs 2000 --out $OUT/h100-spark-e2e-formats.json                          # issue 20, ~5 min
    python3 -m benchmarks.spark_e2e --formats parquet,jsonl_reserialize --rapids-jar on-classpath \
        --rapids-variants pool-NONE,pool-ASYNC-0.3 --docs 100000 --files 32 --tasks-per-gpu 1 \
        --warm-up-docs 2000 --skip-baseline --out $OUT/h100-spark-e2e-rapids-pool.json      # issue 21, ~6 min
    python3 -m benchmarks.spark_e2e --formats parquet,jsonl_reserialize --rapids-jar on-classpath \
        --rapids-variants pool-NONE+python-gpu,pool-ASYNC-0.3+python-gpu --docs 100000 --files 32 \
        --tasks-per-gpu 1 --warm-up-docs 2000 --skip-baseline --out $OUT/h100-spark-e2e-rapids-python.json

    python3 -m benchmarks.spark_e2e --smoke --formats all                    # CPU, tiny model (CI: test_benchmarks)
    python3 -m benchmarks.spark_e2e --smoke --formats all --rapids-jar JAR   # + plugin rows in explainOnly mode
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from benchmarks.spark_formats import DEFAULT_RAPIDS_FORMATS, DEFAULT_RAPIDS_VARIANTS
from sparkcurate.spark.planning import DEFAULT_WAVES

log = logging.getLogger("benchmarks.spark_e2e")
REPO = Path(__file__).resolve().parent.parent


def write_checkpoint(out: Path, smoke: bool, seed: int = 0, head_scale: float = 20.0,
                     init_std: float | None = None, labels: list[str] | None = None) -> Path:
    """A published-layout DeBERTa head checkpoint: config.json (+ base_model dir), model.safetensors, tokenizer."""
    import torch
    from transformers import DebertaV2Config

    from benchmarks.synthetic import benchmark_tokenizer
    from sparkcurate.classifiers.domain import DOMAIN_LABELS
    from sparkcurate.models.heads import ClsHeadModel

    tokenizer = benchmark_tokenizer()
    base = out / "base_model"
    base.mkdir(parents=True, exist_ok=True)
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128) if smoke else \
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    cfg = DebertaV2Config(vocab_size=max(len(tokenizer), 128) if smoke else 128100, relative_attention=True,
                          position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
                          pos_att_type=["p2c", "c2p"], max_relative_positions=-1, position_biased_input=False,
                          type_vocab_size=0, layer_norm_eps=1e-7, max_position_embeddings=512, **shape)
    cfg.save_pretrained(base)
    torch.manual_seed(seed)
    labels = list(labels or DOMAIN_LABELS)
    model = ClsHeadModel(cfg, len(labels))
    with torch.no_grad():
        if init_std is not None:  # a wider backbone init: documents get distinct [CLS] states, as trained ones do
            for name, param in model.model.named_parameters():
                if param.dim() == 2:
                    param.normal_(0.0, init_std)
        model.fc.weight.mul_(head_scale)  # decisive predictions, as a trained head gives
    return save_head_checkpoint(out, model, base, labels, tokenizer)


def save_head_checkpoint(out: Path, model, base: Path, labels: list[str], tokenizer) -> Path:
    """Write ``model`` (a ClsHeadModel) in the published layout: model.safetensors, config.json naming the
    backbone config dir ``base`` and the labels, and the tokenizer files."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    save_file(state, str(out / "model.safetensors"))
    id2label = dict(enumerate(labels))
    (out / "config.json").write_text(json.dumps({
        "base_model": str(base), "fc_dropout": 0.2, "id2label": id2label,
        "label2id": {v: k for k, v in id2label.items()}, "model_type": "deberta-v2"}))
    tokenizer.save_pretrained(str(out))
    return out


def discovery_script() -> str:
    """conf/getGpusResources.sh, checked: if it finds no GPU although torch does (no nvidia-smi on PATH), a
    script listing torch's devices stands in, so the job cannot wait forever for GPUs nobody announced."""
    import subprocess

    script = str(REPO / "conf" / "getGpusResources.sh")
    found = json.loads(subprocess.run([script], capture_output=True, text=True, timeout=60).stdout)["addresses"]
    log.info("GPU discovery script found %s", found)
    if found:
        return script
    import torch

    n = torch.cuda.device_count()
    fallback = Path(tempfile.mkdtemp()) / "gpus.sh"
    addresses = ", ".join(f'"{i}"' for i in range(n))
    fallback.write_text(f"#!/bin/sh\necho '{{\"name\": \"gpu\", \"addresses\": [{addresses}]}}'\n")
    fallback.chmod(0o755)
    log.warning("discovery script found no GPU; using torch's %d device(s)", n)
    return str(fallback)


def gpu_session(args, extra: dict[str, str] | None = None):
    """The benchmark's application: local-cluster with GPU-scheduled tasks (``local[2]`` for ``--smoke``), plus
    ``extra`` settings (a RAPIDS row's plugin and memory settings)."""
    from sparkcurate.spark.session import get_session

    cores = args.tasks_per_gpu * args.gpus
    conf = {
        "spark.ui.enabled": "false",
        "spark.executorEnv.PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO)),
        "spark.executorEnv.TOKENIZERS_PARALLELISM": "true",
        "spark.driver.memory": "8g",
    }
    if getattr(args, "partition_mb", 0):  # fixed splits instead of the job's planned ones (--waves)
        conf["spark.sql.files.maxPartitionBytes"] = str(args.partition_mb * 2**20)
    if not args.smoke:
        discovery = discovery_script()
        conf.update({
            "spark.worker.resource.gpu.amount": str(args.gpus),
            "spark.worker.resource.gpu.discoveryScript": discovery,
            "spark.executor.resource.gpu.amount": str(args.gpus),
            "spark.executor.resource.gpu.discoveryScript": discovery,
            "spark.task.resource.gpu.amount": str(1 / args.tasks_per_gpu),
            "spark.executor.cores": str(cores),
        })
    master = f"local-cluster[1,{cores},{args.executor_mb}]" if not args.smoke else "local[2]"
    return get_session(master, {**conf, **(extra or {})})


def run_sparkcurate(spark, data: Path, out: Path, ckpt: Path, args) -> dict:
    from sparkcurate.classifiers import DomainClassifier
    from sparkcurate.pipeline import JobOptions, run

    clf = DomainClassifier(model=str(ckpt), device="cpu" if args.smoke else "auto", token_budget=args.token_budget)
    schema = None if args.infer_schema else SYNTHETIC_SCHEMA
    start = time.perf_counter()
    waves = 0 if args.partition_mb else args.waves
    # restart: every row classifies every document, even where --work-dir keeps an earlier call's output (a
    # resumed run would reuse its units and time nothing)
    summary = run(spark, JobOptions(input=str(data), output=str(out), classifiers=[clf], quiet=True, schema=schema,
                                    waves=waves, restart=True))
    seconds = time.perf_counter() - start
    if (summary.get("units") or {}).get("reused"):
        raise RuntimeError(f"the timed run reused {summary['units']['reused']} committed unit(s): not a full run")
    return {"name": "sparkcurate_spark_e2e", "docs": summary["input_records"], "seconds": round(seconds, 2),
            "docs_per_s": round(summary["input_records"] / seconds, 1), "task_devices": summary["task_devices"],
            "tasks_per_gpu": args.tasks_per_gpu, "summary_docs_per_s": summary["docs_per_s"],
            "timings_s": summary.get("timings_s"), "task_stats": summary.get("task_stats"),
            "schema": "inferred" if schema is None else schema, "precision": clf.precision,
            "input_splits": summary.get("input_splits")}


def run_predict_batch_udf(spark, data: Path, out: Path, ckpt: Path, args) -> dict:
    """The shape of the Spark docs' example: predict_batch_udf, a Hugging Face model in fp32, batch 64."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    try:
        from pyspark.ml.functions import predict_batch_udf
    except Exception as exc:  # pragma: no cover - pyspark.ml missing from a slim install
        return {"name": "predict_batch_udf_fp32", "skipped": f"pyspark.ml unavailable: {exc}"}
    ckpt_s, device = str(ckpt), "cpu" if args.smoke else "cuda"

    def make_predict_fn():
        import numpy as np
        import torch
        from transformers import AutoTokenizer

        from sparkcurate.classifiers import DomainClassifier

        clf = DomainClassifier(model=ckpt_s)
        clf.preflight()
        model = clf.load_module(Path(ckpt_s)).to(device).eval()
        tok = AutoTokenizer.from_pretrained(ckpt_s)

        def predict(texts: np.ndarray) -> np.ndarray:
            enc = tok([str(t) for t in texts], truncation=True, max_length=512, padding=True, return_tensors="pt")
            with torch.no_grad():
                probs = model(enc["input_ids"].to(device), enc["attention_mask"].to(device))
            return probs.argmax(dim=1).cpu().numpy().astype(np.int32)

        return predict

    udf = predict_batch_udf(make_predict_fn, return_type=T.IntegerType(), batch_size=64)
    start = time.perf_counter()
    df = spark.read.json(str(data)).withColumn("file_name", F.input_file_name())
    df = df.withColumn("domain_pred", udf(F.substring("text", 1, 2000)))
    df.write.mode("overwrite").partitionBy("file_name").json(str(out))
    seconds = time.perf_counter() - start
    n = spark.read.json(str(out)).count()
    return {"name": "predict_batch_udf_fp32", "docs": n, "seconds": round(seconds, 2),
            "docs_per_s": round(n / seconds, 1)}


def card() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return "cpu"


SYNTHETIC_SCHEMA = "id STRING, text STRING"


def parse_layouts(text: str) -> list[tuple[int, int]]:
    """``"1x1,1x4,2x1"`` -> [(gpus, tasks per GPU), ...]: the configurations to run back to back."""
    out = []
    for item in text.split(","):
        gpus, sep, tasks = item.strip().partition("x")
        if not sep or not gpus.isdigit() or not tasks.isdigit() or int(gpus) < 1 or int(tasks) < 1:
            raise argparse.ArgumentTypeError(f"layouts are GPUSxTASKS_PER_GPU, e.g. 1x4; got {item!r}")
        out.append((int(gpus), int(tasks)))
    return out


def run_layout(args, gpus: int, tasks_per_gpu: int, root: Path, ckpt: Path, warm_up: bool) -> list[dict]:
    """One Spark application (fresh executors, so model loads are timed) for one GPU layout."""
    layout = argparse.Namespace(**{**vars(args), "gpus": gpus, "tasks_per_gpu": tasks_per_gpu})
    spark = gpu_session(layout)
    try:
        if warm_up:
            # Fills the node's Triton kernel cache (as any earlier job on the node has); its timing is dropped.
            # --warm-app keeps the application: its Python workers keep their loaded models, as a notebook's
            # second job on a running cluster does; otherwise the timed job is a fresh application.
            run_sparkcurate(spark, root / "warm-data", root / "warm-out", ckpt, layout)
            if not args.warm_app:
                spark.stop()
                spark = gpu_session(layout)
        wait_until_executors(spark)
        result = run_sparkcurate(spark, root / "data", root / f"out-{gpus}x{tasks_per_gpu}", ckpt, layout)
        if args.layouts:
            suffix = "_warm_app" if args.warm_app else ""
            result["name"] = f"sparkcurate_spark_e2e_{gpus}gpu_{tasks_per_gpu}task{suffix}"
        result["gpus"] = gpus
        result["application"] = "warm (second job, models loaded)" if args.warm_app and warm_up else "fresh"
        log.info("%s", result)
        if not args.skip_baseline and not args.layouts:
            base = run_predict_batch_udf(spark, root / "baseline-data", root / "out-baseline", ckpt, args)
            log.info("%s", base)
            return [result, base]
        return [result]
    finally:
        spark.stop()


def wait_until_executors(spark, timeout_s: float = 120.0) -> None:
    """Start the clock on a running cluster: the executors this layout asked for are registered (their JVM launch
    is cluster start, not part of a job). Python workers, model loads and the JVMs' first-job warm-up stay in."""
    from sparkcurate.spark import planning

    planning.wait_for_executors(spark, planning.expected_executors(spark) or 1, timeout_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--baseline-docs", type=int, default=4_000, help="documents for the slow baseline")
    p.add_argument("--files", type=int, default=32)
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--tasks-per-gpu", type=int, default=4)
    p.add_argument("--layouts", type=parse_layouts, default=None,
                   help="GPUSxTASKS_PER_GPU list run back to back, e.g. 1x1,2x1,1x4,2x4 (no baseline then)")
    p.add_argument("--infer-schema", action="store_true",
                   help="let the job infer the input schema (a full extra pass over the data); default: pass it")
    p.add_argument("--warm-up-docs", type=int, default=0,
                   help="before each timed run, a run over this many documents in the same application")
    p.add_argument("--warm-app", action="store_true",
                   help="time a second job in the warm-up's application (models already loaded in its workers)")
    p.add_argument("--executor-mb", type=int, default=32_768)
    p.add_argument("--waves", type=int, default=DEFAULT_WAVES,
                   help="classify tasks per GPU slot (the job's planned input splits)")
    p.add_argument("--partition-mb", type=int, default=0,
                   help="fixed input splits of this size instead of the planned ones (the earlier rounds used 16)")
    p.add_argument("--token-budget", type=int, default=None)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model, a few hundred documents")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--work-dir", help="keep the generated data here and reuse it in a later call (same sizes)")
    p.add_argument("--merge-with", help="a results file of an earlier call on the same machine: its rows are "
                                        "kept in front of this call's (for a scaling table over two calls)")
    formats = p.add_argument_group("formats and RAPIDS rows (benchmarks/spark_formats.py), one application each")
    formats.add_argument("--formats", help="rows to run on the same documents: "
                                           "jsonl_reserialize,jsonl_exact,parquet,attributes or all")
    formats.add_argument("--rapids-jar", help="the RAPIDS Accelerator jar, or on-classpath (in Spark's jars/): "
                                              "adds the --rapids-formats rows with the plugin on")
    formats.add_argument("--rapids-formats", default=",".join(DEFAULT_RAPIDS_FORMATS))
    formats.add_argument("--rapids-variants", default=",".join(DEFAULT_RAPIDS_VARIANTS),
                         help="memory variants: pool-NONE, pool-ASYNC-<fraction>, each optionally +python-gpu")
    formats.add_argument("--rapids-explain-only", action="store_true",
                         help="the plugin in explainOnly mode (always so with --smoke: no GPU)")
    formats.add_argument("--variant-timeout", type=float, default=1800, help="seconds one application may run")
    formats.add_argument("--variant", help=argparse.SUPPRESS)  # a child: run the row described in this JSON file
    p.add_argument("--out", help="the results file (default: --results/<date>-<card>-spark-e2e[-formats].json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.variant:
        from benchmarks.spark_formats import run_variant

        run_variant(json.loads(Path(args.variant).read_text()))
        return 0
    if args.smoke:
        args.docs, args.baseline_docs, args.files, args.tasks_per_gpu = 200, 100, 2, 2
        args.warm_up_docs = min(args.warm_up_docs, 50)
    if args.formats:
        return main_formats(args, argv)

    results = earlier_results(args.merge_with) if args.merge_with else []
    with contextlib.ExitStack() as stack:
        root = Path(args.work_dir) if args.work_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        ckpt = write_inputs(args, root)
        for gpus, tasks in args.layouts or [(args.gpus, args.tasks_per_gpu)]:
            results.extend(run_layout(args, gpus, tasks, root, ckpt, warm_up=bool(args.warm_up_docs)))
    base = next((r for r in results if r["name"] == "predict_batch_udf_fp32" and "docs_per_s" in r), None)
    if base:
        results[0]["speedup_vs_predict_batch_udf"] = round(results[0]["docs_per_s"] / base["docs_per_s"], 2)
    doc = {"device": card(), "date": date.today().isoformat(),
           "command": "python3 -m benchmarks.spark_e2e " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
           "results": results}
    scaling = scaling_table(results)
    if scaling:
        doc["scaling"] = scaling
    name = "cpu-smoke" if args.smoke else card().replace(" ", "-")
    path = Path(args.out or Path(args.results) / f"{doc['date']}-{name}-spark-e2e.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    for r in results:
        print(f"{r['name']:40s} {r.get('docs_per_s', '-'):>10} docs/s  {r.get('seconds', '-')} s  "
              f"{r.get('skipped', '')}")
    for key, value in scaling.items():
        print(f"scaling {key}: {value}")
    print(f"-> {path}")
    return 0


def write_inputs(args, root: Path) -> Path:
    """The checkpoint and the documents every row reads (the measured, the baseline's and the warm-up's); returns
    the checkpoint's folder."""
    ckpt = write_checkpoint(root / "model", args.smoke)
    synthetic_data(root / "data", args.docs, args.files, seed=0)
    synthetic_data(root / "baseline-data", args.baseline_docs, max(1, args.files // 8), seed=1)
    if args.warm_up_docs:
        synthetic_data(root / "warm-data", args.warm_up_docs, 2, seed=2)
    return ckpt


def main_formats(args, argv: list[str] | None) -> int:
    """``--formats``: every format row (and, with ``--rapids-jar``, the plugin rows) on the same documents, each in
    a fresh application, and the baseline; one results file."""
    import platform

    from benchmarks.spark_formats import measure

    with contextlib.ExitStack() as stack:
        root = Path(args.work_dir) if args.work_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        ckpt = write_inputs(args, root)
        found = measure(args, root, ckpt)
    doc = {"card": card(), "device": card(), "date": date.today().isoformat(),
           "command": "python3 -m benchmarks.spark_e2e " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
           "host": f"{platform.node()}: {os.cpu_count()} CPUs", "tasks_per_gpu": args.tasks_per_gpu,
           "note": "each row a fresh Spark application (model load included in seconds, JVM start in app_seconds); "
                   "same documents in every row (JSONL, and a Parquet copy); probabilities written in every row",
           **found}
    name = "cpu-smoke" if args.smoke else card().replace(" ", "-")
    path = Path(args.out or Path(args.results) / f"{doc['date']}-{name}-spark-e2e-formats.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    for line in doc["table"]:
        print("  ".join(f"{k}={v}" for k, v in line.items()))
    print(f"-> {path}")
    failed = [r["name"] for r in found["rows"] if "error" in r]
    if failed:
        log.error("rows that failed: %s (their log tails are in the results)", failed)
    return 1 if failed else 0


def synthetic_data(out: Path, docs: int, files: int, seed: int) -> None:
    """The synthetic JSONL input, generated once per (docs, files, seed) in a kept ``--work-dir``."""
    from benchmarks.synthetic import write_jsonl

    stamp = out.with_name(out.name + ".generated.json")
    wanted = {"docs": docs, "files": files, "seed": seed}
    if stamp.exists() and out.exists() and json.loads(stamp.read_text()) == wanted:
        log.info("reusing %s (%s)", out, wanted)
        return
    shutil.rmtree(out, ignore_errors=True)
    write_jsonl(out, docs, files, seed=seed)
    stamp.write_text(json.dumps(wanted))


def earlier_results(path: str) -> list[dict]:
    """The result rows of an earlier call, refused when they come from another card."""
    doc = json.loads(Path(path).read_text())
    if doc["device"] != card():
        raise SystemExit(f"{path} was measured on {doc['device']!r}, this machine is {card()!r}: not merged")
    for row in doc["results"]:
        row.setdefault("command", doc["command"])
    return list(doc["results"])


def scaling_table(results: list[dict]) -> dict[str, float]:
    """Throughput with N GPUs over throughput with one, per tasks-per-GPU setting and kind of application (fresh
    or warm) measured both ways."""
    by = {(r.get("gpus"), r.get("tasks_per_gpu"), r.get("application", "fresh")): r for r in results if r.get("gpus")}
    out = {}
    for (gpus, tasks, app), r in sorted(by.items()):
        one = by.get((1, tasks, app))
        if gpus > 1 and one:
            key = f"{gpus}gpu_vs_1gpu_{tasks}task" + ("" if app == "fresh" else "_warm_app")
            out[f"{key}_job"] = round(r["docs_per_s"] / one["docs_per_s"], 3)
            a, b = r.get("timings_s") or {}, one.get("timings_s") or {}
            if a.get("read_classify_count") and b.get("read_classify_count"):
                out[f"{key}_classify_phase"] = round(b["read_classify_count"] / a["read_classify_count"], 3)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
