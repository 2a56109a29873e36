"""Top-1 accuracy of the ``zero-shot`` classifier on real, labelled text, per split and per label.

The corpus (``benchmarks/zero_shot_corpus.py``) is rebuilt from installed Debian packages and checked against
``benchmarks/zero_shot/manifest.json`` (ids, labels and text hashes), so every run measures the same documents. The
documents are embedded once with the embedded model (through the engine, as the classifier does); each variant of
the label descriptions is then scored with the classifier's own module (``probabilities``), so the figure is the
shipped classifier's, not a re-implementation's.

Variants: ``default`` (the shipped descriptions), ``label-names`` (each label's bare name) and any JSON file of
descriptions that ``--labels`` accepts (e.g. ``benchmarks/zero_shot/descriptions-one-line.json``, the one-line
descriptions shipped before).

    apt-get install fortunes fortunes-min fortunes-debian-hints dict-gcide dict-foldoc dict-jargon \\
        dict-elements wordnet-base debian-reference-en
    python -m benchmarks.zero_shot_eval                      # ~3 min on a 2-core machine; writes benchmarks/results/
    python -m benchmarks.zero_shot_eval --write-manifest     # after a deliberate change of the corpus
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks import zero_shot_corpus as corpus
from benchmarks.zero_shot_corpus import Doc

log = logging.getLogger("benchmarks.zero_shot_eval")

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "zero_shot" / "manifest.json"
DEFAULT_VARIANTS = ("default", str(Path("benchmarks/zero_shot/descriptions-one-line.json")), "label-names")
EXIT_MISSING, EXIT_DRIFT = 2, 3


def make_classifier(variant: str):
    """The zero-shot classifier of a variant: ``default``, ``label-names`` or a JSON file of descriptions."""
    from sparkcurate.classifiers.domain import DOMAIN_LABELS
    from sparkcurate.classifiers.zero_shot import ZeroShotClassifier, read_label_descriptions

    if variant == "default":
        return ZeroShotClassifier()
    if variant == "label-names":
        return ZeroShotClassifier(label_descriptions={label: label.replace("_", " ") for label in DOMAIN_LABELS})
    return ZeroShotClassifier(label_descriptions=read_label_descriptions(variant))


def embed_documents(texts: Sequence[str]) -> np.ndarray:
    """Document embeddings from the embedded model, through the engine (same cut and batching as a run)."""
    from sparkcurate.classifiers.zero_shot import ZeroShotClassifier, embedded_model_dir
    from sparkcurate.engine.runner import InferenceEngine

    clf = ZeroShotClassifier(label_descriptions={"a": "a", "b": "b"})  # the embedder only: no descriptions needed
    model_dir = embedded_model_dir()
    module = clf.load_module(model_dir)
    engine = InferenceEngine(module.embedder, clf.load_tokenizer(model_dir), clf.engine_config(), "cpu")
    return engine.predict(list(texts))


def predict(variant: str, embeddings: np.ndarray) -> list[str]:
    """Each document's top label under ``variant``'s descriptions, by the classifier module's own scoring."""
    import torch

    from sparkcurate.classifiers.zero_shot import embedded_model_dir

    clf = make_classifier(variant)
    module = clf.load_module(embedded_model_dir())
    with torch.inference_mode():
        probs = module.probabilities(torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)))
    return [clf.labels[i] for i in probs.argmax(dim=1).tolist()]


def scores(docs: Sequence[Doc], preds: Sequence[str]) -> dict:
    """Top-1 overall, the mean of the per-label top-1 (macro), per source, and per label: n, top-1, commonest
    mistakes."""
    by_label: dict[str, list[str]] = {}
    for doc, pred in zip(docs, preds):
        by_label.setdefault(doc.label, []).append(pred)
    per_label = {}
    for label in sorted(by_label):
        got = by_label[label]
        wrong = Counter(p for p in got if p != label).most_common(3)
        per_label[label] = {"n": len(got), "top1": round(sum(p == label for p in got) / len(got), 4),
                            "mistaken_for": dict(wrong)}
    per_source: dict[str, list[bool]] = {}
    for doc, pred in zip(docs, preds):
        per_source.setdefault(doc.source, []).append(doc.label == pred)
    right = sum(d.label == p for d, p in zip(docs, preds))
    return {"n": len(docs), "top1": round(right / len(docs), 4) if docs else None,
            "macro_top1": round(float(np.mean([v["top1"] for v in per_label.values()])), 4) if docs else None,
            "per_source": {s: {"n": len(v), "top1": round(sum(v) / len(v), 4)} for s, v in sorted(per_source.items())},
            "per_label": per_label}


def evaluate(docs: Sequence[Doc], variants: Sequence[str], embeddings: np.ndarray | None = None) -> dict:
    """Scores of each variant on each split (and all documents together)."""
    if embeddings is None:
        embeddings = embed_documents([d.text for d in docs])
    splits = sorted({d.split for d in docs})
    out: dict[str, dict] = {}
    for variant in variants:
        preds = predict(variant, embeddings)
        out[variant] = {split: scores([d for d in docs if d.split == split],
                                      [p for d, p in zip(docs, preds) if d.split == split]) for split in splits}
        out[variant]["all"] = scores(docs, preds)
    return out


def manifest_rows(docs: Sequence[Doc]) -> list[list[str]]:
    return [[d.id, d.split, d.label, d.digest()] for d in docs]


def write_manifest(docs: Sequence[Doc], path: Path = MANIFEST) -> None:
    """One line per document (id, split, label, text hash), so a diff shows what changed."""
    lines = ",\n".join(json.dumps(row, ensure_ascii=False) for row in manifest_rows(docs))
    header = json.dumps({"packages": package_versions()}, indent=1)[:-2]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'{header},\n "docs": [\n{lines}\n]}}\n', encoding="utf-8")


def manifest_drift(docs: Sequence[Doc], path: Path = MANIFEST) -> list[str]:
    """What differs between the rebuilt corpus and the committed manifest (empty: the same documents)."""
    if not path.exists():
        return [f"no manifest at {path}"]
    want = {row[0]: row for row in json.loads(path.read_text(encoding="utf-8"))["docs"]}
    have = {row[0]: row for row in manifest_rows(docs)}
    problems = [f"missing: {i}" for i in sorted(set(want) - set(have))]
    problems += [f"new: {i}" for i in sorted(set(have) - set(want))]
    problems += [f"changed: {i}" for i in sorted(set(want) & set(have)) if want[i] != have[i]]
    return problems


def package_versions() -> dict[str, str | None]:
    """Installed versions of the corpus's Debian packages (None where dpkg does not know it)."""
    versions: dict[str, str | None] = {}
    for name in corpus.PACKAGES:
        try:
            res = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", name], capture_output=True, text=True,
                                 timeout=30)
            versions[name] = res.stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            versions[name] = None
    return versions


def table(results: dict) -> str:
    """Variant x split: top-1, then the macro top-1 in brackets, for the console."""
    first = next(iter(results.values()))
    head = "".join(f"{split + ' (n=' + str(v['n']) + ')':>24s}" for split, v in first.items())
    rows = [f"{'variant':50s}{head}"]
    for variant, by_split in results.items():
        cells = "".join(f"{100 * v['top1']:15.1f}% ({100 * v['macro_top1']:4.1f}%)" for v in by_split.values())
        rows.append(f"{variant[-50:]:50s}{cells}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.zero_shot_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append",
                   help=f"default | label-names | a JSON descriptions file; repeatable (default: {DEFAULT_VARIANTS})")
    p.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/<date>-cpu-zero-shot-eval.json)")
    p.add_argument("--write-manifest", action="store_true", help="record the rebuilt corpus as the manifest")
    p.add_argument("--allow-drift", action="store_true", help="measure even if the corpus differs from the manifest")
    p.add_argument("--dump-corpus", type=Path, help="also write the corpus as JSONL here (not committed)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        docs = corpus.build_corpus()
    except corpus.MissingPackages as exc:
        log.error("%s", exc)
        return EXIT_MISSING
    if args.write_manifest:
        write_manifest(docs)
        log.info("wrote %s (%d documents)", MANIFEST, len(docs))
    drift = manifest_drift(docs)
    if drift and not args.allow_drift:
        log.error("the rebuilt corpus differs from %s in %d documents (first: %s); other package versions? "
                  "--allow-drift measures anyway, --write-manifest records the new corpus", MANIFEST, len(drift),
                  "; ".join(drift[:3]))
        return EXIT_DRIFT
    if args.dump_corpus:
        args.dump_corpus.write_text("".join(json.dumps(d.as_dict(), ensure_ascii=False) + "\n" for d in docs),
                                    encoding="utf-8")
    variants = args.variant or list(DEFAULT_VARIANTS)
    results = evaluate(docs, variants)
    counts = Counter((d.split, d.source) for d in docs)
    record = {
        "command": "python -m benchmarks.zero_shot_eval" + (" " + shlex.join(argv) if argv else ""),
        "date": date.today().isoformat(), "machine": platform.machine(), "model": "embedded:all-MiniLM-L6-v2",
        "packages": package_versions(), "manifest_drift": drift[:20], "n_drift": len(drift),
        "documents": {f"{split}/{source}": n for (split, source), n in sorted(counts.items())},
        "results": results,
    }
    out = args.out or HERE / "results" / f"{date.today().isoformat()}-cpu-zero-shot-eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(table(results))
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
