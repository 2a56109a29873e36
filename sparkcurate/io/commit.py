"""Making a run's output current, one commit group at a time (each once its rows are classified and counted):
the ``_RUNNING.json`` lock around the run, the leftovers of an interrupted run, ``OUT/_rejects`` (one set of files
per input unit, staged, then moved in), the
``_manifest.json`` of what sparkcurate wrote (and the removal of every earlier output this run did not
produce), and ``OUT/_summary.json`` last.

One run at a time per output: ``_RUNNING.json`` is created atomically (``O_EXCL`` locally, create-without-
overwrite through Hadoop elsewhere) and names its run (host, process, start) and a heartbeat the running job
refreshes every ``LOCK_HEARTBEAT_S`` seconds. A second run refuses while that run is alive (``OutputBusy``); a
marker whose run is dead (its process gone, on this host; its heartbeat older than ``LOCK_STALE_S``, from
another host; or marked failed) is an unfinished earlier run: taken over with a warning and recorded in the
summary's ``previous_run_unfinished``.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sparkcurate.io.listing import spark_skips
from sparkcurate.io.publish import REJECTS_DIR
from sparkcurate.io.sinks import Sink, get_sink
from sparkcurate.io.units import unit_key

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    from pyspark.sql import DataFrame, SparkSession

    from sparkcurate.io.fs import HadoopFS
    from sparkcurate.io.listing import InputListing

log = logging.getLogger(__name__)

RUNNING_MARKER = "_RUNNING.json"
SUMMARY_FILE = "_summary.json"
MANIFEST_FILE = "_manifest.json"
# The running job rewrites its heartbeat this often; a marker from another host whose heartbeat is older than
# LOCK_STALE_S belongs to a dead run (a marker from this host is judged by its process instead).
LOCK_HEARTBEAT_S = 30.0
LOCK_STALE_S = 600.0

_ACTIVE_RUNS: set[str] = set()  # run ids in progress in this process (a failed one here leaves a dead marker)


class OutputBusy(RuntimeError):
    """Another run that is alive holds the output directory (the command exits 5); nothing was touched."""


class OutputNotOurs(ValueError):
    """The output directory holds entries that sparkcurate did not write (the command exits 2); nothing was
    touched."""


# --- who holds the lock ---------------------------------------------------------------------------------------


def _read_first_line(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.readline().strip()
    except OSError:
        return ""


def host_key() -> str:
    """This host as process ids see it: the host name, the kernel's boot id and the pid namespace (two
    containers with one host name do not share pids), so a pid in a marker is checked only where it means the
    same process."""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    return "|".join((socket.gethostname(), _read_first_line("/proc/sys/kernel/random/boot_id"), pidns))


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell it from a later process
    that got the same pid; None where /proc is missing."""
    stat = _read_first_line(f"/proc/{pid}/stat")
    if not stat or ")" not in stat:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None


def _process_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _read_first_line(f"/proc/{pid}/stat")
    if stat and ")" in stat and stat.rsplit(")", 1)[1].split()[:1] == ["Z"]:
        return False  # a zombie: dead, not yet reaped
    return start is None or _process_start(pid) in (None, start)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _parse_iso(text: Any) -> float | None:
    import calendar

    try:
        return float(calendar.timegm(time.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ")))
    except (TypeError, ValueError):
        return None


def marker_liveness(marker: dict, modified: float | None, now: float | None = None) -> tuple[bool, str]:
    """Whether the run that wrote ``marker`` is alive, and why it is judged so.

    - marked ``failed``: dead (the run said so as it ended);
    - from this host (same host key): alive while its process is (in this process: while the run is in
      progress), whatever its heartbeat;
    - otherwise (another host, or a marker of an older version without these fields): alive while its heartbeat
      (else the file's modification time) is younger than ``LOCK_STALE_S``.
    """
    now = time.time() if now is None else now
    if marker.get("state") == "failed":
        return False, "it ended with a failure"
    pid = marker.get("pid")
    if isinstance(pid, int) and marker.get("host_key") == host_key():
        if pid == os.getpid():
            alive = marker.get("run_id") in _ACTIVE_RUNS
            return alive, "it is in progress in this process" if alive else "it ended in this process"
        alive = _process_alive(pid, marker.get("pid_start"))
        return alive, f"its process {pid} on this host is {'running' if alive else 'gone'}"
    beat = _parse_iso(marker.get("heartbeat_at")) or modified
    if beat is None:
        return False, "it has no heartbeat"
    age = now - beat
    alive = age < LOCK_STALE_S
    return alive, (f"its last heartbeat is {age:.0f} s old ({'under' if alive else 'over'} the {LOCK_STALE_S:.0f} s "
                   f"after which a run from another host counts as dead)")


def describe_run(marker: dict) -> str:
    where = f" on {marker['host']} (pid {marker.get('pid')})" if marker.get("host") else ""
    parts = [f"run {marker.get('run_id', '?')}{where}", f"started {marker.get('started_at', '?')}"]
    if marker.get("heartbeat_at"):
        parts.append(f"last heartbeat {marker['heartbeat_at']}")
    return ", ".join(parts)


class MarkerFile:
    """``OUT/_RUNNING.json``. Local outputs go through the OS (``O_EXCL`` create and ``os.replace``: atomic);
    other stores through Hadoop (create without overwrite: atomic on HDFS; object stores have no atomic
    create, so there two runs started in the same second may both proceed)."""

    def __init__(self, fs: "HadoopFS", output: str, name: str = RUNNING_MARKER):
        from sparkcurate.io.fs import local_path

        self.fs, self.name = fs, name
        root = local_path(output)
        self.local: "Path | None" = root / name if root is not None else None

    def create(self, data: dict) -> bool:
        """Write ``data`` if no marker exists; False if one does."""
        text = json.dumps(data, indent=2) + "\n"
        if self.local is not None:
            self.local.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            return True
        try:
            stream = self.fs.fs.create(self.fs.path(self.name), False)
        except Exception as exc:
            if "AlreadyExists" in str(exc) or self.fs.exists(self.name):
                return False
            raise
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()
        return True

    def read(self) -> tuple[dict | None, float | None]:
        """(the marker, its modification time), (None, None) when there is none. A marker being rewritten is
        read again; one that stays unreadable is ``{}`` (judged by its age)."""
        for attempt in range(5):
            text, modified = self._read_text()
            if text is None:
                return None, None
            try:
                data = json.loads(text)
                return (data if isinstance(data, dict) else {}), modified
            except ValueError:
                time.sleep(0.2 * (attempt + 1))
        return {}, modified

    def _read_text(self) -> tuple[str | None, float | None]:
        if self.local is not None:
            try:
                return self.local.read_text(encoding="utf-8"), self.local.stat().st_mtime
            except FileNotFoundError:
                return None, None
        if not self.fs.exists(self.name):
            return None, None
        try:
            modified = self.fs.fs.getFileStatus(self.fs.path(self.name)).getModificationTime() / 1000.0
            return self.fs.read_text(self.name), modified
        except Exception as exc:
            if "FileNotFound" in str(exc):
                return None, None
            raise

    def overwrite(self, data: dict) -> None:
        text = json.dumps(data, indent=2) + "\n"
        if self.local is not None:
            tmp = self.local.with_name(f".{self.name}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.local)
            return
        stream = self.fs.fs.create(self.fs.path(self.name), True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()

    def move_aside(self, to: str) -> bool:
        """Rename the marker (atomic: of two runs taking over one dead marker, one wins); False if it is gone."""
        if self.local is not None:
            try:
                os.rename(self.local, self.local.with_name(to))
            except FileNotFoundError:
                return False
            crc = self.local.with_name(f".{self.name}.crc")  # left by older versions, which wrote through Hadoop
            if crc.exists():
                crc.unlink()
            return True
        try:
            return bool(self.fs.fs.rename(self.fs.path(self.name), self.fs.path(to)))
        except Exception:
            return False

    def delete(self, name: str | None = None) -> None:
        if self.local is not None:
            self.local.with_name(name or self.name).unlink(missing_ok=True)
        else:
            self.fs.delete(name or self.name)


# --- one run's hold on OUT --------------------------------------------------------------------------------------


class OutputCommit:
    """One run's hold on OUT. ``start`` takes the lock (refusing while another run is alive, taking over a dead
    one's marker and cleaning what it left) and reads the manifest; ``touch`` says the output is about to change
    (and records what it may hold); ``prune`` removes earlier outputs this run did not produce; ``failed`` marks
    the run failed and restores the earlier marker when nothing was touched; ``finish`` writes the summary and
    ``release`` drops the lock."""

    def __init__(self, spark: "SparkSession", output: str):
        from sparkcurate.io.fs import HadoopFS

        self.output = output
        self.fs: "HadoopFS" = HadoopFS(spark, output)
        self.marker = MarkerFile(self.fs, output)
        self.run_id = uuid.uuid4().hex[:12]
        self.previous: dict | None = None
        self.existed = self.fs.exists("")  # a run that fails before writing removes the directory it created
        self.touched = False
        # What sparkcurate wrote here before (the manifest): paths under OUT, the inputs they hold, and how they
        # were written (format, table, layout, file name column, compression; None: unknown, an older version).
        self.entries: set[str] = set()
        self.names: set[str] = set()
        self.config: dict | None = None
        # The data files the manifest names as the current complete output (None: not known, an older manifest).
        self.files: list[str] | None = None
        self.pruned: list[str] = []
        # What this run's commit groups may have written so far (``touch``), for the manifest.
        self._touched_entries: set[str] = set()
        self._touched_names: set[str] = set()
        self._body: dict[str, Any] = {}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    @classmethod
    def start(cls, spark: "SparkSession", output: str, command: str | None, started: float) -> "OutputCommit":
        commit = cls(spark, output)
        commit._acquire(command, started)
        try:
            commit.entries, commit.names, commit.config = read_manifest(commit.fs)
            commit.files = manifest_files(commit.fs)
            foreign = foreign_entries(commit.fs, commit.entries)
            if foreign:
                shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
                raise OutputNotOurs(f"--output {output} holds entries that sparkcurate did not write ({shown}): "
                                    "nothing was touched; choose an empty folder or a sparkcurate output")
        except BaseException:
            commit._release_untouched()
            raise
        if commit.previous:
            log.warning("the previous run into %s (%s) did not finish: its output may be partial; this run "
                        "replaces it", output, describe_run(commit.previous))
            clean_leftovers(commit.fs)
        commit._beat = threading.Thread(target=commit._heartbeat, name=f"sparkcurate-lock-{commit.run_id}",
                                        daemon=True)
        commit._beat.start()
        return commit

    def _acquire(self, command: str | None, started: float) -> None:
        """Create the marker, or refuse (``OutputBusy``) while the run that holds it is alive; a dead run's
        marker is moved aside (one taker wins) and becomes ``previous``."""
        self._body = {"run_id": self.run_id, "state": "running", "started_at": _iso(started),
                      "heartbeat_at": _iso(time.time()), "command": command, "host": socket.gethostname(),
                      "pid": os.getpid(), "pid_start": _process_start(os.getpid()), "host_key": host_key()}
        _ACTIVE_RUNS.add(self.run_id)
        try:
            for _ in range(10):
                if self.marker.create(self._body):
                    return
                found, modified = self.marker.read()
                if found is None:
                    continue  # removed meanwhile: try again
                alive, why = marker_liveness(found, modified)
                if alive:
                    raise OutputBusy(f"another sparkcurate run is writing to {self.output}: {describe_run(found)}; "
                                     f"{why}. Nothing was touched: wait for it to end (if it is dead, it counts as "
                                     f"such after {LOCK_STALE_S / 60:.0f} minutes without heartbeat, or delete "
                                     f"{self.output}/{RUNNING_MARKER})")
                aside = f"{RUNNING_MARKER}.dead-{self.run_id}"
                if self.marker.move_aside(aside):
                    log.warning("%s: the run that left %s is dead (%s): taking over", self.output, RUNNING_MARKER,
                                why)
                    self.marker.delete(aside)
                    self.previous = self.previous or found
            raise OutputBusy(f"could not take {self.output}/{RUNNING_MARKER}: other runs keep taking it")
        except BaseException:
            _ACTIVE_RUNS.discard(self.run_id)
            raise

    def _heartbeat(self) -> None:
        while not self._stop.wait(LOCK_HEARTBEAT_S):
            try:
                found, _ = self.marker.read()
                if not found or found.get("run_id") != self.run_id:
                    log.error("%s/%s no longer names this run (%s): another run took over", self.output,
                              RUNNING_MARKER, self.run_id)
                    return
                self._body["heartbeat_at"] = _iso(time.time())
                self.marker.overwrite(self._body)
            except Exception as exc:  # a missed beat is not fatal; LOCK_STALE_S spans many
                log.warning("could not refresh %s: %s", RUNNING_MARKER, exc)

    def check_owner(self) -> None:
        """``OutputBusy`` when the marker no longer names this run (another run judged it dead and took over):
        checked before the output is touched and before the summary is written."""
        found, _ = self.marker.read()
        if not found or found.get("run_id") != self.run_id:
            raise OutputBusy(f"{self.output}/{RUNNING_MARKER} no longer names this run ({self.run_id}): another "
                             f"run took over the output ({describe_run(found or {})}); this run stops here")

    def ignores_case(self) -> bool:
        """Whether the output's file system treats names differing only in case as one (the marker is found
        under its name with the case swapped)."""
        return self.fs.exists(RUNNING_MARKER.swapcase())

    def begin(self) -> None:
        """This run is about to write under OUT (its staging, its unit records): checked to hold the lock still,
        and a failure from here leaves the marker as an unfinished run's."""
        self.check_owner()
        self.touched = True

    def touch(self, outputs: "RunOutputs", publishing: bool = False) -> None:
        """The output is about to change (a commit group of a table sink, or the final step of a file sink, is
        about to write ``outputs``): from here the manifest lists what it may hold (the earlier entries and every
        group's of this run so far), so a run killed while writing leaves nothing unaccounted. ``publishing``
        (``io.publish``): the manifest still names the previous complete set as its ``files`` until the new one
        is published; a table's groups mark it incomplete."""
        self.begin()
        if not publishing:
            self.files = None  # a table's output: no file list
        self._touched_entries |= outputs.entries
        self._touched_names |= outputs.names
        names = self._touched_names | (self.names if _same_output(self.config, outputs.config) else set())
        write_manifest(self.fs, self.entries | self._touched_entries, names, outputs.config, self.run_id,
                       complete=publishing and self.files is not None, files=self.files if publishing else None)

    def published(self, outputs: "RunOutputs", files: list[str]) -> None:
        """The new complete set is published (``io.publish`` step b): the manifest names it as its ``files``; its
        entries still cover everything earlier until ``prune`` removes what is superseded."""
        self.files = list(files)
        write_manifest(self.fs, self.entries | self._touched_entries, outputs.names, outputs.config, self.run_id,
                       complete=True, files=self.files)

    def prune(self, spark: "SparkSession", outputs: "RunOutputs", sink: "Sink") -> list[str]:
        """Remove every earlier output that this run did not produce and record this run's as the manifest.

        Paths under OUT are deleted (never a folder that holds this run's output); a sink that removes an
        input's output itself (a Delta table's ``DELETE``, a catalog table's ``DROP PARTITION``) is asked to,
        for the inputs it held last time and does not hold now, and its folders under OUT stay its own."""
        keep = set(outputs.entries)
        if removes_by_name(sink) and (self.config is None or _same_output(self.config, outputs.config)):
            stale_names = sorted(self.names - outputs.names)
            if stale_names:
                cfg = outputs.config
                sink.remove_outputs(spark, self.output, cfg["layout"], cfg["file_name_column"], stale_names,
                                    cfg["compression"])
                self.pruned.extend(stale_names)
            keep |= {rel for rel in self.entries if self.fs.exists(rel)}  # the table's folders: its log decides
        else:
            for rel in sorted(self.entries - keep):
                if any(e.startswith(rel.rstrip("/") + "/") for e in keep):
                    continue  # a folder that holds this run's output (manifests of older versions)
                if self.fs.exists(rel):
                    log.info("removing %s: this run did not produce it", rel)
                    self.fs.delete(rel)
                    _remove_empty_parents(self.fs, rel)
                self.pruned.append(rel)
        write_manifest(self.fs, keep, outputs.names, outputs.config, self.run_id, complete=True, files=self.files)
        self.entries, self.names, self.config = keep, set(outputs.names), outputs.config
        return self.pruned

    def failed(self, explained: bool = False) -> None:
        """``explained``: the failure is reported as one line of its own that says nothing was written."""
        self._stop_heartbeat()
        if not self.touched:
            self._release_untouched()
            if not explained:
                log.error("the run failed before writing anything: %s keeps its earlier content", self.output)
        else:
            try:
                if self._owns_marker():  # never another run's marker (one that took over a stalled run)
                    self._body["state"] = "failed"
                    self._body["failed_at"] = _iso(time.time())
                    self.marker.overwrite(self._body)
            except Exception as exc:  # never hide the real failure
                log.warning("could not mark %s as failed: %s", RUNNING_MARKER, exc)
            log.error("the run failed while replacing the output: %s/%s marks it as unfinished", self.output,
                      RUNNING_MARKER)
        _ACTIVE_RUNS.discard(self.run_id)

    def finish(self, summary: dict[str, Any]) -> None:
        self.check_owner()
        self.fs.write_json(SUMMARY_FILE, summary)

    def release(self) -> None:
        """Drop the lock (after the summary and the report are written)."""
        self._stop_heartbeat()
        if self._owns_marker():
            self.marker.delete()
        _ACTIVE_RUNS.discard(self.run_id)

    def _owns_marker(self) -> bool:
        found, _ = self.marker.read()
        return bool(found) and found.get("run_id") == self.run_id

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(timeout=10)

    def _release_untouched(self) -> None:
        """Undo this run's marker: the output is as it was, including an earlier run's unfinished state."""
        try:
            if not self._owns_marker():
                pass  # another run holds OUT now: its marker stays
            elif self.previous:
                self.marker.overwrite(self.previous)
            else:
                self.marker.delete()
        except Exception as exc:  # never hide the real failure
            log.warning("could not restore %s: %s", RUNNING_MARKER, exc)
        if not self.existed:
            _remove_if_empty(self.fs)
        _ACTIVE_RUNS.discard(self.run_id)


# --- what sparkcurate wrote ------------------------------------------------------------------------------------


def read_manifest(fs: "HadoopFS") -> tuple[set[str], set[str], dict | None]:
    """(paths under OUT, input names, output settings) of what sparkcurate wrote here before. An output of an
    older version (a ``_summary.json``, no manifest) counts its partition folders and data files as
    sparkcurate's."""
    data = fs.read_json(MANIFEST_FILE)
    if isinstance(data, dict) and isinstance(data.get("entries"), list):
        config = data.get("output") if isinstance(data.get("output"), dict) else None
        return {str(e) for e in data["entries"]}, {str(n) for n in data.get("file_names") or []}, config
    if fs.exists(SUMMARY_FILE):
        found = [e for e in visible_entries(fs) if _looks_like_output(e)]
        if found:
            log.warning("%s has no %s (written by an older sparkcurate): its %d partition folders and data files "
                        "are taken as sparkcurate's output", fs.root, MANIFEST_FILE, len(found))
        return set(found), set(), None
    return set(), set(), None


_OUTPUT_SUFFIXES = tuple(s + c for s in (".jsonl", ".json", ".ndjson") for c in ("", ".gz", ".bz2", ".deflate"))


def _looks_like_output(rel: str) -> bool:
    """What an older sparkcurate wrote: partition folders (``k=v``), JSON-lines and Parquet files (mirror)."""
    name = posixpath.basename(rel)
    return "=" in name or name.endswith(_OUTPUT_SUFFIXES + (".parquet",))


def write_manifest(fs: "HadoopFS", entries: set[str], names: set[str], config: dict, run_id: str,
                   complete: bool, files: list[str] | None = None) -> None:
    """``entries``: every path under OUT sparkcurate may have written (what the ownership check accepts);
    ``files``: the data files of the current complete output (file sinks; the set a reader that does not list
    folders should read, the same the Spark log ``_spark_metadata`` names), None for tables."""
    body: dict[str, Any] = {"run_id": run_id, "complete": complete, "output": config, "entries": sorted(entries),
                            "file_names": sorted(names)}
    if files is not None:
        body["files"] = sorted(files)
    fs.write_json(MANIFEST_FILE, body)


def manifest_files(fs: "HadoopFS") -> list[str] | None:
    """The manifest's ``files`` (the current complete set of data files), None where it names none."""
    data = fs.read_json(MANIFEST_FILE)
    files = data.get("files") if isinstance(data, dict) else None
    return [str(f) for f in files] if isinstance(files, list) else None


def visible_entries(fs: "HadoopFS", rel: str = "") -> list[str]:
    """What a reader of OUT (``spark.read.json``) sees: files, and partition folders (``k=v``) as one entry;
    names Spark skips (``_x``, ``.x``) are left out."""
    out: list[str] = []
    for name, is_dir in sorted(fs.list(rel)):
        if spark_skips(name):
            continue
        path = f"{rel}/{name}" if rel else name
        if is_dir and "=" not in name:
            out.extend(visible_entries(fs, path))
        else:
            out.append(path)
    return out


def foreign_entries(fs: "HadoopFS", owned: set[str], rel: str = "") -> list[str]:
    """Visible entries under OUT that are neither in the manifest nor inside one of its entries: files this
    run must neither count nor delete. A folder is looked into only where the manifest has entries below it."""
    folders = {posixpath.dirname(e) for e in owned}
    folders |= {"/".join(f.split("/")[:i]) for f in list(folders) for i in range(1, f.count("/") + 1)}
    out: list[str] = []
    for name, is_dir in sorted(fs.list(rel)):
        path = f"{rel}/{name}" if rel else name
        if spark_skips(name) or path in owned:
            continue
        if is_dir and path in folders:
            out.extend(foreign_entries(fs, owned, path))
        else:
            out.append(path + ("/" if is_dir else ""))
    return out


def _remove_empty_parents(fs: "HadoopFS", rel: str) -> None:
    parent = posixpath.dirname(rel)
    while parent and not fs.list(parent):
        fs.delete(parent)
        parent = posixpath.dirname(parent)


@dataclass(frozen=True)
class RunOutputs:
    """What one run writes: ``entries`` (paths under OUT: partition folders, mirror files; none for a catalog
    table), ``names`` (the inputs they hold) and ``config`` (how they were written)."""

    entries: set[str]
    names: set[str]
    config: dict


def written_names(opts: Any, counts: Any) -> set[str]:
    """The inputs this run writes an output for: those that keep a record (attribute files: every input with a
    record). ``opts``: the run's ``pipeline.JobOptions``; ``counts``: its ``report.summary.Counts`` (neither
    imported: both sit above this module)."""
    every = getattr(opts, "output_mode", "records") == "attributes"  # attribute files: a row for every record
    return {fname for fname, status, _reason, n in counts.by_status_file if (every or status == "kept") and n > 0}


def run_outputs(spark: "SparkSession", opts: Any, counts: Any, sink: "Sink", names: set[str] | None = None
                ) -> RunOutputs:
    """This run's outputs (``RunOutputs``): the sink says where each input's output lives under OUT. ``names``:
    the inputs written (by default those ``counts`` says keep a record)."""
    names = written_names(opts, counts) if names is None else names
    table = getattr(opts, "output_table", None)
    entries = set() if table else {sink.target(spark, opts.layout, opts.file_name_column, n, opts.compression)
                                   for n in names}
    config = {"format": opts.output_format, "table": table, "layout": opts.layout,
              "file_name_column": opts.file_name_column, "compression": opts.compression}
    return RunOutputs(entries, names, config)


def removes_by_name(sink: "Sink") -> bool:
    """Whether ``sink`` removes an input's output itself (a table's rows) instead of its path under OUT."""
    return type(sink).remove_outputs is not Sink.remove_outputs


def _same_output(a: dict | None, b: dict | None) -> bool:
    """Whether two runs wrote the same dataset (format, table and file name column; a codec change is not a
    new dataset)."""
    keys = ("format", "table", "file_name_column")
    return a is not None and b is not None and all(a.get(k) == b.get(k) for k in keys)


def _remove_if_empty(fs) -> None:
    """Remove the output directory this run created (for its marker) when nothing else is in it."""
    try:
        if fs.exists("") and not fs.list(""):
            fs.delete("")
    except Exception as exc:  # never hide the real failure
        log.warning("could not remove the empty output directory %s: %s", fs.root, exc)


def clean_leftovers(fs) -> None:
    """Spark's staging folders an interrupted run left: hidden from readers, but they take space. ``_staging``
    stays: it may hold staged units a resumed run publishes (``io.publish.clean_staging`` removes the rest once
    the run knows which units it reuses)."""
    for name, is_dir in fs.list():
        if is_dir and (name == "_temporary" or name.startswith(".spark-staging")):
            log.info("removing %s left by the unfinished run", name)
            fs.delete(name)


def write_unit_rejects(spark: "SparkSession", rejected: "DataFrame", output: str, run_id: str,
                       file_names: list[str], into: str = REJECTS_DIR, none_rejected: bool = False) -> None:
    """The rejects of one commit group's units (``spark.outcome.rejected_rows``): one JSON line per rejected
    record, in ``OUT/<into>/part-<unit key>-<n>.json`` (``units.unit_key``), so a unit's rejects are replaced
    or removed with the unit. Staged first, then each unit's earlier files are removed and its new ones moved in:
    a failure while staging leaves the earlier rejects as they were. ``into``: ``_rejects`` (a table sink's
    groups), or the group's staging folder's (file sinks: published with the output, ``io.publish``).
    ``none_rejected`` (the group's counts say so): no Spark write, which would stage nothing at the cost of a
    job; earlier rejects are still removed."""
    from pyspark.sql import functions as F

    from sparkcurate.io.fs import HadoopFS

    fs = HadoopFS(spark, output)
    staging = f"_staging/rejects-{run_id}-{uuid.uuid4().hex[:8]}"
    staged: dict[str, list[str]] = {}
    if not none_rejected:
        key = F.substring(F.sha2(F.col("file_name"), 256), 1, 16).alias(_UNIT_COLUMN)
        rejected.select("*", key).write.mode("overwrite").partitionBy(_UNIT_COLUMN).json(
            f"{output.rstrip('/')}/{staging}")
        for dirname, is_dir in fs.list(staging):
            if is_dir and dirname.startswith(_UNIT_COLUMN + "="):
                folder = f"{staging}/{dirname}"
                staged[dirname.split("=", 1)[1]] = sorted(f"{folder}/{p}" for p, d in fs.list(folder)
                                                          if not d and p.startswith("part-"))
    keys = {unit_key(n) for n in file_names}
    try:
        for name, is_dir in fs.list(into):
            if not is_dir and _rejects_key(name) in keys:
                fs.delete(f"{into}/{name}")
        for key_, parts in sorted(staged.items()):
            for i, src in enumerate(parts):
                fs.rename(src, f"{into}/part-{key_}-{i:05d}.json")
        if not fs.exists(into):
            fs.mkdirs(into)
    finally:
        fs.delete(staging)
        if not fs.list("_staging"):
            fs.delete("_staging")


def prune_rejects(spark: "SparkSession", output: str, file_names: set[str]) -> int:
    """Remove from ``OUT/_rejects`` every file that holds no current unit's rejects (units removed since, and
    files of older versions, which wrote the rejects as one Spark output); returns how many."""
    from sparkcurate.io.fs import HadoopFS

    fs = HadoopFS(spark, output)
    keys = {unit_key(n) for n in file_names}
    removed = 0
    for name, is_dir in fs.list(REJECTS_DIR):
        if name.startswith("."):
            continue  # checksum files go with their file
        if is_dir or _rejects_key(name) not in keys:
            fs.delete(f"{REJECTS_DIR}/{name}")
            removed += 1
    if not fs.exists(REJECTS_DIR):
        fs.mkdirs(REJECTS_DIR)
    return removed


_UNIT_COLUMN = "__sparkcurate_unit"
_REJECTS_NAME = re.compile(r"^part-([0-9a-f]{16})-\d+\.json$")


def _rejects_key(name: str) -> str | None:
    """The unit key of a rejects file of ours (``part-<key>-<n>.json``), else None."""
    match = _REJECTS_NAME.match(name)
    return match.group(1) if match else None


def prune_stale_outputs(spark: "SparkSession", opts: Any, listing: "InputListing", counts: Any,
                        sink: "Sink | None" = None) -> None:
    """Remove the earlier output of input files that keep nothing this time (every record filtered out or
    rejected; in attribute mode, files with no record): Spark writes no partition for them, so the old one would
    otherwise survive a re-run. ``opts``: the run's ``pipeline.JobOptions``; ``counts``: its
    ``report.summary.Counts`` (neither imported: both sit above this module); ``sink``: where the output goes
    (says how an input's output is removed; by default the one ``opts.output_format`` names)."""
    kept = written_names(opts, counts)
    sink = sink or get_sink(opts.output_format)
    stale = [f.file_name for f in listing.files if f.file_name not in kept]
    if stale:
        sink.remove_outputs(spark, opts.output, opts.layout, opts.file_name_column, stale, opts.compression)
