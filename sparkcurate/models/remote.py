"""Models on object stores (s3://, gs://, abfs(s)://, dbfs:/, file://), copied once per node.

Executors need the model as a local directory (transformers and safetensors read files). Every Python
worker on a node asking the object store for its own copy would multiply download time and disk use by
the number of workers, and two workers writing the same directory would corrupt it. So the first caller
on a node copies the model into a node-local cache, under an exclusive ``fcntl.flock`` on a lock file;
the copy goes into a temporary directory that is renamed into place only after a ``.complete`` marker is
written inside it, so a crash mid-copy never leaves something that looks finished. Later callers (other
processes, other tasks) see the marker and reuse the copy without taking the lock.

Hub ids (``org/model``) and plain local paths are returned unchanged: the model loader resolves hub ids
with huggingface_hub's own node-local cache and revision pinning. ``file://`` URIs do go through the
cache, which is how to pull a model from a slow shared mount (NFS) onto local disk once per node.
``dbfs:/x`` maps to the Databricks FUSE path ``/dbfs/x`` when that exists.

URIs may carry credentials (``user:pass@`` or signed query strings): they are never logged or put into
error messages; :func:`redact_uri` strips them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

CACHE_ENV = "SPARKCURATE_CACHE"
DEFAULT_CACHE = "~/.cache/sparkcurate/models"
COMPLETE_MARKER = ".complete"
#: Where Databricks mounts DBFS on every node (module attribute so tests can point it elsewhere).
DBFS_FUSE_ROOT = "/dbfs"

#: fsspec protocol -> pip package that provides it, for a clear error when the backend is missing.
BACKEND_PACKAGES: dict[str, str] = {
    "s3": "s3fs",
    "s3a": "s3fs",
    "s3n": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
    "az": "adlfs",
    "hdfs": "pyarrow",
    "viewfs": "pyarrow",
}

_SCHEME_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


class RemoteModelError(RuntimeError):
    """A remote model could not be made available locally; the message says why and what to do."""


def redact_uri(uri: str) -> str:
    """The URI without ``user:pass@``, query string or fragment, safe for logs and errors."""
    if not _SCHEME_RE.match(uri):
        return uri
    parts = urlsplit(uri)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def scrub(text: str, uri: str) -> str:
    """``text`` (e.g. a backend's error message) with the URI's credentials and query replaced by ***."""
    if not _SCHEME_RE.match(uri):
        return text
    parts = urlsplit(uri)
    secrets = [parts.netloc.rsplit("@", 1)[0]] if "@" in parts.netloc else []
    if parts.query:
        secrets.append(parts.query)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def uri_scheme(uri: str) -> str | None:
    """Lower-case scheme of ``scheme://...`` or ``dbfs:/...``; None for local paths and hub ids."""
    match = _SCHEME_RE.match(uri)
    if match:
        return match.group(1).lower()
    if uri.lower().startswith("dbfs:/"):
        return "dbfs"
    return None


def cache_root(cache_dir: str | None = None) -> Path:
    """The node-local model cache: argument, else $SPARKCURATE_CACHE, else ~/.cache/sparkcurate/models.

    Executors on YARN may run as a user whose home is missing or read-only; then the cache falls back
    to the system temporary directory (per user) with a warning rather than failing the task.
    """
    chosen = cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    root = Path(os.path.expanduser(chosen))
    try:
        root.mkdir(parents=True, exist_ok=True)
        return root
    except OSError as exc:
        if cache_dir or os.environ.get(CACHE_ENV):
            raise RemoteModelError(f"cannot create the model cache {root}: {exc}") from None
        fallback = Path(tempfile.gettempdir()) / f"sparkcurate-models-{os.getuid()}"
        log.warning("cannot create %s (%s); caching models in %s", root, exc, fallback)
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def cache_key(uri: str, revision: str | None = None) -> str:
    """sha256 of the URI (credentials stripped) plus an optional revision/etag."""
    parts = urlsplit(uri) if _SCHEME_RE.match(uri) else None
    if parts is not None:
        uri = urlunsplit(
            (parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, parts.query, parts.fragment)
        )
    text = uri.rstrip("/") + "\n" + (revision or "")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _dbfs_fuse_path(uri: str) -> str:
    """``dbfs:/x`` or ``dbfs:///x`` -> ``/dbfs/x``; an error when this node has no such FUSE path."""
    rest = re.sub(r"^dbfs:/+", "", uri, flags=re.IGNORECASE)
    local = os.path.join(DBFS_FUSE_ROOT, rest)
    if not os.path.exists(local):
        raise RemoteModelError(
            f"{redact_uri(uri)}: {local} does not exist on this node (no DBFS FUSE mount, or no such "
            "model). Use a /Volumes/... or /dbfs/... path, or an s3://, abfss://, gs:// URI."
        )
    return local


def _filesystem(uri: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    """The fsspec filesystem for ``uri`` and the path inside it, with a clear missing-backend error."""
    import fsspec  # local import: only remote models need it

    scheme = uri_scheme(uri) or "file"
    try:
        cls = fsspec.get_filesystem_class(scheme)
    except ImportError:
        package = BACKEND_PACKAGES.get(scheme, f"the fsspec backend for {scheme}://")
        raise RemoteModelError(
            f"install {package} to read {scheme}:// models (pip install {package}); "
            f"needed for {redact_uri(uri)}"
        ) from None
    except ValueError:
        raise RemoteModelError(
            f"unsupported model URI scheme {scheme}:// in {redact_uri(uri)}"
        ) from None
    fs = cls(**(storage_options or {}))
    return fs, fs._strip_protocol(uri).rstrip("/")


def _list_files(fs: Any, root: str, uri: str) -> list[str]:
    """Every file under ``root``; errors for a missing object, a single file or an empty directory."""
    safe = redact_uri(uri)
    try:
        exists = fs.exists(root)
        is_file = exists and fs.isfile(root)
        files = [] if (not exists or is_file) else fs.find(root, detail=False)
    except Exception as exc:  # noqa: BLE001 - backends raise many types; the message is what matters
        detail = scrub(str(exc), uri).splitlines()[0][:300] if str(exc) else ""
        raise RemoteModelError(f"cannot list {safe}: {type(exc).__name__}: {detail}") from None
    if not exists:
        raise RemoteModelError(f"model not found: {safe} does not exist (or is not readable)")
    if is_file:
        raise RemoteModelError(f"{safe} is a file: point the model at its directory")
    if not files:
        raise RemoteModelError(f"model directory {safe} is empty")
    return sorted(files)


def _relative(path: str, root: str) -> str:
    """``path`` relative to ``root``, refusing anything that would escape the copy directory."""
    rel = posixpath.relpath(path.rstrip("/"), root)
    if rel.startswith("..") or posixpath.isabs(rel) or rel == ".":
        raise RemoteModelError(f"unexpected object name outside the model directory: {rel!r}")
    return rel


def _copy_tree(fs: Any, root: str, files: list[str], dest: Path) -> int:
    """Copy ``files`` (all under ``root``) into ``dest``; returns the number of bytes copied."""
    total = 0
    for path in files:
        target = dest / _relative(path, root)
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(path, str(target))
        total += target.stat().st_size
    return total


@contextlib.contextmanager
def _node_lock(lock_path: Path) -> Iterator[None]:
    """Exclusive lock shared by every process on the node (flock is released if the holder dies)."""
    with open(lock_path, "a+") as handle:
        started = time.monotonic()
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        waited = time.monotonic() - started
        if waited > 1.0:
            log.info("waited %.1f s for another process copying the same model", waited)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_stale(root: Path, key: str) -> None:
    """Delete leftovers of copies that crashed (temporary dirs, an unmarked final dir); lock held."""
    for stale in root.glob(f"{key}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / key
    if final.exists() and not (final / COMPLETE_MARKER).exists():
        shutil.rmtree(final, ignore_errors=True)


def _copy_into_cache(uri: str, root: Path, key: str, revision: str | None,
                     storage_options: dict[str, Any] | None) -> Path:
    """Copy the model into ``root/key`` atomically (temp dir + marker + rename); lock held."""
    fs, remote_root = _filesystem(uri, storage_options)
    files = _list_files(fs, remote_root, uri)
    tmp = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=root))
    try:
        started = time.monotonic()
        size = _copy_tree(fs, remote_root, files, tmp)
        marker = {"uri": redact_uri(uri), "revision": revision, "files": len(files), "bytes": size,
                  "copied_at": time.time(), "pid": os.getpid()}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker), encoding="utf-8")
        final = root / key
        os.rename(tmp, final)
    except RemoteModelError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        hint = " (disk full?)" if exc.errno == errno.ENOSPC else ""
        raise RemoteModelError(
            f"copying {redact_uri(uri)} into {root} failed: {type(exc).__name__}{hint}: "
            f"{scrub(str(exc), uri)[:300]}"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("copied model %s (%d files, %.1f MB) to %s in %.1f s", redact_uri(uri), len(files),
             size / 1e6, final, time.monotonic() - started)
    return final


def resolve_model_uri(uri: str, cache_dir: str | None = None, revision: str | None = None,
                      storage_options: dict[str, Any] | None = None) -> str:
    """A local directory for ``uri``: remote URIs are copied once per node, the rest pass through.

    * local paths and hub ids: returned unchanged;
    * ``dbfs:/x``: ``/dbfs/x`` (the FUSE mount), error if this node has none;
    * ``s3://``, ``gs://``, ``abfs(s)://``, ``file://``, any fsspec URI: copied into
      ``<cache>/<sha256(uri, revision)>`` under a node-wide file lock; concurrent callers wait for the
      first and reuse its copy. ``revision`` (e.g. an etag or version label) makes a new cache entry
      when the model at the same URI changes. ``storage_options`` go to the fsspec filesystem
      (credentials are better left to the environment/instance role).
    """
    scheme = uri_scheme(uri)
    if scheme is None:
        return uri
    if scheme == "dbfs":
        return _dbfs_fuse_path(uri)
    root = cache_root(cache_dir)
    key = cache_key(uri, revision)
    final = root / key
    if (final / COMPLETE_MARKER).exists():
        return str(final)
    with _node_lock(root / f"{key}.lock"):
        if (final / COMPLETE_MARKER).exists():
            log.debug("model %s already cached at %s", redact_uri(uri), final)
            return str(final)
        _remove_stale(root, key)
        return str(_copy_into_cache(uri, root, key, revision, storage_options))
