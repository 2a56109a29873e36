"""The ``sparkcurate`` command: ``classify``, ``list``, ``report``.

Exit codes: 0 done; 1 the job failed; 2 bad arguments; 3 a model failed its pre-flight check; 4 bad input path;
5 no executor, GPU or CUDA device the job asks for (nothing written); 6 another run that is alive is writing to
the output (nothing was touched).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import sys
from typing import Any, NoReturn, Sequence

from sparkcurate.io.sinks import SINKS
from sparkcurate.io.sources import SOURCE_NAMES
from sparkcurate.spark.planning import DEFAULT_WAVES

log = logging.getLogger("sparkcurate")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MODEL, EXIT_INPUT, EXIT_RESOURCES, EXIT_BUSY = 0, 1, 2, 3, 4, 5, 6

# pyspark >= 4.1 warns "PySpark does not yet fully support pandas >= 3.0.0" whenever an Arrow UDF is built (our
# mapInArrow included) and on import of its test helpers. sparkcurate hands data to Python as Arrow batches and
# never converts through pandas, and the test suite passes with pandas 3 (and with pandas 1.5 under pyspark 3.5),
# so the command silences exactly that message from pyspark instead of printing it on every run.
PANDAS3_WARNING = "PySpark does not yet fully support pandas >= 3"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparkcurate",
        description="Classify JSONL text datasets on Spark with GPUs (NeMo Curator's classifiers), filter, write.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_classify_arguments(sub.add_parser(
        "classify", help="classify, filter and write a JSONL dataset",
        description="Read JSONL, classify every document, keep the filter's labels, write JSONL by source file.",
        epilog="Exit codes: 0 done, 1 job failed, 2 bad arguments, 3 model pre-flight failed, 4 bad input, 5 no "
               "executor/GPU/CUDA the job asks for (executors are awaited spark.sparkcurate.executorWaitTimeout, "
               "default 120s), 6 another run is writing to the output.",
    ))
    lst = sub.add_parser("list", help="show the classifiers, their models, limits and columns")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rep = sub.add_parser("report", help="(re)build OUT/_report/index.html from OUT/_summary.json")
    rep.add_argument("output", help="the output directory of a classify run")
    return parser


def add_classify_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--input", help="input directory (recursive), file or glob, read as --input-format says")
    where.add_argument("--input-table", metavar="DB.TABLE", help="a catalog table to read instead of --input")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--classifier", action="append", required=True, metavar="NAME[=MODEL]",
                   help="classifier name (see `sparkcurate list`), optionally =MODEL; repeat for one pass of several")
    p.add_argument("--model", help="model for a single --classifier: hub id, local directory or s3:// gs:// URI")
    p.add_argument("--revision", help="hub revision (commit) to pin")
    p.add_argument("--filter-by", action="append", metavar="[NAME:]LABEL,LABEL",
                   help="keep rows with these labels; NAME: picks the classifier when several run; repeated "
                        "filters must all hold (AND)")
    p.add_argument("--text-field", default="text", help="JSON field holding the text (default: text)")
    p.add_argument("--pred-column", help="prediction column (single classifier)")
    p.add_argument("--prob-column", help="also write the probability vector to this column (single classifier)")
    p.add_argument("--max-chars", type=int, help="character cut before tokenizing")
    p.add_argument("--max-tokens", type=int, help="token limit")
    p.add_argument("--batch-size", type=int, default=256, help="documents per micro-batch at most")
    p.add_argument("--token-budget", type=int, help="tokens per micro-batch (default 65536 on GPU, 8192 on CPU)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="where each task runs the model: auto (default) takes the GPU Spark gave the task, else a "
                        "local GPU, else the CPU; cuda fails where a task has no GPU; cpu never uses one")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16", "fp16-split"), default="auto",
                   help="auto: fp32 on CPU, fp16 on GPUs; fp16-split: fp16 with fp32-exact weights (closer to fp32, "
                        "slower)")
    p.add_argument("--labels", help="zero-shot labels: a .json/.txt file or 'Label=description;Label=...' "
                                    "(a value with ';' or '=' is inline, never a file name); at least two; a label "
                                    "without a description, or with an empty one, is described by its name "
                                    "('_' as spaces), in every form")
    p.add_argument("--param", action="append", metavar="[NAME:]KEY=VALUE",
                   help="a classifier option by name, e.g. aegis:adapter=permissive or zero-shot:temperature=0.1 "
                        "(values parsed as JSON when they can be); repeatable")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle-only checkpoints (weights-only load)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (needs --revision)")
    p.add_argument("--master", help="Spark master (default: the one spark-submit gives, else local[*])")
    p.add_argument("--conf", action="append", metavar="KEY=VALUE", help="Spark setting; repeatable")
    p.add_argument("--layout", choices=("partitioned", "mirror"), default="partitioned",
                   help="partitioned: OUT/file_name=<name>/part-*.json; mirror: OUT/<input name>")
    p.add_argument("--compression", metavar="CODEC",
                   help="output compression, as the format's convention: " + "; ".join(
                       f"{name}: {', '.join(sink.compressions)} (default {sink.compressions[0]})"
                       for name, sink in sorted(SINKS.items())))
    p.add_argument("--input-format", choices=SOURCE_NAMES, default="jsonl", help="how --input is read: docs/formats.md")
    p.add_argument("--output-format", choices=sorted(SINKS),
                   help="how the kept rows are written (default: jsonl; parquet for --output-table)")
    p.add_argument("--output-table", metavar="[CATALOG.]DB.TABLE",
                   help="write the kept rows to this catalog table (parquet or delta), partitioned by file_name; "
                        "--output still holds the run's summary, rejects and report (docs/formats.md)")
    p.add_argument("--jsonl-mode", choices=("exact", "reserialize"), default="reserialize",
                   help="JSONL in and out: exact writes each kept line byte for byte with the predictions appended; "
                        "reserialize (default) writes the parsed record (docs/formats.md)")
    p.add_argument("--output-mode", choices=("records", "attributes"), default="records",
                   help="records (default): the kept records with predictions; attributes: a key and the "
                        "predictions of every record, by file_name, to join with the input (docs/formats.md)")
    p.add_argument("--id-field", default="id", help="attribute files' key when every record has it, unique in its "
                                                    "file (default: id; else the record's position in its file)")
    p.add_argument("--schema", help="Spark DDL schema of the input (skips schema inference)")
    p.add_argument("--file-name-column", default="file_name",
                   help="column naming each record's input file; partitioned output is split by it "
                        "(default: file_name)")
    p.add_argument("--waves", type=int, default=DEFAULT_WAVES, metavar="N",
                   help=f"classify tasks per GPU (task slot): the input is cut so every slot gets N equal tasks, "
                        f"more when a split would pass spark.sql.files.maxPartitionBytes (default {DEFAULT_WAVES}; "
                        "one where the cluster has a single slot and no executor can join; 0 keeps Spark's own "
                        "splitting)")
    p.add_argument("--commit-every-bytes", type=byte_size, metavar="SIZE",
                   help="commit the output every SIZE of input (e.g. 4g, 500m; 0: once, at the end); a re-run of "
                        "the same command resumes after the last commit (default: 16 tasks of "
                        "spark.sql.files.maxPartitionBytes per task slot, e.g. 2g for one GPU)")
    p.add_argument("--restart", action="store_true",
                   help="redo every input file, even those an earlier run into --output committed already")
    p.add_argument("--no-report", action="store_true", help="do not build OUT/_report/index.html")
    p.add_argument("--quiet", action="store_true", help="no progress lines (for scheduled jobs)")
    p.add_argument("--verbose", action="store_true", help="debug logging")


def byte_size(text: str) -> int:
    """``--commit-every-bytes``: a whole number of bytes, optionally with k, m, g or t (powers of 1024)."""
    import argparse
    import re

    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)b?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (such as 4g, 500m or 1048576)")
    return int(match[1]) * 1024 ** " kmgt".index(match[2] or " ")


def parse_filters(items: Sequence[str] | None, names: Sequence[str]) -> dict[str, list[str]]:
    """``--filter-by`` values -> classifier name -> labels. Without ``NAME:``, the filter is for the only
    classifier (or the first, when several run)."""
    out: dict[str, list[str]] = {}
    for item in items or []:
        name, sep, labels = item.partition(":")
        if sep and name in names:
            target = name
        else:
            if sep and len(names) > 1:
                raise ValueError(f"--filter-by {item!r}: {name!r} is not one of the classifiers {list(names)}")
            target, labels = names[0], item
        values = [v.strip() for v in labels.split(",") if v.strip()]
        if not values:
            raise ValueError(f"--filter-by {item!r} names no label")
        out.setdefault(target, []).extend(values)
    return out


def parse_params(items: Sequence[str] | None, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--param [NAME:]KEY=VALUE`` -> classifier name -> options. Values are JSON when they parse (numbers,
    true/false, lists), else strings."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        head, eq, raw = item.partition("=")
        if not eq:
            raise ValueError(f"--param takes [NAME:]KEY=VALUE, got {item!r}")
        name, colon, key = head.partition(":")
        if not colon:
            name, key = names[0], head
            if len(names) > 1:
                raise ValueError(f"--param {item!r}: say which classifier (NAME:KEY=VALUE)")
        if name not in names:
            raise ValueError(f"--param {item!r}: {name!r} is not one of the classifiers {list(names)}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(name, {})[key.strip()] = value
    return out


def _check_params(cls, params: dict[str, Any]) -> None:
    import dataclasses

    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"{cls.name} has no option {unknown}; options: {', '.join(sorted(known))}")


def make_classifiers(args: argparse.Namespace) -> list[Any]:
    from sparkcurate.classifiers import registry

    specs = []
    for item in args.classifier:
        name, sep, model = item.partition("=")
        specs.append((name.strip(), model.strip() if sep else None))
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"a classifier is given twice: {names}")
    if args.model and len(specs) > 1:
        raise ValueError("--model is for a single --classifier; use --classifier NAME=MODEL for several")
    single = len(specs) == 1
    filters = parse_filters(args.filter_by, names)
    params = parse_params(args.param, names)
    out = []
    for name, model in specs:
        cls = registry.get(name)
        kwargs: dict[str, Any] = dict(
            model=model or (args.model if single else None), filter_by=filters.get(name),
            text_field=args.text_field, batch_size=args.batch_size, device=args.device, revision=args.revision,
            token_budget=args.token_budget, precision=args.precision, allow_pickle=args.allow_pickle,
            trust_remote_code=args.trust_remote_code,
        )
        if single:
            kwargs.update(pred_column=args.pred_column, prob_column=args.prob_column, max_chars=args.max_chars,
                          max_tokens=args.max_tokens)
        elif args.pred_column or args.prob_column:
            raise ValueError("--pred-column/--prob-column are for a single classifier")
        if args.labels is not None:  # --labels '' is an error below, not the default labels
            if name != "zero-shot":
                raise ValueError("--labels is for the zero-shot classifier")
            from sparkcurate.classifiers.zero_shot import read_label_descriptions

            kwargs["label_descriptions"] = read_label_descriptions(args.labels)
        _check_params(cls, params.get(name, {}))
        kwargs.update(params.get(name, {}))
        try:
            out.append(cls(**{k: v for k, v in kwargs.items() if v is not None}))
        except TypeError as exc:
            raise ValueError(f"{name}: {exc}") from exc
    return out


def check_output_path(output: str) -> None:
    """A ValueError when ``--output`` (or a folder above it) is an existing file: found before Spark starts, in
    a line, where Spark would fail after its start with a long Py4J traceback.

    Only local paths (and ``file:`` URIs) are checked: an object store or HDFS output (``s3a://``, ``hdfs://``)
    can only be reached through Spark's Hadoop client, so such a mistake there is still Spark's to report.
    """
    from sparkcurate.io.fs import local_path

    path = local_path(output)
    if path is None:
        return
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "is" if candidate == path else f"is under {candidate}, which is"
                raise ValueError(f"--output {output} {where} an existing file, not a directory")
            return


def check_output_options(args: argparse.Namespace) -> tuple[str, str | None]:
    """The output format (jsonl, or parquet for a table, when not given) and codec (None: the format's default),
    after checking that the format can write ``--layout`` and ``--compression`` (bzip2 is a JSONL codec, not a
    Parquet one): a ``ValueError`` before Spark starts otherwise."""
    from sparkcurate.io.sinks import get_sink

    output_format = args.output_format or ("parquet" if args.output_table else "jsonl")
    sink = get_sink(output_format, args.output_table)
    sink.check(args.layout, args.compression)
    return output_format, None if args.compression == sink.compression(None) else args.compression


def run_classify(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from sparkcurate.io.commit import OutputBusy, OutputNotOurs
    from sparkcurate.io.failures import InputError
    from sparkcurate.io.listing import check_paths_apart
    from sparkcurate.io.sources.base import UsageError, check_text_field, parse_schema
    from sparkcurate.models.loading import ModelArtifactError
    from sparkcurate.pipeline import JobOptions, run
    from sparkcurate.spark.resources import ResourceUnavailable, check_local, wait_seconds
    from sparkcurate.spark.session import SessionStart, parse_conf, under_spark_submit

    try:
        if args.waves < 0:
            raise ValueError(f"--waves takes 0 (Spark's own splitting) or more, got {args.waves}")
        check_text_field(args.text_field, args.file_name_column)
        check_output_path(args.output)
        output_format, compression = check_output_options(args)
        if args.output_mode == "attributes" and args.filter_by:
            raise ValueError("--filter-by does not apply to --output-mode attributes: every record gets its "
                             "attribute row (filter on the predictions when you join)")
        classifiers = make_classifiers(args)
        conf = parse_conf(args.conf)
        wait_seconds(conf)
        if args.input:  # before Spark starts; a table input's location is checked by the job
            check_paths_apart(args.input, args.output)
    except ValueError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    try:  # before Spark starts: a local job that could never run fails at once
        master = args.master or ("" if under_spark_submit() else "local[*]")
        check_local(master, conf, [c.device for c in classifiers])
    except ResourceUnavailable as exc:
        log.error("%s", exc)
        return EXIT_RESOURCES
    # Spark starts in the background while the models are checked (both take seconds in a fresh application);
    # a bad model still fails with its one line at once, and no Spark job runs.
    session = SessionStart(args.master, conf)
    try:
        for c in classifiers:
            c.preflight()
    except (ModelArtifactError, ValueError, OSError) as exc:
        log.error("model check failed: %s", exc)
        session.discard()
        return EXIT_MODEL
    spark = session.result()
    try:
        parse_schema(args.schema)  # Spark parses DDL: checked once it runs, before any input is read
    except UsageError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    opts = JobOptions(
        input=args.input_table or args.input, output=args.output, classifiers=classifiers, layout=args.layout,
        file_name_column=args.file_name_column, schema=args.schema,
        compression=compression, quiet=args.quiet,
        waves=args.waves, report=not args.no_report,
        input_format="table" if args.input_table else args.input_format,
        output_format=output_format, output_table=args.output_table, jsonl_mode=args.jsonl_mode,
        output_mode=args.output_mode, id_field=args.id_field or None,
        commit_every_bytes=args.commit_every_bytes, restart=args.restart,
        command="sparkcurate " + " ".join(shlex.quote(a) for a in argv),
    )
    try:
        summary = run(spark, opts)
    except UsageError as exc:  # an input field that clashes with a column the job writes
        log.error("%s", exc)
        return EXIT_USAGE
    except InputError as exc:
        log.error("input: %s", exc)
        return EXIT_INPUT
    except OutputBusy as exc:
        log.error("output: %s", exc)
        return EXIT_BUSY
    except OutputNotOurs as exc:
        log.error("output: %s", exc)
        return EXIT_USAGE
    except ModelArtifactError as exc:
        log.error("model check failed: %s", exc)
        return EXIT_MODEL
    except ResourceUnavailable as exc:
        log.error("%s", exc)
        return EXIT_RESOURCES
    log.info("%d input records: %d written, %d filtered out, %d rejected %s; %s; summary in %s/_summary.json",
             summary["input_records"], summary["output_records"], summary["filtered_records"],
             summary["rejected_records"], summary["rejected_by_reason"] or "", whole_run_text(summary),
             args.output)
    return EXIT_OK


def whole_run_text(summary: dict) -> str:
    """The whole run's figures as ``_summary.json`` holds them (``elapsed_s``, ``docs_per_s``), for the closing
    line: the classify phase's own rate is on the line before it (``classify_docs_per_s``)."""
    from sparkcurate.report.progress import format_duration, rate_text

    rate = summary.get("docs_per_s")
    return f"whole run {format_duration(summary['elapsed_s'])}" + (f", {rate_text(rate)}" if rate else "")


def run_list(as_json: bool) -> int:
    from sparkcurate.classifiers.registry import describe

    rows = describe()
    if as_json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for r in rows:
        chars = r["max_chars"] if r["max_chars"] else "-"
        print(f"{r['name']}\n    model: {r['model']}\n    limits: {r['max_tokens']} tokens, {chars} chars\n"
              f"    columns: {', '.join(r['columns'])}\n    filter_by: {'yes' if r['filter'] else 'no'}\n"
              f"    {r['description']}")
    return EXIT_OK


def run_report(output: str) -> int:
    from sparkcurate.report import build_report

    try:
        print(build_report(output))
    except (FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return EXIT_INPUT
    return EXIT_OK


def silence_known_warnings() -> None:
    """Hide warnings that say nothing about this job (see ``PANDAS3_WARNING``); must run before pyspark imports
    the modules that warn, as Python shows a warning once per place."""
    import warnings

    warnings.filterwarnings("ignore", message=re.escape(PANDAS3_WARNING), category=FutureWarning,
                            module=r"pyspark\.")


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("py4j", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    silence_known_warnings()
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "verbose", False), getattr(args, "quiet", False))
    if args.command == "list":
        return run_list(args.json)
    if args.command == "report":
        return run_report(args.output)
    from sparkcurate.spark.session import stopping_own_session

    try:
        with stopping_own_session():
            return run_classify(args, argv)
    except KeyboardInterrupt:
        log.error("interrupted: the output directory keeps its previous content or a partial new one "
                  "(_RUNNING.json marks it)")
        return EXIT_FAILED
    except Exception:
        log.exception("the job failed")
        return EXIT_FAILED


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` once the command is done, without the interpreter's teardown.

    Why: after ``main`` returns, Python's own exit takes every module down (torch, transformers, the Spark
    bindings, each object freed one by one): 2.3 s of a fresh application on the CPU box, all of it after the
    work and the output are done (benchmarks/NOTES.md, issue 23). What an exit must still do is done here:
    threads that are not daemons are waited for, the exit handlers run (logging's flush, the Spark gateway's
    JVM stopped, temporary folders removed), the standard streams are flushed."""
    import atexit
    import os
    import threading

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more can reach it
            pass
    os._exit(code)


def entry() -> NoReturn:
    """The ``sparkcurate`` command: ``main``, then ``exit_now`` (library callers of ``main`` keep their process)."""
    exit_now(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
