"""The ObjectStore contract, run against LocalStore and S3Store (moto over real HTTP)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sailk8s.errors import ObjectNotFound, StoreError, StoreKeyError
from sailk8s.store.base import ObjectStore

MiB = 1 << 20

BAD_KEYS = [
    ("", "empty"),
    ("/abs/key", "absolute"),
    ("a/../b", "'..'"),
    ("../escape", "'..'"),
    ("a/./b", "'.'"),
    ("a//b", "empty path segment"),
    ("a/b/", "empty path segment"),
    ("a\x00b", "control"),
    ("a\nb", "control"),
    ("a\\b", "backslash"),
    ("dir/.sailtmp.x", "reserved"),
]


def test_put_get_exists_round_trip(store: ObjectStore) -> None:
    assert not store.exists("a/b.json")
    store.put("a/b.json", b'{"x": 1}')
    assert store.exists("a/b.json")
    assert store.get("a/b.json") == b'{"x": 1}'


def test_get_range_reads_a_slice(store: ObjectStore) -> None:
    data = bytes(range(256)) * 40
    store.put("r/blob", data)
    assert store.get_range("r/blob", 0, 10) == data[:10]
    assert store.get_range("r/blob", 1000, 2345) == data[1000:3345]
    assert store.get_range("r/blob", len(data) - 5, 100) == data[-5:]  # short at the end
    assert store.get_range("r/blob", 7, 0) == b""
    with pytest.raises(ObjectNotFound, match="r/missing"):
        store.get_range("r/missing", 0, 10)
    with pytest.raises(ValueError, match="start >= 0"):
        store.get_range("r/blob", -1, 10)


def test_overwrite_replaces_content(store: ObjectStore) -> None:
    store.put("k", b"first version, longer")
    store.put("k", b"second")
    assert store.get("k") == b"second"
    assert list(store.list("")) == ["k"]


def test_binary_and_empty_objects(store: ObjectStore) -> None:
    data = bytes(range(256)) * 17 + b"\r\n\x00\xff"
    store.put("bin/all-bytes", data)
    store.put("bin/empty", b"")
    assert store.get("bin/all-bytes") == data
    assert store.get("bin/empty") == b""
    assert store.exists("bin/empty")


def test_unicode_key(store: ObjectStore) -> None:
    store.put("données/ключ 1.json", b"u")
    assert store.get("données/ключ 1.json") == b"u"
    assert list(store.list("données/")) == ["données/ключ 1.json"]


def test_put_file_get_file_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    store.put_file("files/x.bin", src)
    dest = tmp_path / "out" / "deeper" / "x.bin"
    store.get_file("files/x.bin", dest)
    assert dest.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["x.bin"]  # no temp left behind


def test_get_file_replaces_existing_file(store: ObjectStore, tmp_path: Path) -> None:
    store.put("k", b"new")
    dest = tmp_path / "d.bin"
    dest.write_bytes(b"old content that is longer")
    store.get_file("k", dest)
    assert dest.read_bytes() == b"new"


def test_large_file_multipart_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(12 * MiB + 12345)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    store.put_file("big/file.bin", src)
    store.put("big/bytes.bin", data)
    dest = tmp_path / "big.out"
    store.get_file("big/file.bin", dest)
    assert dest.read_bytes() == data
    assert store.get("big/bytes.bin") == data
    if hasattr(store, "_client"):  # S3: the ETag of a multipart object ends in -<parts>
        stat = store._client.stat_object(store.bucket, f"{store.prefix}/big/file.bin")
        assert stat.etag.endswith("-2"), stat.etag


def test_list_is_sorted_recursive_and_by_string_prefix(store: ObjectStore) -> None:
    keys = ["runs/r1/s/done/b.json", "runs/r1/s/done/a.json", "runs/r1/s/progress.json",
            "runs/r1/s-other/x", "runs/r10/s/y", "runs/r1/s/ckpt/step-00000001/w.bin", "top"]
    for k in keys:
        store.put(k, b"1")
    assert list(store.list("")) == sorted(keys)
    assert list(store.list("runs/r1/s/done/")) == ["runs/r1/s/done/a.json", "runs/r1/s/done/b.json"]
    assert list(store.list("runs/r1/s/")) == sorted(k for k in keys if k.startswith("runs/r1/s/"))
    # A prefix is a plain string prefix, not a directory: "runs/r1" also matches "runs/r10/...".
    assert list(store.list("runs/r1")) == sorted(k for k in keys if k.startswith("runs/r1"))
    assert list(store.list("runs/r1/s/done/a")) == ["runs/r1/s/done/a.json"]
    assert list(store.list("nothing/here/")) == []


def test_list_on_empty_store(store: ObjectStore) -> None:
    assert list(store.list("")) == []


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.put("d/k", b"1")
    store.put("d/keep", b"2")
    store.delete("d/k")
    store.delete("d/k")
    store.delete("never/existed")
    assert not store.exists("d/k")
    assert list(store.list("d/")) == ["d/keep"]


def test_missing_key_names_the_key(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound, match="no/such/key"):
        store.get("no/such/key")
    dest = tmp_path / "never.bin"
    with pytest.raises(ObjectNotFound, match="no/such/key"):
        store.get_file("no/such/key", dest)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("key", "why"), BAD_KEYS)
def test_bad_keys_are_rejected_everywhere(store: ObjectStore, tmp_path: Path, key: str, why: str) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    for call in (lambda: store.put(key, b"x"), lambda: store.get(key), lambda: store.exists(key),
                 lambda: store.delete(key), lambda: store.put_file(key, src),
                 lambda: store.get_file(key, tmp_path / "g")):
        with pytest.raises(StoreKeyError, match=why):
            call()
    assert list(store.list("")) == []


@pytest.mark.parametrize("prefix", ["/abs", "a/../b", "a//", "x\x01"])
def test_bad_list_prefixes_are_rejected(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(StoreKeyError):
        list(store.list(prefix))


def test_local_put_file_missing_source_is_clear(store: ObjectStore, tmp_path: Path) -> None:
    store.put("k", b"old")
    with pytest.raises(Exception, match="cannot read local file") as info:
        store.put_file("k", tmp_path / "missing.bin")
    assert "missing.bin" in str(info.value)
    assert store.get("k") == b"old"


def test_readers_never_see_partial_objects(store: ObjectStore) -> None:
    """One writer flips a 3 MiB object between two contents; readers only ever see one of them."""
    a, b = b"a" * (3 * MiB), b"b" * (3 * MiB)
    store.put("flip", a)
    stop = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            store.put("flip", b if i % 2 == 0 else a)
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        deadline = time.monotonic() + 1.5
        reads = 0
        while time.monotonic() < deadline:
            data = store.get("flip")
            reads += 1
            if data not in (a, b):
                errors.append(f"read {reads}: {len(data)} bytes, mixed content")
            assert list(store.list("")) == ["flip"]
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:3]


_KILL_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
{make_store}
src = [Path({a!r}), Path({b!r})]
store.put_file("victim", src[0])
print("ready", flush=True)
i = 1
while True:
    store.put_file("victim", src[i % 2])
    i += 1
"""


def test_killed_writer_leaves_a_whole_object_and_no_visible_temp(store: ObjectStore, tmp_path: Path) -> None:
    """SIGKILL a process in the middle of uploads: the object is whole and list() shows no debris."""
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"A" * (6 * MiB))
    b.write_bytes(b"B" * (6 * MiB))
    if hasattr(store, "_client"):
        make = (f"from sailk8s.store.s3 import S3Store\nstore = S3Store({store.bucket!r}, {store.prefix!r}, "
                f"endpoint={store.endpoint!r}, access_key='x', secret_key='y', region='us-east-1', "
                f"part_size=5 * 1024 * 1024)")
    else:
        make = f"from sailk8s.store.local import LocalStore\nstore = LocalStore({str(store.root)!r})"
    code = _KILL_CHILD.format(root=str(Path(__file__).resolve().parents[2]), make_store=make,
                              a=str(a), b=str(b))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == b"ready", child.stderr.read() if child.stderr else line
        time.sleep(0.4)
    finally:
        child.kill()
        child.wait()
    data = store.get("victim")
    assert data in (a.read_bytes(), b.read_bytes())
    assert list(store.list("")) == ["victim"]


def test_get_file_to_an_unwritable_place_is_clear(store: ObjectStore, tmp_path: Path) -> None:
    store.put("k", b"v")
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(StoreError, match="cannot write local file") as info:
        store.get_file("k", tmp_path / "afile" / "below")
    assert "afile/below" in str(info.value) and "\n" not in str(info.value)
