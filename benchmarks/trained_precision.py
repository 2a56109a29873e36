"""Precision of every engine mode on a classifier *trained* on real text, measured against fp32 in one run.

Why: the other benchmarks use random weights, where a calibrated head keeps predictions decisive but every
document is still close to a near-tie somewhere; the precision targets (issue 23) are judged on a trained model.
Nothing can be downloaded on the GPU machine, so this harness makes one there, in one call:

1. **Corpus**: docstrings (module, class, function) of the Python packages installed on the machine, read with
   ``ast`` (nothing is imported). Label = the top-level package. Vendored code (``_vendor``, ``externals``, ...) is
   skipped; whitespace is collapsed; documents of 20-400 words are kept; a text found in two packages is dropped
   from both (its label is ambiguous), repeats inside one package are kept once. Labels: the ``--max-labels``
   packages with the most documents (at least ``--min-docs``), each capped at ``--max-per-label`` documents picked
   in hash order of the text. Held-out split: a hash of the text (``--heldout-pct``), so it is stable across runs
   and machines. Everything is in a deterministic order.
2. **Tokenizer** (``--tokenizer corpus``, default): a BPE tokenizer with SentencePiece's whitespace marker (like
   DeBERTa-v3's, which cannot be downloaded), NFKC, 32,000 entries, trained on the training split in seconds;
   ``[CLS] text [SEP]`` as DeBERTa's. ``--tokenizer benchmark`` takes benchmarks/synthetic.py's WordPiece over
   syllable pieces instead: it maps ~95% of real words to ``[UNK]`` (measured on docstrings), so a model trained
   on it reads little more than length and punctuation (``unk_share`` in the results says how much).
3. **Training**: a DeBERTa-v3-base-shaped classifier (gpu_stage.backbone_config: 12 layers, hidden 768, 12 heads,
   relative attention with 256 buckets, vocabulary 128,100 rows) with NeMo's head (``ClsHeadModel``), from random
   initialisation, under bf16 autocast, AdamW with warm-up and linear decay, length-bucketed batches under a
   padded-token budget, for ``--train-minutes`` (the step count is fixed after ``PROBE_STEPS`` timed steps and
   recorded; ``--train-steps N`` makes a run repeat it exactly).
4. **Checkpoint**: the published layout (config.json naming ``base_model/``, model.safetensors, the tokenizer's
   files: spark_e2e.save_head_checkpoint), loaded back by ``DomainClassifier`` (pre-flight and all), the code a
   Spark job runs. The loaded fp32 forward is checked against the trained model in memory (``roundtrip``).
5. **Measurement** on the held-out documents (all of them, up to ``--eval-docs``), tokenized once as the domain
   classifier does (2,000 characters, 512 tokens): the padded fp32 HF forward (TF32 off) is the reference; then
   a NeMo-style HF forward under fp16 autocast, and the engine at fp16 (the GPU default), bf16, fp16-split and
   fp32. Per row: argmax agreement with fp32, largest probability difference, documents past 1e-2, accuracy
   against the labels, docs/s (engine: median of ``--passes`` passes after a warm-up pass).

One results JSON (``--out``) is rewritten after every phase (``status`` running / done / failed), so a run that
fails or is stopped still says how far it got and why. ``--keep DIR`` also writes ``DIR/model`` (the checkpoint),
``DIR/heldout/part-00000.jsonl`` (``id``, ``text``, ``label``: the Spark job's input) and
``DIR/heldout_fp32_probs.npy`` (the reference, rows in that file's order), so the Spark job can be measured
against the same fp32 probabilities later: run the job on ``DIR/heldout`` with ``DIR/model`` and a probability
column, then ``--compare-job JOB_OUT --keep DIR --prob-column probs`` matches its output to the reference by id
(every document exactly once) and writes the ``spark_job`` row (no training, no GPU).

On the GPU machine, from the repository root (an estimate, not yet measured: 7-8 minutes on an H100: imports and
corpus ~0.5 min, tokenizer ~0.2, training 4, checkpoint and reference ~0.5, the engine rows ~2 with Triton's first
compilations; every phase's seconds are in the results)::

    set -o pipefail; HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 python3 -m benchmarks.trained_precision \\
        --train-minutes 4 --out $OUT/trained-precision.json --keep /tmp/trained 2>&1 | tee $OUT/trained-precision.log

and then, where pyspark and Java are there, the Spark job on the same documents (its default fp16 on the GPU)::

    python3 -m sparkcurate.cli classify --input /tmp/trained/heldout --output /tmp/trained/job --classifier domain \\
        --model /tmp/trained/model --prob-column probs --no-report --quiet
    python3 -m benchmarks.trained_precision --compare-job /tmp/trained/job --keep /tmp/trained --prob-column probs \\
        --out $OUT/trained-precision-spark-job.json

The CPU smoke (CI, tests/test_trained_precision.py; minutes on a 2-core machine)::

    python3 -m benchmarks.trained_precision --smoke --out /tmp/tp.json
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime as dt
import gc
import hashlib
import json
import logging
import math
import os
import re
import shlex
import site
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("trained_precision")

SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")
MIN_WORDS, MAX_WORDS = 20, 400
#: Directories holding other projects' code (its label would be wrong) or generated code.
SKIP_DIRS = frozenset({"_vendor", "vendor", "_vendored", "vendored", "externals", "_externals", "extern", "_extern",
                       "third_party", "thirdparty", "__pycache__", "site-packages"})
#: Never labels: this project.
SKIP_PACKAGES = frozenset({"sparkcurate", "benchmarks", "tests"})
#: --smoke reads these (the project's own dependencies: CI has them), a few files each.
SMOKE_PACKAGES = ("numpy", "pandas", "pyspark", "tokenizers", "torch", "transformers")
PROBE_STEPS = 30  # training steps timed before the step count is fixed (--train-minutes)
ROUNDTRIP_DOCS = 64  # held-out documents whose probabilities the loaded checkpoint must reproduce
OVER = 1e-2  # the precision target's probability difference


# --------------------------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Doc:
    """One docstring: ``id`` is ``package:path:qualname`` (stable across rebuilds of the same package versions)."""

    id: str
    label: str
    text: str
    split: str  # "train" or "heldout"


@dataclass
class ReadStats:
    """What reading the packages found, for the results (nothing dropped without being counted here)."""

    files: int = 0
    unreadable_files: int = 0
    unreadable_examples: list[str] = field(default_factory=list)
    docstrings: int = 0
    outside_word_range: int = 0
    repeats_in_package: int = 0
    in_several_packages: int = 0


def site_package_dirs() -> list[Path]:
    """The site-packages directories of this interpreter, in ``sys.path`` order (the one an import would use first
    comes first)."""
    found: list[Path] = []
    for entry in [*sys.path, *site.getsitepackages()]:
        path = Path(entry)
        if path.name in ("site-packages", "dist-packages") and path.is_dir() and path.resolve() not in found:
            found.append(path.resolve())
    return found


def discover_packages(dirs: Sequence[Path], wanted: Sequence[str] | None = None) -> dict[str, Path]:
    """Top-level packages (directories with ``__init__.py``) by import name, sorted; the first directory wins."""
    packages: dict[str, Path] = {}
    for root in dirs:
        for child in sorted(root.iterdir()):
            name = child.name
            if (name in packages or name in SKIP_PACKAGES or not name.isidentifier() or not child.is_dir()
                    or not (child / "__init__.py").is_file() or (wanted is not None and name not in wanted)):
                continue
            packages[name] = child
    if wanted is not None:
        missing = sorted(set(wanted) - set(packages))
        if missing:
            log.warning("packages asked for but not installed: %s", ", ".join(missing))
    return dict(sorted(packages.items()))


def _rank(salt: str, text: str) -> str:
    return hashlib.sha1(f"{salt}:{text}".encode()).hexdigest()


def package_files(root: Path, max_files: int | None = None) -> list[Path]:
    """The package's ``.py`` files outside vendored directories; ``max_files``: that many, in hash order of the path
    (a spread sample, not the alphabetically first modules)."""
    files = sorted(p for p in root.rglob("*.py") if not SKIP_DIRS & set(p.relative_to(root).parts[:-1]))
    if max_files is not None and len(files) > max_files:
        files = sorted(files, key=lambda p: _rank("file", str(p.relative_to(root))))[:max_files]
    return files


def normalise(text: str) -> str:
    """Whitespace collapsed: documents become running text, as web documents mostly are."""
    return re.sub(r"\s+", " ", text).strip()


def docstrings(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(qualname, docstring)`` of a module and every class and function in it, nested ones included."""
    if isinstance(tree, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(tree, clean=True)
        if doc:
            yield prefix or "<module>", doc
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from docstrings(node, f"{prefix}.{node.name}" if prefix else node.name)
        elif isinstance(node, ast.stmt):  # if/try/with blocks may hold definitions
            yield from _nested(node, prefix)


def _nested(node: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from docstrings(child, f"{prefix}.{child.name}" if prefix else child.name)
        elif isinstance(child, ast.stmt):
            yield from _nested(child, prefix)


def read_file(task: tuple[str, str, str]) -> tuple[str, str, list[tuple[str, str]], str | None]:
    """``(label, relative path, [(qualname, docstring)], error)`` of one source file (a process-pool task).

    A file that cannot be parsed (Python 2 syntax in a test fixture, a template) comes back with its error, which
    the caller counts and reports. SyntaxWarnings (invalid escapes in old docstrings) are not errors and are muted:
    thousands of them would bury the progress log.
    """
    label, root, path = task
    rel = str(Path(path).relative_to(root))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(Path(path).read_bytes(), filename=path)
        return label, rel, list(docstrings(tree)), None
    except (SyntaxError, ValueError, RecursionError, UnicodeDecodeError, MemoryError, OSError) as exc:
        return label, rel, [], f"{label}/{rel}: {type(exc).__name__}: {str(exc)[:120]}"


def read_packages(packages: dict[str, Path], workers: int, max_files: int | None,
                  stats: ReadStats) -> dict[str, dict[str, str]]:
    """``{label: {doc id: text}}`` of every package's docstrings within the word range, repeats inside a package
    kept once (the first id in path order)."""
    tasks = [(label, str(root), str(path)) for label, root in packages.items()
             for path in package_files(root, max_files)]
    stats.files = len(tasks)
    log.info("reading docstrings of %d files in %d packages with %d worker(s)", len(tasks), len(packages), workers)
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: no fork of a process that may hold threads (tokenizers) or a CUDA context later.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(read_file, tasks, chunksize=16))
    else:
        results = [read_file(t) for t in tasks]
    by_label: dict[str, dict[str, str]] = {label: {} for label in packages}
    seen: dict[str, set[str]] = {label: set() for label in packages}
    for label, rel, found, error in results:
        if error:
            stats.unreadable_files += 1
            if len(stats.unreadable_examples) < 10:
                stats.unreadable_examples.append(error)
            continue
        for qualname, raw in found:
            stats.docstrings += 1
            text = normalise(raw)
            if not MIN_WORDS <= len(text.split()) <= MAX_WORDS:
                stats.outside_word_range += 1
            elif text in seen[label]:
                stats.repeats_in_package += 1
            else:
                seen[label].add(text)
                by_label[label][f"{label}:{rel}:{qualname}"] = text
    return by_label


def drop_shared(by_label: dict[str, dict[str, str]], stats: ReadStats) -> None:
    """Remove texts that occur under more than one label (copied docstrings: no label is right for them)."""
    owners = Counter(text for docs in by_label.values() for text in docs.values())
    for docs in by_label.values():
        for doc_id in [i for i, t in docs.items() if owners[t] > 1]:
            del docs[doc_id]
            stats.in_several_packages += 1


def choose_labels(by_label: dict[str, dict[str, str]], max_labels: int, min_docs: int) -> list[str]:
    """The ``max_labels`` packages with the most documents (at least ``min_docs``); ties by name; sorted by name."""
    ranked = sorted((label for label, docs in by_label.items() if len(docs) >= min_docs),
                    key=lambda label: (-len(by_label[label]), label))
    return sorted(ranked[:max_labels], key=str.lower)


def split_of(text: str, heldout_pct: int) -> str:
    return "heldout" if int(_rank("split", text)[:8], 16) % 100 < heldout_pct else "train"


def build_corpus(args) -> tuple[list[Doc], dict[str, Any]]:
    """The labelled documents (train then held-out, each in label then hash order) and the facts for the results."""
    stats = ReadStats()
    wanted = args.packages or (SMOKE_PACKAGES if args.smoke else None)
    packages = discover_packages(site_package_dirs(), wanted)
    if not packages:
        raise RuntimeError(f"no installed Python packages found under {site_package_dirs()}")
    by_label = read_packages(packages, args.workers, args.max_files, stats)
    drop_shared(by_label, stats)
    labels = choose_labels(by_label, args.max_labels, args.min_docs)
    if len(labels) < 2:
        counts = {k: len(v) for k, v in by_label.items()}
        raise RuntimeError(f"fewer than 2 packages have >= {args.min_docs} documents: {counts}")
    docs: list[Doc] = []
    for label in labels:
        picked = sorted(by_label[label].items(), key=lambda kv: _rank("pick", kv[1]))[:args.max_per_label]
        docs.extend(Doc(doc_id, label, text, split_of(text, args.heldout_pct)) for doc_id, text in picked)
    docs.sort(key=lambda d: (d.split != "train", labels.index(d.label), _rank("order", d.text)))
    per_label = {label: {"train": 0, "heldout": 0, "available": len(by_label[label])} for label in labels}
    for d in docs:
        per_label[d.label][d.split] += 1
    words = np.array([len(d.text.split()) for d in docs])
    facts = {
        "source": "docstrings of installed Python packages (ast, nothing imported); label = top-level package",
        "site_packages": [str(p) for p in site_package_dirs()],
        "packages_read": len(packages), "labels": labels, "n_labels": len(labels),
        "docs": len(docs), "train_docs": sum(d.split == "train" for d in docs),
        "heldout_docs": sum(d.split == "heldout" for d in docs),
        "per_label": per_label, "words_mean": round(float(words.mean()), 1),
        "words_median": float(np.median(words)), "chars_mean": round(float(np.mean([len(d.text) for d in docs])), 1),
        "packages_below_min_docs": {k: len(v) for k, v in by_label.items() if k not in labels
                                    and len(v) < args.min_docs},
        "packages_beyond_max_labels": sorted(k for k, v in by_label.items() if k not in labels
                                             and len(v) >= args.min_docs),
        "read": asdict(stats),
        "rules": {"words": [MIN_WORDS, MAX_WORDS], "min_docs": args.min_docs, "max_per_label": args.max_per_label,
                  "heldout_pct": args.heldout_pct, "max_files_per_package": args.max_files,
                  "skipped_dirs": sorted(SKIP_DIRS)},
    }
    log.info("corpus: %d labels, %d train + %d held-out documents, %.1f words on average; %d of %d files "
             "unreadable", len(labels), facts["train_docs"], facts["heldout_docs"], facts["words_mean"],
             stats.unreadable_files, stats.files)
    return docs, facts


# --------------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------------


def corpus_tokenizer(texts: Sequence[str], vocab_size: int):
    """A BPE tokenizer trained on ``texts`` with SentencePiece's whitespace marker (DeBERTa-v3 style), as a
    ``PreTrainedTokenizerFast`` with DeBERTa's ``[CLS] text [SEP]`` layout. Deterministic for the same texts."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False)
    backend.train_from_iterator(texts, trainer)
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                   unk_token="[UNK]", mask_token="[MASK]")


def make_tokenizer(kind: str, train_texts: Sequence[str], vocab_size: int, max_chars: int):
    if kind == "benchmark":
        from benchmarks.synthetic import benchmark_tokenizer

        return benchmark_tokenizer()
    return corpus_tokenizer([t[:max_chars] for t in train_texts], vocab_size)


def tokenizer_facts(tokenizer, kind: str, tokens, vocab_size: int) -> dict[str, Any]:
    from sparkcurate.engine.runner import tokenizer_identity

    flat = np.concatenate(tokens.ids) if len(tokens) else np.empty(0, dtype=np.int32)
    return {"kind": kind, "vocab": len(tokenizer), "vocab_asked": vocab_size if kind == "corpus" else None,
            "identity": tokenizer_identity(tokenizer),
            "unk_share": round(float((flat == tokenizer.unk_token_id).mean()), 5) if flat.size else None}


def length_facts(lengths: np.ndarray, limit: int) -> dict[str, float]:
    """Token counts ([CLS] and [SEP] included) after the classifier's cut; ``at_limit_share``: cut by ``limit``."""
    return {"mean": round(float(lengths.mean()), 1), "median": float(np.median(lengths)),
            "p90": float(np.quantile(lengths, 0.9)), "max": int(lengths.max()),
            "at_limit_share": round(float((lengths >= limit).mean()), 4), "total": int(lengths.sum())}


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------


def epoch_batches(lengths: np.ndarray, budget: int, max_rows: int, rng: np.random.Generator,
                  pool: int = 50) -> list[np.ndarray]:
    """One epoch's batches: shuffled, sorted by length inside pools of ``pool * max_rows`` documents (little
    padding, still mixed), cut under a padded-token ``budget`` (rows x longest), in shuffled order."""
    order = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    for lo in range(0, len(order), pool * max_rows):
        part = order[lo:lo + pool * max_rows]
        part = part[np.argsort(-lengths[part], kind="stable")]
        i = 0
        while i < len(part):
            rows = max(1, min(max_rows, budget // max(int(lengths[part[i]]), 1)))
            batches.append(part[i:i + rows])
            i += rows
    return [batches[i] for i in rng.permutation(len(batches))]


def pad(ids: Sequence[np.ndarray], idx: np.ndarray, pad_id: int):
    """Right-padded ``[B, S]`` ids and mask (CPU int64 tensors) for documents ``idx``."""
    import torch

    width = max(int(max(len(ids[i]) for i in idx)), 1)
    out = np.full((len(idx), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(idx), width), dtype=np.int64)
    for row, i in enumerate(idx):
        out[row, :len(ids[i])] = ids[i]
        mask[row, :len(ids[i])] = 1
    return torch.from_numpy(out), torch.from_numpy(mask)


def lr_at(step: int, peak: float, warmup: int, total: int | None) -> float:
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total`` (constant while it is unknown)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if total is None:
        return peak
    return peak * max(0.0, (total - step) / max(total - warmup, 1))


def optimizer(model, lr: float):
    """AdamW; no weight decay on biases and LayerNorm weights (the usual BERT recipe)."""
    import torch

    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-6)


def logits_of(model, ids, mask):
    """The head's logits (``ClsHeadModel.forward`` gives probabilities; cross-entropy wants logits)."""
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
    return model.fc(model.dropout(hidden)).float()


def train(model, tokens, y: np.ndarray, args, device, pad_id: int) -> dict[str, Any]:
    """Train ``model`` in place for ``args.train_steps`` steps or ``args.train_minutes``; the facts for the results.

    With a time budget the step count is fixed after ``PROBE_STEPS`` steps from their measured pace (so the
    learning rate decays to 0 at the end) and recorded; a run that falls behind stops at 115% of the budget and
    says so (``stopped_at_time_limit``).
    """
    import torch

    rng = np.random.default_rng(args.seed)
    opt = optimizer(model, args.lr)
    labels = torch.from_numpy(y.astype(np.int64))
    budget_s = args.train_minutes * 60.0
    total = args.train_steps
    warmup = min(args.warmup_steps, total) if total else args.warmup_steps
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    model.train()
    step, epoch, docs_seen, tokens_seen, stopped = 0, 0, 0, 0, False
    run_loss, run_correct, run_docs = torch.zeros((), device=device), torch.zeros((), device=device), 0
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    probe_start = None
    while not stopped and (total is None or step < total):
        for idx in epoch_batches(tokens.lengths, args.train_token_budget, args.train_max_rows, rng):
            if total is not None and step >= total:
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(step, args.lr, warmup, total)
            loss, correct = train_step(model, opt, autocast, tokens, labels, idx, device, pad_id)
            step += 1
            docs_seen += len(idx)
            tokens_seen += int(tokens.lengths[idx].sum())
            run_loss += loss * len(idx)
            run_correct += correct
            run_docs += len(idx)
            if total is None and step == 10:
                sync(device)
                probe_start = time.perf_counter()
            if total is None and step == PROBE_STEPS:
                sync(device)
                pace = (time.perf_counter() - probe_start) / (PROBE_STEPS - 10)
                total = max(PROBE_STEPS + 1, PROBE_STEPS + int((budget_s - (time.perf_counter() - start)) / pace))
                log.info("training: %.1f ms a step -> %d steps in %.1f min", 1e3 * pace, total, args.train_minutes)
            if step % args.log_every == 0 or step == total:
                history.append(log_progress(step, total, epoch, run_loss, run_correct, run_docs, opt, start,
                                            docs_seen))
                run_loss.zero_()
                run_correct.zero_()
                run_docs = 0
            if args.train_steps is None and time.perf_counter() - start > 1.15 * budget_s:
                log.warning("training passed 115%% of its time budget at step %d of %s: stopping", step, total)
                stopped = True
                break
        epoch += 1
    if run_docs:  # the steps since the last logged one (a run stopped at the time limit)
        history.append(log_progress(step, total, epoch, run_loss, run_correct, run_docs, opt, start, docs_seen))
    sync(device)
    seconds = time.perf_counter() - start
    model.eval()
    return {"steps": step, "planned_steps": total, "stopped_at_time_limit": stopped, "seconds": round(seconds, 1),
            "epochs": round(docs_seen / max(len(tokens), 1), 2), "docs_seen": docs_seen, "tokens_seen": tokens_seen,
            "docs_per_s": round(docs_seen / seconds, 1), "lr": args.lr, "warmup_steps": warmup,
            "schedule": "linear warm-up, linear decay to 0", "optimizer": "AdamW(0.9, 0.98), eps 1e-6, wd 0.01",
            "grad_clip": 1.0, "autocast": "bf16" if device.type == "cuda" else "none (fp32 on CPU)",
            "batch": f"length-bucketed, <= {args.train_token_budget} padded tokens and <= {args.train_max_rows} "
                     "documents a step", "seed": args.seed, "history": history,
            "repeat_with": f"--train-steps {step}"}


def train_step(model, opt, autocast, tokens, labels, idx: np.ndarray, device, pad_id: int):
    """One optimizer step on documents ``idx``: (mean loss, correct predictions), both left on the device (no sync
    per step)."""
    import torch
    import torch.nn.functional as F

    ids, mask = pad(tokens.ids, idx, pad_id)
    target = labels[idx].to(device, non_blocking=True)
    with autocast:
        logits = logits_of(model, ids.to(device, non_blocking=True), mask.to(device, non_blocking=True))
    loss = F.cross_entropy(logits, target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.detach(), (logits.argmax(1) == target).sum()


def log_progress(step, total, epoch, run_loss, run_correct, run_docs, opt, start, docs_seen) -> dict[str, float]:
    """Log and return the mean loss and batch accuracy since the last call; a non-finite loss stops the run (a
    diverged model would otherwise be measured as if trained)."""
    elapsed = time.perf_counter() - start
    if not math.isfinite(float(run_loss)):
        raise FloatingPointError(f"training loss is {float(run_loss)} at step {step}: lower --lr")
    row = {"step": step, "epoch": epoch, "loss": round(float(run_loss) / max(run_docs, 1), 4),
           "train_acc": round(float(run_correct) / max(run_docs, 1), 4), "lr": opt.param_groups[0]["lr"],
           "elapsed_s": round(elapsed, 1)}
    log.info("step %d/%s epoch %d: loss %.4f, batch accuracy %.3f, lr %.2e, %.0f docs/s, %.0f s", step, total,
             epoch, row["loss"], row["train_acc"], row["lr"], docs_seen / max(elapsed, 1e-9), elapsed)
    return row


# --------------------------------------------------------------------------------------------------------------
# Checkpoint
# --------------------------------------------------------------------------------------------------------------


def save_checkpoint(out: Path, model, config, labels: list[str], tokenizer) -> Path:
    """The published layout, loadable by ``DomainClassifier(model=out)``: ``base_model/`` is named relative to the
    checkpoint (the loader resolves it there), so the directory can be moved."""
    from benchmarks.spark_e2e import save_head_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    (out / "base_model").mkdir(exist_ok=True)
    config.save_pretrained(str(out / "base_model"))
    return save_head_checkpoint(out, model, Path("base_model"), labels, tokenizer)


# --------------------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------------------


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_batches(model, tokens, batches: list[np.ndarray], device, pad_id: int, autocast_dtype=None) -> list:
    """``(indices, probabilities on the device)`` of ``ClsHeadModel.forward`` (the HF DeBERTa forward) per batch,
    padded; under ``torch.autocast(autocast_dtype)`` when one is given."""
    import torch

    outs = []
    with torch.inference_mode():
        for idx in batches:
            ids, mask = pad(tokens.ids, idx, pad_id)
            with torch.autocast(device_type=device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                outs.append((idx, model(ids.to(device), mask.to(device)).float()))
    return outs


def padded_forward(model, tokens, batches: list[np.ndarray], device, pad_id: int, autocast_dtype=None) -> np.ndarray:
    """:func:`forward_batches` over every document: probabilities in input order, one copy to the host."""
    import torch

    outs = forward_batches(model, tokens, batches, device, pad_id, autocast_dtype)
    values = torch.cat([p for _, p in outs]).cpu().numpy()
    order = np.concatenate([i for i, _ in outs])
    probs = np.empty_like(values)
    probs[order] = values
    if len(order) != len(tokens) or len(np.unique(order)) != len(tokens):
        raise RuntimeError(f"internal error: {len(order)} results for {len(tokens)} documents")
    return probs


def compare(probs: np.ndarray, ref: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Agreement with the fp32 reference (gpu_stage.agreement's measures) plus the count of documents with some
    probability more than 1e-2 away, and accuracy against the labels."""
    from benchmarks.gpu_stage import agreement

    doc_diff = np.abs(probs - ref).max(axis=1)
    same = probs.argmax(1) == ref.argmax(1)
    out = agreement(probs, ref)
    out.update(argmax_agreement_pct=round(100 * float(same.mean()), 3), argmax_disagreements=int((~same).sum()),
               docs_over_1e2=int((doc_diff > OVER).sum()), accuracy=round(float((probs.argmax(1) == y).mean()), 5))
    return out


def timed(device, work, passes: int, warm=None) -> tuple[Any, float, list[float], float | None]:
    """``work()`` after one warm-up call (``warm()`` if given, else ``work()``: compilation, allocator): the last
    output, the median seconds of ``passes`` timed calls, each call's seconds, and the peak GPU memory (GB) of the
    timed calls."""
    import torch

    (warm or work)()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    from benchmarks.gpu_stage import median_pass

    out, median, seconds = median_pass(work, passes, device)
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return out, median, seconds, peak


def row(name: str, probs, ref, y, tokens, seconds: float, passes: list[float], peak, **extra) -> dict[str, Any]:
    r = {"name": name, "docs": len(tokens), "tokens": tokens.total_tokens, "seconds": round(seconds, 4),
         "docs_per_s": round(len(tokens) / seconds, 1), "pass_seconds": passes,
         "peak_gpu_gb": None if peak is None else round(peak, 3), **extra, **compare(probs, ref, y)}
    log.info("%-24s %9.1f docs/s  argmax %.3f%%  max diff %.5f  past 1e-2: %d  accuracy %.4f", name,
             r["docs_per_s"], r["argmax_agreement_pct"], r["max_prob_abs_diff"], r["docs_over_1e2"], r["accuracy"])
    return r


def free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def hf_rows(clf, ckpt: Path, tokens, y, device, args, pad_id: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The fp32 reference (padded HF forward, TF32 off) and the NeMo-style fp16-autocast forward of the same
    module, length-sorted micro-batches under a padded-token budget (CrossFit's way)."""
    import torch

    from benchmarks.gpu_stage import warm_subset
    from sparkcurate.engine.batching import plan_microbatches

    model = clf.load_module(ckpt).to(device, torch.float32).eval()
    batches = plan_microbatches(tokens.lengths, args.ref_token_budget, 256, padded=True)
    spread = warm_subset(batches, 3)  # eager PyTorch compiles nothing: a few batches warm the allocator and cuBLAS
    ref, secs, passes, peak = timed(device, lambda: padded_forward(model, tokens, batches, device, pad_id), 1,
                                    warm=lambda: forward_batches(model, tokens, spread, device, pad_id))
    rows = [row("hf_fp32_reference", ref, ref, y, tokens, secs, passes, peak, precision="fp32",
                path="HF DeBERTa forward, padded, sorted micro-batches", token_budget=args.ref_token_budget)]
    half = torch.float16
    probs, secs, passes, peak = timed(
        device, lambda: padded_forward(model, tokens, batches, device, pad_id, autocast_dtype=half), 1,
        warm=lambda: forward_batches(model, tokens, spread, device, pad_id, autocast_dtype=half))
    rows.append(row("hf_autocast_fp16_nemo", probs, ref, y, tokens, secs, passes, peak, precision="fp16 autocast",
                    path="HF DeBERTa forward under torch.autocast(float16) on fp32 weights, padded, sorted "
                         "micro-batches (NeMo Curator / CrossFit style)", token_budget=args.ref_token_budget))
    return ref, rows


#: (row name, the engine's precision setting). fp16 is the GPU default (EngineConfig.resolved_precision).
ENGINE_ROWS = (("engine_fp16", "fp16"), ("engine_bf16", "bf16"), ("engine_fp16_split", "fp16-split"),
               ("engine_fp32", "fp32"))


def engine_rows(ckpt: Path, heldout: Split, cut: tuple[int, int], ref: np.ndarray, device, args,
                report: Report) -> None:
    """The engine at each precision of ``ENGINE_ROWS``; each row goes into the report as soon as it is measured."""
    from sparkcurate.engine.runner import EngineConfig

    default = EngineConfig().resolved_precision(device)
    rows = [(name, precision, False) for name, precision in ENGINE_ROWS]
    if getattr(args, "fp8_sim", False):
        rows.append(("engine_fp8_sim", "fp16", True))
    for name, precision, fp8 in rows:
        r = engine_row(name, precision, ckpt, heldout, cut, ref, device, args.passes, fp8_sim=fp8)
        r["default"] = precision == default and not fp8
        report.payload["rows"].append(r)
        report.write()
        free(device)  # the engine is gone with engine_row's frame: the next row's peak memory is its own


def engine_row(name: str, precision: str, ckpt: Path, heldout: Split, cut: tuple[int, int], ref: np.ndarray,
               device, passes: int, fp8_sim: bool = False) -> dict[str, Any]:
    """The engine loaded as a Spark worker loads it (``DomainClassifier`` pre-flight, ``load_engine``: on a GPU at
    half precision that is the lean load, sparkcurate's own DeBERTa modules and the Rust tokenizer; the row names
    the backbone), timed on the held-out tokens; its own tokenizer must give the same ids. ``fp8_sim``: the linear
    layers' products as FP8 GEMMs return them (benchmarks.probes.fp8_gemm; its precision only, its speed is not
    an FP8 kernel's)."""
    from sparkcurate.classifiers import DomainClassifier

    clf = DomainClassifier(model=str(ckpt), precision=precision, device=device.type, max_chars=cut[0],
                           max_tokens=cut[1])
    clf.preflight()
    start = time.perf_counter()
    engine = clf.load_engine(device.type)
    load_s = time.perf_counter() - start
    if engine.tokenize_key[2:] != cut:
        raise RuntimeError(f"the engine cuts at {engine.tokenize_key[2:]}, the measured tokens at {cut}")
    own = engine.tokenize([d.text for d in heldout.docs])
    same_tokens = all(np.array_equal(a, b) for a, b in zip(own.ids, heldout.tokens.ids))
    if not same_tokens:  # the rows stay comparable (all run the same tokens), but a job would see other ids
        log.error("%s: the engine's own tokenizer (%s) gives other ids than the checkpoint's transformers tokenizer",
                  name, type(engine.tokenizer).__name__)
    extra: dict[str, Any] = {}
    if fp8_sim:
        from benchmarks.probes.fp8_gemm import simulated_fp8_linears

        with simulated_fp8_linears() as calls:
            probs, secs, seconds, peak = timed(device, lambda: engine.predict_tokenized(heldout.tokens), 1)
        extra = {"fp8_simulated_products": dict(calls), "speed": "not measured (products emulated in fp32)"}
    else:
        probs, secs, seconds, peak = timed(device, lambda: engine.predict_tokenized(heldout.tokens), passes)
    backbone = type(engine.model.model)
    return row(name, probs, ref, heldout.y, heldout.tokens, secs, seconds, peak, precision=engine.precision,
               path="sparkcurate engine, " + ("packed" if engine.packed else "padded"), load_s=round(load_s, 2),
               backbone=f"{backbone.__module__}.{backbone.__qualname__}", tokenizer=type(engine.tokenizer).__name__,
               engine_tokens_equal=same_tokens, kernels=engine.active_kernels(), oom_retries=engine.oom_retries,
               token_budget=engine.budget, **extra)


# --------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------


class Report:
    """The results JSON, rewritten after every phase (so a failed or stopped run still says how far it got)."""

    def __init__(self, path: Path, payload: dict[str, Any]):
        self.path = path
        self.payload = payload
        self.phases: dict[str, float] = payload.setdefault("phases_s", {})
        self.start = time.perf_counter()

    def write(self) -> None:
        self.payload["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.payload, indent=2, default=_json_default) + "\n")
        tmp.replace(self.path)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        log.info("phase %s: starting (%.0f s into the run)", name, time.perf_counter() - self.start)
        start = time.perf_counter()
        yield
        self.phases[name] = round(time.perf_counter() - start, 1)
        log.info("phase %s: %.1f s", name, self.phases[name])
        self.write()


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if math.isnan(value) else float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value)}")


def write_heldout(keep: Path, docs: Sequence[Doc]) -> Path:
    """``keep/heldout/part-00000.jsonl``: the measured documents, in the order of the probabilities' rows."""
    out = keep / "heldout"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "part-00000.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps({"id": d.id, "text": d.text, "label": d.label}, ensure_ascii=False) + "\n")
    return path


def card(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def default_out(device, smoke: bool) -> Path:
    from benchmarks.gpu_stage import card_name

    slug = "cpu-smoke" if smoke else card_name(device)[1]
    return Path("benchmarks/results") / f"{dt.date.today().isoformat()}-{slug}-trained-precision.json"


# --------------------------------------------------------------------------------------------------------------
# A Spark job's output against the kept fp32 reference (--compare-job)
# --------------------------------------------------------------------------------------------------------------


def job_records(out: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every JSON record a job wrote under ``out`` (``.json``/``.jsonl`` files, gzip too), skipping ``_summary``,
    ``_report``, rejects and other ``_``- or ``.``-prefixed entries (Spark's ``.crc`` files)."""
    import gzip

    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        if any(part.startswith(("_", ".")) for part in path.relative_to(out).parts):
            continue
        if not path.name.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")):
            raise ValueError(f"{path}: not a JSONL output file (.json, .jsonl, gzipped or not): compare JSONL "
                             "outputs only")
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield path, json.loads(line)


def compare_job(keep: Path, job_out: Path, pred_column: str, prob_column: str | None) -> dict[str, Any]:
    """The job's predictions (and probabilities, if it wrote ``prob_column``) against the kept fp32 reference,
    matched by document id; every held-out document must be there exactly once."""
    heldout = [json.loads(line) for line in (keep / "heldout" / "part-00000.jsonl").read_text().splitlines()]
    ref = np.load(keep / "heldout_fp32_probs.npy", allow_pickle=False)
    config = json.loads((keep / "model" / "config.json").read_text())
    labels = [config["id2label"][k] for k in sorted(config["id2label"], key=int)]
    index = {d["id"]: i for i, d in enumerate(heldout)}
    found: dict[int, dict[str, Any]] = {}
    for path, rec in job_records(job_out):
        i = index.get(rec.get("id"))
        if i is None:
            raise ValueError(f"{path}: id {rec.get('id')!r} is not a kept held-out document")
        if i in found:
            raise ValueError(f"{path}: id {rec['id']!r} written twice")
        found[i] = rec
    if len(found) != len(heldout):
        missing = [heldout[i]["id"] for i in range(len(heldout)) if i not in found]
        raise ValueError(f"the job wrote {len(found)} of {len(heldout)} documents; missing e.g. {missing[:3]}")
    y = np.array([labels.index(d["label"]) for d in heldout])
    pred = np.array([labels.index(found[i][pred_column]) for i in range(len(heldout))])
    same = pred == ref.argmax(1)
    out = {"name": "spark_job", "docs": len(heldout), "argmax_agreement": float(same.mean()),
           "argmax_agreement_pct": round(100 * float(same.mean()), 3), "argmax_disagreements": int((~same).sum()),
           "accuracy": round(float((pred == y).mean()), 5), "job_output": str(job_out)}
    if prob_column:
        probs = np.array([found[i][prob_column] for i in range(len(heldout))], dtype=np.float64)
        if not np.array_equal(probs.argmax(1), pred):
            raise ValueError(f"{prob_column}'s argmax differs from {pred_column} in the job's own output")
        out.update(compare(probs, ref, y))
    log.info("spark job: argmax %.3f%% of %d documents, largest difference %s, past 1e-2: %s",
             out["argmax_agreement_pct"], out["docs"], out.get("max_prob_abs_diff"), out.get("docs_over_1e2"))
    return out


def compare_job_main(args, argv: Sequence[str]) -> int:
    """``--compare-job OUT --keep DIR``: one results JSON with the job's row (no training, no GPU)."""
    if args.keep is None:
        raise SystemExit("--compare-job needs --keep DIR (the run whose checkpoint the job used)")
    row_ = compare_job(args.keep, args.compare_job, args.pred_column, args.prob_column)
    out = args.out or args.keep / "spark-job-vs-fp32.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": dt.date.today().isoformat(), "keep": str(args.keep),
                               "command": "python3 -m benchmarks.trained_precision "
                                          + " ".join(shlex.quote(a) for a in argv),
                               "rows": [row_]}, indent=2, default=_json_default) + "\n")
    log.info("wrote %s", out)
    return 0


# --------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model, a few packages: the code path (CI)")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/DATE-CARD-...)")
    p.add_argument("--keep", type=Path, default=None,
                   help="also write the checkpoint (DIR/model), the held-out JSONL (DIR/heldout) and the fp32 "
                        "probabilities (DIR/heldout_fp32_probs.npy) here")
    p.add_argument("--compare-job", type=Path, default=None, metavar="OUT",
                   help="instead of a run: compare a Spark job's JSONL output (run on --keep DIR's held-out "
                        "documents with its checkpoint) with the kept fp32 probabilities")
    p.add_argument("--pred-column", default="domain_pred", help="--compare-job: the job's prediction column")
    p.add_argument("--prob-column", default=None, help="--compare-job: the job's probability column, if written")
    g = p.add_argument_group("corpus")
    g.add_argument("--packages", nargs="+", default=None, help="read only these top-level packages")
    g.add_argument("--max-labels", type=int, default=40)
    g.add_argument("--min-docs", type=int, default=150, help="documents a package needs to become a label")
    g.add_argument("--max-per-label", type=int, default=1500)
    g.add_argument("--heldout-pct", type=int, default=20)
    g.add_argument("--max-files", type=int, default=None, help="source files read per package (hash order)")
    g.add_argument("--workers", type=int, default=None, help="processes reading sources (default: CPU count)")
    g.add_argument("--eval-docs", type=int, default=6_000, help="held-out documents measured at most")
    g.add_argument("--max-chars", type=int, default=None, help="character cut (default: the domain classifier's)")
    g.add_argument("--max-tokens", type=int, default=None, help="token limit (default: the domain classifier's)")
    g.add_argument("--tokenizer", choices=("corpus", "benchmark"), default="corpus")
    g.add_argument("--vocab-size", type=int, default=32_000, help="entries of the corpus tokenizer")
    g = p.add_argument_group("training")
    g.add_argument("--train-minutes", type=float, default=4.0)
    g.add_argument("--train-steps", type=int, default=None, help="a fixed step count instead of the time budget")
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--warmup-steps", type=int, default=300)
    g.add_argument("--train-token-budget", type=int, default=16_384, help="padded tokens a training step")
    g.add_argument("--train-max-rows", type=int, default=64, help="documents a training step at most")
    g.add_argument("--log-every", type=int, default=100)
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("measurement")
    g.add_argument("--passes", type=int, default=3, help="timed passes of each engine row (median reported)")
    g.add_argument("--fp8-sim", action="store_true",
                   help="add a row with every linear layer's product as an FP8 GEMM returns it (precision only)")
    g.add_argument("--ref-token-budget", type=int, default=32_768, help="padded tokens a micro-batch of the HF rows")
    g.add_argument("--min-accuracy", type=float, default=None,
                   help="exit 3 (after writing everything) when held-out fp32 accuracy is below this "
                        "(default: 3x chance)")
    args = p.parse_args(list(argv))
    if args.smoke:
        args.max_labels, args.min_docs, args.max_per_label = min(args.max_labels, 4), 10, 40
        args.heldout_pct, args.max_files, args.workers = 25, args.max_files or 12, args.workers or 1
        args.max_chars, args.max_tokens = args.max_chars or 400, args.max_tokens or 64
        args.vocab_size, args.train_steps, args.warmup_steps = min(args.vocab_size, 600), args.train_steps or 60, 5
        args.lr, args.train_token_budget, args.train_max_rows, args.log_every = 2e-3, 1024, 16, 20
        args.passes, args.ref_token_budget = 1, 2048
        args.min_accuracy = 0.0 if args.min_accuracy is None else args.min_accuracy
    args.workers = args.workers or min(len(os.sched_getaffinity(0)), 32)
    if not 0 < args.heldout_pct < 100:
        p.error("--heldout-pct must be in 1..99")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may reach a network; a missing file must fail, not download
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.compare_job is not None:
        return compare_job_main(args, argv)
    import torch
    import transformers

    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if not args.smoke and device.type != "cuda":
        log.error("no CUDA device: run with --smoke on a CPU machine")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference stays true fp32
    torch.backends.cudnn.allow_tf32 = False
    report = Report(args.out or default_out(device, args.smoke), {
        "status": "running", "device": card(device), "date": dt.date.today().isoformat(),
        "command": "python3 -m benchmarks.trained_precision " + " ".join(shlex.quote(a) for a in argv),
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "args": {k: v for k, v in vars(args).items()},
    })
    try:
        code = run(args, device, report)
    except BaseException as exc:
        report.payload.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        report.write()
        raise
    report.payload["status"] = "done"
    report.write()
    log.info("wrote %s (%.0f s in all)", report.path, report.payload["elapsed_s"])
    print_table(report.payload)
    return code


@dataclass
class Split:
    """One side of the corpus, tokenized as the classifier tokenizes: documents, label ids, tokens."""

    docs: list[Doc]
    y: np.ndarray
    tokens: Any = None


def run(args, device, report: Report) -> int:
    """The phases, in order; each writes the report when it ends. Exit code 3: the model is under the accuracy
    floor (everything is still measured and written)."""
    from sparkcurate.classifiers import DomainClassifier

    cut = (args.max_chars or DomainClassifier.default_max_chars, args.max_tokens or DomainClassifier.default_max_tokens)
    with report.phase("corpus"):
        labels, train_split, heldout = corpus_phase(args, report)
    with report.phase("tokenizer"):
        tokenizer = tokenizer_phase(args, train_split, heldout, cut, report)
    with report.phase("training"):
        model, config, in_memory = training_phase(args, train_split, heldout, labels, tokenizer, device, report)
    with contextlib.ExitStack() as holder:
        root = args.keep if args.keep else Path(holder.enter_context(tempfile.TemporaryDirectory()))
        with report.phase("checkpoint"):
            ckpt = save_checkpoint(root / "model", model.cpu(), config, labels, tokenizer)
            del model
            free(device)
            report.payload["checkpoint"] = {"dir": str(ckpt) if args.keep else "(temporary)",
                                            "bytes": sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())}
        with report.phase("reference"):
            ref = reference_phase(args, ckpt, labels, heldout, cut, in_memory, device, report)
        with report.phase("engine"):
            engine_rows(ckpt, heldout, cut, ref, device, args, report)
    training = report.payload["training"]
    training["accuracy_floor"] = floor = round(args.min_accuracy if args.min_accuracy is not None
                                               else 3.0 / len(labels), 5)
    if training["heldout_accuracy_fp32"] < floor:
        log.error("held-out accuracy %.4f is below %.4f: the model is barely trained, so its precision rows say "
                  "little (train longer or raise --lr)", training["heldout_accuracy_fp32"], floor)
        report.payload["status_detail"] = "model under the accuracy floor"
        return 3
    return 0


def corpus_phase(args, report: Report) -> tuple[list[str], Split, Split]:
    """Labels, the training split and the measured held-out documents (at most ``--eval-docs``, picked in hash
    order, then in label order); the held-out JSONL under ``--keep``."""
    docs, corpus = build_corpus(args)
    labels = corpus["labels"]
    index = {label: i for i, label in enumerate(labels)}
    train_docs = [d for d in docs if d.split == "train"]
    heldout = sorted((d for d in docs if d.split == "heldout"), key=lambda d: _rank("eval", d.text))[:args.eval_docs]
    heldout.sort(key=lambda d: (index[d.label], d.id))
    if len(heldout) < 5000 and not args.smoke:
        log.warning("only %d held-out documents (5,000 wanted): lower --min-docs or raise --max-per-label / "
                    "--heldout-pct", len(heldout))
    corpus["measured_docs"] = len(heldout)
    if args.keep:
        corpus["heldout_jsonl"] = str(write_heldout(args.keep, heldout))
    report.payload["corpus"] = corpus

    def as_split(ds: list[Doc]) -> Split:
        return Split(ds, np.array([index[d.label] for d in ds], dtype=np.int64))

    return labels, as_split(train_docs), as_split(heldout)


def tokenizer_phase(args, train_split: Split, heldout: Split, cut: tuple[int, int], report: Report):
    """The tokenizer, and both splits' tokens under the classifier's cut."""
    from sparkcurate.engine.tokenize import tokenize

    max_chars, max_tokens = cut
    tokenizer = make_tokenizer(args.tokenizer, [d.text for d in train_split.docs], args.vocab_size, max_chars)
    train_split.tokens = tokenize(tokenizer, [d.text for d in train_split.docs], max_tokens, max_chars)
    heldout.tokens = tokenize(tokenizer, [d.text for d in heldout.docs], max_tokens, max_chars)
    facts = tokenizer_facts(tokenizer, args.tokenizer, heldout.tokens, args.vocab_size)
    facts["cut"] = {"max_chars": max_chars, "max_tokens": max_tokens}
    facts["train_tokens"] = length_facts(train_split.tokens.lengths, max_tokens)
    facts["heldout_tokens"] = length_facts(heldout.tokens.lengths, max_tokens)
    report.payload["tokenizer"] = facts
    log.info("tokenizer %s: %d entries, held-out %.1f tokens on average, [UNK] share %s", args.tokenizer,
             len(tokenizer), facts["heldout_tokens"]["mean"], facts["unk_share"])
    return tokenizer


def training_phase(args, train_split: Split, heldout: Split, labels: list[str], tokenizer, device, report: Report):
    """The trained model, its backbone config, and its own fp32 probabilities on the first held-out documents
    (``ROUNDTRIP_DOCS``; the loaded checkpoint must give the same)."""
    import torch

    from benchmarks.gpu_stage import backbone_config
    from sparkcurate.models.heads import ClsHeadModel

    torch.manual_seed(args.seed)
    config = backbone_config(args.smoke, len(tokenizer))
    model = ClsHeadModel(config, len(labels)).to(device)
    pad_id = int(tokenizer.pad_token_id)
    training = train(model, train_split.tokens, train_split.y, args, device, pad_id)
    training["parameters"] = sum(p.numel() for p in model.parameters())
    training["shape"] = {k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                         "intermediate_size", "vocab_size", "position_buckets")}
    report.payload["training"] = training
    probe = np.arange(min(ROUNDTRIP_DOCS, len(heldout.docs)))
    in_memory = padded_forward(model, subset(heldout.tokens, probe), [probe], device, pad_id)
    return model, config, in_memory


def reference_phase(args, ckpt: Path, labels: list[str], heldout: Split, cut: tuple[int, int],
                    in_memory: np.ndarray, device, report: Report) -> np.ndarray:
    """Load the checkpoint as the domain classifier does; the fp32 reference and the NeMo-style row; the round
    trip and accuracy checks. Returns the reference probabilities."""
    from sparkcurate.classifiers import DomainClassifier
    from sparkcurate.engine.tokenize import tokenize

    clf = DomainClassifier(model=str(ckpt), device=device.type, max_chars=cut[0], max_tokens=cut[1])
    clf.preflight()
    if clf.labels != labels:
        raise RuntimeError(f"the checkpoint's labels {clf.labels} are not the corpus' {labels}")
    tokenizer = clf.load_tokenizer(ckpt)
    tokens = tokenize(tokenizer, [d.text for d in heldout.docs], cut[1], cut[0])
    if not all(np.array_equal(a, b) for a, b in zip(tokens.ids, heldout.tokens.ids)):
        raise RuntimeError("the saved tokenizer tokenizes the held-out documents differently")
    ref, rows = hf_rows(clf, ckpt, tokens, heldout.y, device, args, int(tokenizer.pad_token_id))
    free(device)  # hf_rows' model is gone with its frame
    report.payload["rows"] = rows
    report.payload["roundtrip"] = check_roundtrip(ref[:len(in_memory)], in_memory)
    training = report.payload["training"]
    training.update(accuracy_facts(ref, heldout.y, len(labels)))
    log.info("held-out fp32 accuracy %.4f (chance %.4f, majority label %.4f)", training["heldout_accuracy_fp32"],
             training["chance"], training["majority_share"])
    if args.keep:
        np.save(args.keep / "heldout_fp32_probs.npy", ref, allow_pickle=False)
    return ref


def check_roundtrip(loaded: np.ndarray, in_memory: np.ndarray) -> dict[str, Any]:
    """The loaded checkpoint's fp32 probabilities against the trained model's own, on the same documents: the
    published layout must carry every weight (a dropped or renamed tensor would be re-initialised or refused)."""
    diff = float(np.abs(loaded - in_memory).max())
    if diff > 1e-4:
        raise RuntimeError(f"the loaded checkpoint's fp32 forward differs from the trained model by {diff:.2e}")
    return {"docs": len(loaded), "max_prob_abs_diff_vs_trained_model": diff}


def accuracy_facts(ref: np.ndarray, y: np.ndarray, n_labels: int) -> dict[str, float]:
    """Held-out accuracy of the fp32 forward, next to what guessing gets (chance, always the largest label)."""
    top2 = np.sort(ref, axis=1)[:, -2:]
    return {"heldout_accuracy_fp32": round(float((ref.argmax(1) == y).mean()), 5), "chance": round(1 / n_labels, 5),
            "majority_share": round(float(np.bincount(y, minlength=n_labels).max() / len(y)), 5),
            "top2_margin_median": round(float(np.median(top2[:, 1] - top2[:, 0])), 4)}


def subset(tokens, idx: np.ndarray):
    from sparkcurate.engine.tokenize import Tokenized

    return Tokenized(ids=[tokens.ids[i] for i in idx], lengths=tokens.lengths[idx])


def print_table(payload: dict[str, Any]) -> None:
    """The summary goes last on stdout (the device tool returns the tail of the output)."""
    corpus, tok, training = payload["corpus"], payload["tokenizer"], payload["training"]
    print(f"device: {payload['device']}; corpus: {corpus['n_labels']} labels, {corpus['train_docs']} train / "
          f"{corpus['measured_docs']} measured held-out docs, {tok['heldout_tokens']['mean']} tokens on average")
    print(f"training: {training['steps']} steps, {training['epochs']} epochs, {training['seconds']} s; held-out fp32 "
          f"accuracy {training['heldout_accuracy_fp32']} (chance {training['chance']})")
    head = f"{'row':24} {'docs/s':>9} {'argmax %':>9} {'max diff':>9} {'>1e-2':>6} {'accuracy':>9}"
    print(head)
    print("-" * len(head))
    for r in payload["rows"]:
        print(f"{r['name']:24} {r['docs_per_s']:9.1f} {r['argmax_agreement_pct']:9.3f} {r['max_prob_abs_diff']:9.5f} "
              f"{r['docs_over_1e2']:6d} {r['accuracy']:9.4f}")


if __name__ == "__main__":
    raise SystemExit(main())
