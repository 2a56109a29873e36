"""Input units and their commit records: what lets a long job commit as it goes and a re-run resume.

A *unit* is one input file (a large file is one unit: it is never committed in parts). The job cuts the units it
has to do into *commit groups* (``commit_groups``: consecutive units up to a byte budget) and runs each group as
its own Spark job; once a group's output, rejects and counts are written, one small JSON record names its units
(``UnitStore.commit``) under ``OUT/_units/`` (hidden from Spark's readers, like every ``_`` name).

What a record holds for each unit, and why:

- ``identity``: the input file as the file system reports it (path, size, modification time, and the store's
  etag where its listing gives one): a file rewritten in place changes its size or time, so it is redone;
- ``fingerprint``: a hash of everything that changes the output besides the file (models' fingerprints,
  classifier settings, filter, formats, layout, compression, modes, text field, the read schema): another
  option redoes every unit;
- ``counts``: the unit's rows by status and reason, by label, and its confidence histograms (plain lists), so
  the summary of a resumed run counts every unit without classifying the reused ones again.

A record file is written to a temporary name and renamed (``HadoopFS.write_text``): a crash leaves either the
whole record or none (a left ``.tmp`` is ignored). Files are named ``<time ns>-<run>-<kind>.json`` and read in
name order, later ones winning; a run that finishes writes one ``index`` record of every current unit and removes
the older files (``UnitStore.compact``), so a removed unit's record goes with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from sparkcurate.io.listing import canonical_path

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

    from sparkcurate.io.fs import HadoopFS
    from sparkcurate.io.listing import InputFile, InputListing

log = logging.getLogger(__name__)

UNITS_DIR = "_units"
RECORD_SUFFIX = ".json"
INDEX_KIND = "index"


def fingerprint(options: dict[str, Any]) -> str:
    """A short, stable hash of the options that change the output (plain values; others by ``str``)."""
    text = json.dumps(options, sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def unit_key(file_name: str) -> str:
    """A name-safe key of one unit (its file's rejects are ``_rejects/part-<key>-N.json``): the first 16 hex
    digits of the SHA-256 of its ``file_name`` in UTF-8, as Spark's ``sha2(file_name, 256)`` computes it."""
    return hashlib.sha256(file_name.encode("utf-8")).hexdigest()[:16]


# --- what identifies an input file -----------------------------------------------------------------------------


def unit_identities(spark: "SparkSession", listing: "InputListing") -> dict[str, dict[str, Any]]:
    """``file_name`` -> identity of every listed file: its path, size, modification time (ms) and, where the
    store's listing gives one (S3A, ABFS: Hadoop's ``EtagSource``), its etag. Local files are stat'ed; others
    come from one listing of each parent folder (no per-file request)."""
    out: dict[str, dict[str, Any]] = {}
    remote: list["InputFile"] = []
    for f in listing.files:
        local = _local_file(f.path)
        if local is None:
            remote.append(f)
            continue
        try:
            st = os.stat(local)
            out[f.file_name] = _identity(f.path, st.st_size, st.st_mtime_ns // 1_000_000, None)
        except OSError:  # gone since it was listed: an identity no record matches (redone, and explained then)
            out[f.file_name] = _identity(f.path, f.size, None, None)
    if remote:
        out.update(_hadoop_identities(spark, remote))
    return out


def _identity(path: str, size: int, modified_ms: int | None, etag: str | None) -> dict[str, Any]:
    ident: dict[str, Any] = {"path": canonical_path(path), "size": int(size), "modified_ms": modified_ms}
    if etag:
        ident["etag"] = etag
    return ident


def _local_file(path: str) -> str | None:
    from urllib.parse import unquote, urlparse

    parsed = urlparse(path)
    if not parsed.scheme:
        return path
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return unquote(parsed.path)
    return None


def _hadoop_identities(spark: "SparkSession", files: list["InputFile"]) -> dict[str, dict[str, Any]]:
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    by_parent: dict[str, dict[str, Any]] = {}
    out: dict[str, dict[str, Any]] = {}
    for f in files:
        parent = posixpath.dirname(f.path)
        if parent not in by_parent:
            hpath = jvm.org.apache.hadoop.fs.Path(parent)
            statuses = hpath.getFileSystem(conf).listStatus(hpath)
            by_parent[parent] = {canonical_path(str(st.getPath().toString())): st for st in statuses}
        st = by_parent[parent].get(canonical_path(f.path))
        if st is None:
            out[f.file_name] = _identity(f.path, f.size, None, None)
            continue
        out[f.file_name] = _identity(f.path, int(st.getLen()), int(st.getModificationTime()), _etag(st))
    return out


def _etag(status) -> str | None:
    """The store's etag where its ``FileStatus`` carries one (Hadoop 3.3.5+ ``EtagSource``), else None."""
    try:
        value = status.getEtag()
    except Exception:
        return None
    return str(value) if value else None


# --- which units to do ------------------------------------------------------------------------------------------


@dataclass
class UnitPlan:
    """What a run does with each unit: ``reused`` (name -> its committed record), ``todo`` (the files to
    classify, in listing order: ``new`` ones and ``redone`` ones, whose input or options changed) and
    ``removed`` (committed units whose file is gone)."""

    fingerprint: str
    identities: dict[str, dict[str, Any]]
    reused: dict[str, dict[str, Any]] = field(default_factory=dict)
    todo: list["InputFile"] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    redone: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def summary(self, total: int, groups: int) -> dict[str, int]:
        """The summary's ``units``: every unit is one of reused, redone or new; removed ones are gone."""
        return {"total": total, "reused": len(self.reused), "redone": len(self.redone), "new": len(self.new),
                "removed": len(self.removed), "groups": groups}


def plan_units(listing: "InputListing", identities: dict[str, dict[str, Any]], records: dict[str, dict[str, Any]],
               options_fingerprint: str, restart: bool = False, resumable: bool = True,
               lost: set[str] | frozenset[str] = frozenset()) -> UnitPlan:
    """Compare the listing with the committed records: a unit whose record has the same identity and options
    fingerprint is reused (never with ``restart``, or where the input cannot be read in parts: ``resumable``
    False, or when its staged output is ``lost``); the others are done again or for the first time; records of
    files no longer listed are removed."""
    plan = UnitPlan(options_fingerprint, identities)
    listed = {f.file_name for f in listing.files}
    plan.removed = sorted(set(records) - listed) if resumable else []
    for f in listing.files:
        rec = records.get(f.file_name)
        if (resumable and not restart and rec is not None and f.file_name not in lost
                and rec.get("fingerprint") == options_fingerprint
                and rec.get("identity") == identities.get(f.file_name)):
            plan.reused[f.file_name] = rec
            continue
        plan.todo.append(f)
        (plan.redone if rec is not None else plan.new).append(f.file_name)
    if plan.reused or plan.redone or plan.removed:
        log.info("units: %d reused, %d redone (input or options changed%s), %d new, %d removed", len(plan.reused),
                 len(plan.redone), ", --restart" if restart else "", len(plan.new), len(plan.removed))
    return plan


def commit_groups(files: Iterable["InputFile"], budget_bytes: int) -> list[list["InputFile"]]:
    """``files`` cut, in order, into groups of about ``budget_bytes`` each (a group closes once it reaches the
    budget; a file larger than the budget is a group of its own). ``budget_bytes`` <= 0: one group."""
    groups: list[list["InputFile"]] = []
    current: list["InputFile"] = []
    filled = 0
    for f in files:
        current.append(f)
        filled += f.size
        if budget_bytes > 0 and filled >= budget_bytes:
            groups.append(current)
            current, filled = [], 0
    if current:
        groups.append(current)
    return groups


# --- the records ------------------------------------------------------------------------------------------------


class UnitStore:
    """``OUT/_units/``: the committed units' records (module docstring)."""

    def __init__(self, fs: "HadoopFS"):
        self.fs = fs

    def _record_names(self) -> list[str]:
        return sorted(name for name, is_dir in self.fs.list(UNITS_DIR)
                      if not is_dir and name.endswith(RECORD_SUFFIX) and not name.startswith("."))

    def read(self) -> dict[str, dict[str, Any]]:
        """``file_name`` -> the current record of every committed unit (from the last index on, later files
        winning). A record file that does not parse (which write-then-rename should make impossible) is
        skipped with a warning: its units are done again."""
        names = self._record_names()
        start = max((i for i, n in enumerate(names) if n.endswith(f"-{INDEX_KIND}{RECORD_SUFFIX}")), default=0)
        current: dict[str, dict[str, Any]] = {}
        for name in names[start:]:
            try:
                data = json.loads(self.fs.read_text(f"{UNITS_DIR}/{name}") or "")
                units = data["units"]
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("%s/%s/%s is not a unit record (%s): its units are done again", self.fs.root,
                            UNITS_DIR, name, exc)
                continue
            if isinstance(units, dict):
                current.update({str(k): v for k, v in units.items() if isinstance(v, dict)})
        return current

    def commit(self, run_id: str, group: int, units: dict[str, dict[str, Any]]) -> str:
        """Record ``units`` (name -> identity, fingerprint, counts) as committed: one file, written whole."""
        return self._write(run_id, f"g{group:05d}", units)

    def compact(self, run_id: str, units: dict[str, dict[str, Any]]) -> None:
        """One index of every current unit, then the older record files removed (a crash in between leaves the
        index, which supersedes them)."""
        written = self._write(run_id, INDEX_KIND, units)
        for name, is_dir in self.fs.list(UNITS_DIR):
            if name != written and not name.startswith("."):
                self.fs.delete(f"{UNITS_DIR}/{name}")

    def _write(self, run_id: str, kind: str, units: dict[str, dict[str, Any]]) -> str:
        name = f"{time.time_ns():020d}-{run_id}-{kind}{RECORD_SUFFIX}"
        body = {"kind": INDEX_KIND if kind == INDEX_KIND else "group", "run_id": run_id,
                "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "units": units}
        self.fs.write_json(f"{UNITS_DIR}/{name}", body)
        return name
