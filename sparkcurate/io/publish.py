"""Publishing a run's output in one step (issue 22, item 3): readers of OUT see the previous complete output or
the new complete one, never a mix.

File sinks (JSONL, Parquet; both layouts; records or attribute files) write every commit group into a hidden,
run-scoped staging folder, ``OUT/_staging/<run id>/g<NNNNN>/``, with the output's own layout below it (Spark,
pyarrow and pandas skip ``_`` names). Each unit's record (``io.units``) says where its staged output is
(``staged``), which files it publishes (``files``, relative to OUT) and its rejects files (``rejects``, in
``OUT/_rejects``), so a resumed run (another run id) publishes the staged units of an unfinished run as they are.

The final step (``publish``), in this order:

a. every staged file not yet published is moved to its place (partitioned: into ``OUT/file_name=X/`` under
   Spark's part name, which carries the write job's UUID, so it never meets a file there now; mirror: to the
   input's fixed name, replacing the earlier file; a partition folder that is new in OUT moves as one folder
   rename), and the staged rejects into ``OUT/_rejects``;
b. ``OUT/_spark_metadata/<N>.compact`` is written (to a temporary name, then renamed): the batch log of Spark's
   streaming file sink (``FileStreamSinkLog``: a ``v1`` line, then one JSON object per file) listing exactly the
   new complete set. ``spark.read.<format>(OUT)`` lists its files from that log (``MetadataLogFileIndex``)
   instead of the folder, so from here Spark's readers read exactly the new set; then ``_manifest.json`` (its
   ``files``: the same set, for tools that honour it) is rewritten;
c. the superseded files (earlier files of redone units, outputs of inputs that keep nothing or are gone, older
   log batches) are deleted, and the manifest is rewritten with the entries that are left.

Why every batch is a ``.compact`` file with consecutive numbers: Spark derives the log's compaction interval from
the ``.compact`` files it finds (two: their distance, here 1; one, ``N.compact``: a divisor of ``N + 1``), and a
reader reads only the latest batch when it is a compaction batch (``CompactibleFileStreamLog.getAllValidBatches``).
The last ``KEEP_BATCHES`` batches are kept (a reader that listed the log a moment ago still finds its batch).
"""

from __future__ import annotations

import json
import logging
import posixpath
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterable

from sparkcurate.io.listing import spark_skips
from sparkcurate.io.units import unit_key

if TYPE_CHECKING:  # pragma: no cover
    from sparkcurate.io.fs import HadoopFS

log = logging.getLogger(__name__)

STAGING_DIR = "_staging"
SPARK_LOG_DIR = "_spark_metadata"
REJECTS_DIR = "_rejects"
COMPACT_SUFFIX = ".compact"
LOG_VERSION = "v1"  # FileStreamSinkLog.VERSION
KEEP_BATCHES = 2


def group_stage(run_id: str, index: int) -> str:
    """The staging folder of commit group ``index`` of run ``run_id``, relative to OUT."""
    return f"{STAGING_DIR}/{run_id}/g{index:05d}"


def staged_unit_outputs(fs: "HadoopFS", stage: str, targets: dict[str, str], layout: str) -> dict[str, dict]:
    """What a group staged for each of its units: ``{"staged": stage, "files": [...], "rejects": [...]}``, the
    files as paths relative to OUT once published (``targets``: unit -> its output's path under OUT, from the
    sink), the rejects as names in ``OUT/_rejects``."""
    by_key: dict[str, list[str]] = {}
    for name, is_dir in fs.list(f"{stage}/{REJECTS_DIR}"):
        if not is_dir and name.startswith("part-") and name.endswith(".json"):
            by_key.setdefault(name[len("part-"):].split("-", 1)[0], []).append(name)
    out: dict[str, dict] = {}
    for unit, target in targets.items():
        if layout == "partitioned":
            files = sorted(f"{target}/{n}" for n, d in fs.list(f"{stage}/{target}") if not d and not spark_skips(n))
        else:
            files = [target] if fs.exists(f"{stage}/{target}") else []
        out[unit] = {"staged": stage, "files": files, "rejects": sorted(by_key.get(unit_key(unit), []))}
    return out


def unpublished(record: dict[str, Any]) -> bool:
    """Whether a unit's record names staged output that is not yet published."""
    return "staged" in record


def staged_intact(fs: "HadoopFS", record: dict[str, Any]) -> bool:
    """Whether every file an unpublished unit names is still there, staged or already moved (a staging folder
    removed by hand loses its units: they are done again)."""
    stage = record.get("staged") or ""
    files = [(f"{stage}/{rel}", rel) for rel in record.get("files") or []]
    files += [(f"{stage}/{REJECTS_DIR}/{n}", f"{REJECTS_DIR}/{n}") for n in record.get("rejects") or []]
    return all(fs.exists(src) or fs.exists(dst) for src, dst in files)


def clean_staging(fs: "HadoopFS", keep: Iterable[str]) -> None:
    """Remove from ``OUT/_staging`` everything that no reused unit needs: the staging of units done again
    (``--restart``, a changed input or option), Spark's and the rejects' leftovers, older versions' folders."""
    keep = {k for k in keep if k}
    runs = {k.split("/")[1] for k in keep}
    for name, _ in fs.list(STAGING_DIR):
        if name not in runs:
            fs.delete(f"{STAGING_DIR}/{name}")
            continue
        for group, _ in fs.list(f"{STAGING_DIR}/{name}"):
            if f"{STAGING_DIR}/{name}/{group}" not in keep:
                fs.delete(f"{STAGING_DIR}/{name}/{group}")
    if not fs.list(STAGING_DIR):
        fs.delete(STAGING_DIR)


# --- the final step ------------------------------------------------------------------------------------------


def current_files(fs: "HadoopFS", records: dict[str, dict], targets: dict[str, str], layout: str) -> list[str]:
    """The new complete set: every file (relative to OUT) of the units that keep output (``targets``: unit ->
    its output's path). A unit recorded by an older version (no ``files``) has what its output path holds."""
    files: set[str] = set()
    for unit, target in targets.items():
        rec = records.get(unit) or {}
        if isinstance(rec.get("files"), list):
            files.update(str(f) for f in rec["files"])
        elif layout == "partitioned":
            files.update(f"{target}/{n}" for n, d in fs.list(target) if not d and not spark_skips(n))
        elif fs.exists(target):
            files.add(target)
    return sorted(files)


def visible_files(fs: "HadoopFS", rel: str = "") -> list[str]:
    """The data files a directory listing of OUT finds (names Spark skips left out), recursively."""
    out: list[str] = []
    for name, is_dir in sorted(fs.list(rel)):
        if spark_skips(name):
            continue
        path = f"{rel}/{name}" if rel else name
        out.extend(visible_files(fs, path) if is_dir else [path])
    return out


def move_staged(fs: "HadoopFS", records: dict[str, dict], layout: str, after_first: Callable[[], None]
                ) -> tuple[int, set[str]]:
    """Step (a): move each unpublished unit's staged files to their place, and its rejects into ``_rejects``.
    A partitioned unit whose folder is new in OUT moves as one folder rename; otherwise file by file (replacing
    a file of that name: the mirror layout's fixed names). A file no longer staged was moved by an earlier,
    interrupted publish. Returns how many files moved and the partition folders that were moved into file by
    file (the only ones that can hold superseded files)."""
    moved, into = 0, set()
    for unit in sorted(records):
        rec = records[unit]
        if not unpublished(rec) or not rec.get("staged"):
            continue
        stage, files = rec["staged"], [str(f) for f in rec.get("files") or []]
        folders = {posixpath.dirname(f) for f in files}
        if layout == "partitioned" and len(folders) == 1:
            folder = folders.pop()
            if fs.exists(f"{stage}/{folder}") and not fs.exists(folder):
                fs.rename(f"{stage}/{folder}", folder)
                moved += len(files)
                files = []
                after_first()
            else:
                into.add(folder)
        pairs = [(f"{stage}/{rel}", rel) for rel in files]
        pairs += [(f"{stage}/{REJECTS_DIR}/{n}", f"{REJECTS_DIR}/{n}") for n in rec.get("rejects") or []]
        for src, dst in pairs:
            if not fs.exists(src):
                continue
            fs.delete(dst)
            fs.rename(src, dst)
            moved += 1
            after_first()
    return moved, into


def superseded_files(fs: "HadoopFS", folders: Iterable[str], keep: set[str]) -> list[str]:
    """Files inside the partition folders moved into file by file that the new set does not hold (a redone
    unit's earlier files). Mirror outputs are replaced whole by the moves."""
    return [f"{e}/{n}" for e in sorted(folders) for n, d in fs.list(e)
            if not d and not spark_skips(n) and f"{e}/{n}" not in keep]


def superseded_rejects(fs: "HadoopFS", records: dict[str, dict]) -> list[str]:
    """Rejects files of the published units that their new record does not name (a redone unit's earlier
    rejects beyond its new ones)."""
    wanted = {unit_key(u): set(r.get("rejects") or []) for u, r in records.items() if unpublished(r)}
    out = []
    for name, is_dir in fs.list(REJECTS_DIR):
        key = name[len("part-"):].split("-", 1)[0] if name.startswith("part-") else None
        if not is_dir and key in wanted and name not in wanted[key]:
            out.append(f"{REJECTS_DIR}/{name}")
    return out


# --- Spark's file sink log ------------------------------------------------------------------------------------


def log_batches(fs: "HadoopFS") -> list[int]:
    """The batch ids in ``OUT/_spark_metadata`` (``N`` or ``N.compact``), ascending."""
    ids = []
    for name, is_dir in fs.list(SPARK_LOG_DIR):
        stem = name[: -len(COMPACT_SUFFIX)] if name.endswith(COMPACT_SUFFIX) else name
        if not is_dir and stem.isdigit():
            ids.append(int(stem))
    return sorted(ids)


def latest_log_files(fs: "HadoopFS") -> list[str] | None:
    """The files (relative to OUT) the latest batch lists, or None without a log (tests and checks)."""
    batches = log_batches(fs)
    if not batches:
        return None
    text = fs.read_text(f"{SPARK_LOG_DIR}/{batches[-1]}{COMPACT_SUFFIX}") or ""
    root = qualified_uri(fs, "").rstrip("/") + "/"
    out = []
    for line in text.splitlines()[1:]:
        path = json.loads(line)["path"]
        out.append(_unquote_uri(path[len(root):] if path.startswith(root) else path))
    return sorted(out)


def _unquote_uri(text: str) -> str:
    from urllib.parse import unquote

    return unquote(text)


def qualified_uri(fs: "HadoopFS", rel: str) -> str:
    """``rel``'s full URI as Spark writes it in the log (``Path.toUri``: ``%`` and spaces escaped)."""
    return str(fs.fs.makeQualified(fs.path(rel)).toUri().toString())


def log_entries(fs: "HadoopFS", files: list[str]) -> list[dict[str, Any]]:
    """One ``SinkFileStatus`` per file, from one listing of each folder (no request per file)."""
    by_parent: dict[str, list[str]] = {}
    for rel in files:
        by_parent.setdefault(posixpath.dirname(rel), []).append(rel)
    out = []
    for parent, rels in sorted(by_parent.items()):
        statuses = {str(st.getPath().getName()): st for st in _listed(fs, parent)}
        for rel in sorted(rels):
            st = statuses.get(posixpath.basename(rel))
            if st is None:
                raise FileNotFoundError(missing_output(fs, rel))
            out.append({"path": str(st.getPath().toUri().toString()), "size": int(st.getLen()), "isDir": False,
                        "modificationTime": int(st.getModificationTime()),
                        "blockReplication": int(st.getReplication()), "blockSize": int(st.getBlockSize()),
                        "action": "add"})
    return out


def _listed(fs: "HadoopFS", rel: str) -> list:
    """The Hadoop file statuses in folder ``rel``; none when the folder is gone (deleted by hand: the caller names
    what is missing). One listing, no existence check before it: this runs once per published folder."""
    try:
        return list(fs.fs.listStatus(fs.path(rel)))
    except Exception as exc:  # py4j wraps java.io.FileNotFoundException
        if "FileNotFound" in str(exc):
            return []
        raise


def missing_output(fs: "HadoopFS", rel: str) -> str:
    """The error for a file the output's record says is published and is not there (deleted by hand, say): the
    run cannot list the output as complete, and ``--restart`` rewrites it from the input."""
    return (f"{fs.root}/{rel} should hold published output (an earlier run's, kept as committed) and is missing; "
            "rerun with --restart to classify every input file again and rewrite the output")


def write_spark_log(fs: "HadoopFS", files: list[str]) -> int:
    """Step (b): the next batch of ``OUT/_spark_metadata``, listing exactly ``files``; returns its id. Written in
    a staging folder and renamed in (the whole folder, when there is no log yet: a reader never finds the log
    folder without a batch in it)."""
    batches = log_batches(fs)
    batch = batches[-1] + 1 if batches else 0
    text = "\n".join([LOG_VERSION] + [json.dumps(e, separators=(",", ":")) for e in log_entries(fs, files)])
    tmp = f"{STAGING_DIR}/log-{uuid.uuid4().hex[:12]}"
    name = f"{batch}{COMPACT_SUFFIX}"
    try:
        fs.write_text(f"{tmp}/{name}", text)
        if fs.exists(SPARK_LOG_DIR):
            fs.rename(f"{tmp}/{name}", f"{SPARK_LOG_DIR}/{name}")
        else:
            fs.rename(tmp, SPARK_LOG_DIR)
    finally:
        fs.delete(tmp)
    return batch


def prune_log(fs: "HadoopFS") -> None:
    """Keep the last ``KEEP_BATCHES`` batches of the log; remove older ones and anything else in it."""
    batches = log_batches(fs)
    keep = {f"{b}{COMPACT_SUFFIX}" for b in batches[-KEEP_BATCHES:]}
    for name, _ in fs.list(SPARK_LOG_DIR):
        if name not in keep and not (name.startswith(".") and name[1:].rsplit(".crc", 1)[0] in keep):
            fs.delete(f"{SPARK_LOG_DIR}/{name}")
