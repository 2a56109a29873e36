"""Remote models: copied once per node into a locked, atomic cache (sparkcurate.models.remote)."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import fsspec
import pytest

from sparkcurate.models import remote
from sparkcurate.models.remote import RemoteModelError, resolve_model_uri

MODEL_FILES = {
    "config.json": b'{"model_type": "deberta-v2"}',
    "model.safetensors": b"\x00" * 4096,
    "tokenizer/spm.model": b"sentencepiece bytes",
}


@pytest.fixture()
def memfs():
    """fsspec's in-memory filesystem, emptied after each test."""
    fs = fsspec.filesystem("memory")
    yield fs
    for path in list(fs.store):
        fs.store.pop(path, None)
    fs.pseudo_dirs[:] = [""]


def _put_model(fs, root: str) -> None:
    for rel, data in MODEL_FILES.items():
        fs.pipe(f"{root}/{rel}", data)


def _assert_model_copy(path: str) -> None:
    local = Path(path)
    for rel, data in MODEL_FILES.items():
        assert (local / rel).read_bytes() == data
    marker = json.loads((local / remote.COMPLETE_MARKER).read_text())
    assert marker["files"] == len(MODEL_FILES)


def _count_copies(monkeypatch) -> list[str]:
    calls: list[str] = []
    original = remote._copy_tree

    def counting(fs, root, files, dest):
        calls.append(str(dest))
        return original(fs, root, files, dest)

    monkeypatch.setattr(remote, "_copy_tree", counting)
    return calls


def test_local_paths_and_hub_ids_pass_through(tmp_path):
    for value in [str(tmp_path), "nvidia/domain-classifier", "relative/dir", "~/models/x"]:
        assert resolve_model_uri(value, cache_dir=str(tmp_path / "cache")) == value
    assert not (tmp_path / "cache").exists()


def test_memory_uri_is_copied_once_and_reused(memfs, tmp_path, monkeypatch):
    _put_model(memfs, "/models/m1")
    calls = _count_copies(monkeypatch)
    first = resolve_model_uri("memory://models/m1", cache_dir=str(tmp_path))
    second = resolve_model_uri("memory://models/m1/", cache_dir=str(tmp_path))
    assert first == second
    assert Path(first).parent == tmp_path
    assert Path(first).name == remote.cache_key("memory://models/m1")
    _assert_model_copy(first)
    assert len(calls) == 1
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_revision_makes_a_new_cache_entry(memfs, tmp_path, monkeypatch):
    _put_model(memfs, "/models/m1")
    calls = _count_copies(monkeypatch)
    a = resolve_model_uri("memory://models/m1", cache_dir=str(tmp_path), revision="etag-1")
    b = resolve_model_uri("memory://models/m1", cache_dir=str(tmp_path), revision="etag-2")
    assert a != b and len(calls) == 2


def test_file_uri_is_copied(tmp_path):
    src = tmp_path / "shared" / "model"
    for rel, data in MODEL_FILES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    out = resolve_model_uri(f"file://{src}", cache_dir=str(tmp_path / "cache"))
    assert Path(out).parent == tmp_path / "cache"
    _assert_model_copy(out)


def test_cache_dir_from_environment(memfs, tmp_path, monkeypatch):
    _put_model(memfs, "/models/m1")
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "envcache"))
    out = resolve_model_uri("memory://models/m1")
    assert Path(out).parent == tmp_path / "envcache"


def test_missing_object_is_a_clear_error(memfs, tmp_path):
    with pytest.raises(RemoteModelError, match="model not found: memory://nope/model"):
        resolve_model_uri("memory://nope/model", cache_dir=str(tmp_path))


def test_empty_directory_is_a_clear_error(memfs, tmp_path):
    memfs.mkdir("/models/empty")
    with pytest.raises(RemoteModelError, match="is empty"):
        resolve_model_uri("memory://models/empty", cache_dir=str(tmp_path))
    assert not any((p / remote.COMPLETE_MARKER).exists() for p in tmp_path.iterdir())


def test_a_single_file_is_refused(memfs, tmp_path):
    memfs.pipe("/models/weights.safetensors", b"x")
    with pytest.raises(RemoteModelError, match="is a file"):
        resolve_model_uri("memory://models/weights.safetensors", cache_dir=str(tmp_path))


def test_missing_backend_names_the_package_and_hides_credentials(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # makes `import s3fs` fail even if installed
    uri = "s3://AKIAKEY:topsecret@bucket/models/m1?X-Amz-Signature=sig123"
    with pytest.raises(RemoteModelError) as info:
        resolve_model_uri(uri, cache_dir=str(tmp_path))
    message = str(info.value)
    assert "install s3fs to read s3:// models" in message
    assert "s3://bucket/models/m1" in message
    for secret in ["AKIAKEY", "topsecret", "sig123", "X-Amz"]:
        assert secret not in message


def test_redact_and_scrub():
    assert remote.redact_uri("abfss://u:p@acct.dfs.core.windows.net/c/m?sv=1&sig=2") == (
        "abfss://acct.dfs.core.windows.net/c/m"
    )
    assert remote.redact_uri("/local/path") == "/local/path"
    assert remote.scrub("denied for u:p at ?sig=2", "s3://u:p@b/k?sig=2") == "denied for *** at ?***"


def test_cache_key_ignores_credentials_but_not_the_path():
    assert remote.cache_key("s3://a:b@bucket/m") == remote.cache_key("s3://bucket/m")
    assert remote.cache_key("s3://bucket/m") != remote.cache_key("s3://bucket/m2")


def test_dbfs_maps_to_the_fuse_path(tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "DBFS_FUSE_ROOT", str(tmp_path))
    (tmp_path / "models" / "dc").mkdir(parents=True)
    assert resolve_model_uri("dbfs:/models/dc") == str(tmp_path / "models" / "dc")
    assert resolve_model_uri("dbfs:///models/dc") == str(tmp_path / "models" / "dc")
    with pytest.raises(RemoteModelError, match="no DBFS FUSE mount"):
        resolve_model_uri("dbfs:/models/missing")


def test_crash_mid_copy_leaves_no_complete_marker_and_next_call_recopies(memfs, tmp_path, monkeypatch):
    _put_model(memfs, "/models/m1")
    uri = "memory://models/m1"
    original = remote._copy_tree

    def crashing(fs, root, files, dest):
        (dest / "config.json").write_bytes(b"partial")
        raise RuntimeError("simulated crash mid-copy")

    monkeypatch.setattr(remote, "_copy_tree", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        resolve_model_uri(uri, cache_dir=str(tmp_path))
    assert list(tmp_path.rglob(remote.COMPLETE_MARKER)) == []
    assert not (tmp_path / remote.cache_key(uri)).exists()

    # A process killed mid-copy cannot clean up: leave its debris and check the next caller does.
    key = remote.cache_key(uri)
    (tmp_path / f"{key}.tmp-killed").mkdir()
    (tmp_path / f"{key}.tmp-killed" / "config.json").write_bytes(b"partial")
    (tmp_path / key).mkdir()  # an unmarked final directory (e.g. from an older, non-atomic copy)

    monkeypatch.setattr(remote, "_copy_tree", original)
    calls = _count_copies(monkeypatch)
    out = resolve_model_uri(uri, cache_dir=str(tmp_path))
    _assert_model_copy(out)
    assert len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [key]


def _resolve_in_child(uri, cache_dir, counter, barrier, queue):
    """Runs in a spawned process: count copies through a marker file, resolve after the barrier."""
    from sparkcurate.models import remote as child_remote

    original = child_remote._copy_tree

    def counting(fs, root, files, dest):
        with open(counter, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # widen the window in which the others must wait on the lock
        return original(fs, root, files, dest)

    child_remote._copy_tree = counting
    try:
        barrier.wait(timeout=60)
        queue.put(("ok", child_remote.resolve_model_uri(uri, cache_dir)))
    except Exception as exc:  # reported to the parent, which fails the test
        queue.put(("error", repr(exc)))


def test_three_processes_make_exactly_one_copy(tmp_path):
    src = tmp_path / "nfs" / "model"
    for rel, data in MODEL_FILES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    cache = tmp_path / "cache"
    counter = tmp_path / "copies.txt"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_resolve_in_child,
                    args=(f"file://{src}", str(cache), str(counter), barrier, queue))
        for _ in range(3)
    ]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    assert all(status == "ok" for status, _ in results), results
    paths = {path for _, path in results}
    assert len(paths) == 1
    assert len(counter.read_text().splitlines()) == 1
    _assert_model_copy(paths.pop())
