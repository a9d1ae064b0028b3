"""LocalStore specifics: no escape from the root, clear OS errors, open_store for file:// URIs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sailk8s.errors import ConfigError, StoreError, StoreKeyError, StoreUnavailable
from sailk8s.store import open_store
from sailk8s.store.local import LocalStore


def test_symlink_cannot_lead_outside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "store"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    root.mkdir()
    (root / "link").symlink_to(outside)
    store = LocalStore(root)
    with pytest.raises(StoreKeyError, match="outside the store root"):
        store.get("link/secret")
    with pytest.raises(StoreKeyError, match="outside the store root"):
        store.put("link/new", b"x")
    assert not (outside / "new").exists()


def test_list_skips_temp_files_and_symlinks(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a/x", b"1")
    (tmp_path / "a" / ".sailtmp.abc123").write_bytes(b"partial")
    (tmp_path / "a" / "ln").symlink_to(tmp_path / "a" / "x")
    assert list(store.list("")) == ["a/x"]


def test_object_and_prefix_conflict_is_a_clear_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a", b"1")
    with pytest.raises(StoreError, match="both an object and a prefix"):
        store.put("a/b", b"2")
    assert store.get("a") == b"1"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_root_is_store_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    store = LocalStore(root)
    store.put("k", b"old")
    root.chmod(0o555)
    try:
        with pytest.raises(StoreUnavailable, match="cannot write"):
            store.put("k", b"new")
        with pytest.raises(StoreUnavailable, match="not writable"):
            store.check()
    finally:
        root.chmod(0o755)
    assert store.get("k") == b"old"


def test_check_rejects_a_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(StoreUnavailable, match="cannot create store root"):
        open_store(f"file://{tmp_path / 'f'}", check=True)


def test_objects_are_world_readable_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("k", b"1")
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o644


def test_open_store_file_uris(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/with%20space", check=True)
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / "with space"
    store.put("k", b"v")
    assert (tmp_path / "with space" / "k").read_bytes() == b"v"


@pytest.mark.parametrize(("uri", "match"), [
    ("file://relative/path", "absolute path"),
    ("gs://bucket/x", "unsupported scheme 'gs'"),
    ("/just/a/path", "unsupported scheme"),
])
def test_open_store_rejects_bad_uris(uri: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        open_store(uri)


def test_permission_errors_become_store_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Permission problems (simulated: tests may run as root) name the key and keep the old object."""
    import tempfile

    store = LocalStore(tmp_path)
    store.put("k", b"old")

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(StoreUnavailable, match=f"cannot write file://{tmp_path}/k: Permission denied"):
        store.put("k", b"new")
    monkeypatch.undo()
    assert store.get("k") == b"old"
