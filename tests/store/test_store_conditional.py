"""Conditional writes (put_if, delete_if, get_versioned) on LocalStore and S3Store (moto over real HTTP)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from sailk8s.errors import ObjectNotFound
from sailk8s.store.base import ObjectStore
from sailk8s.store.local import LocalStore
from sailk8s.store.s3 import S3Store
from sailk8s.testing.s3 import FaultProxy, S3Server

THREADS = 8
T = TypeVar("T")


def test_create_if_absent_creates_once(store: ObjectStore) -> None:
    version = store.put_if("a/lock", b"first", if_absent=True)
    assert version is not None
    assert store.put_if("a/lock", b"second", if_absent=True) is None
    assert store.get_versioned("a/lock") == (b"first", version)


def test_replace_only_the_version_read(store: ObjectStore) -> None:
    store.put("k", b"one")
    _, v1 = store.get_versioned("k")
    v2 = store.put_if("k", b"two", if_version=v1)
    assert v2 is not None and v2 != v1
    assert store.put_if("k", b"stale", if_version=v1) is None  # v1 is gone
    assert store.get_versioned("k") == (b"two", v2)
    assert store.put_if("k", b"three", if_version=v2) is not None


def test_a_plain_put_changes_the_version(store: ObjectStore) -> None:
    store.put("k", b"one")
    _, v1 = store.get_versioned("k")
    store.put("k", b"changed behind our back")
    assert store.put_if("k", b"mine", if_version=v1) is None
    assert store.get("k") == b"changed behind our back"


def test_replace_of_a_missing_key_fails(store: ObjectStore) -> None:
    store.put("other", b"x")
    _, version = store.get_versioned("other")
    assert store.put_if("gone", b"x", if_version=version) is None
    assert store.put_if("no/such/folder/k", b"x", if_version=version) is None
    assert not store.exists("gone")
    with pytest.raises(ObjectNotFound):
        store.get_versioned("gone")


def test_delete_if_only_the_version_read(store: ObjectStore) -> None:
    store.put("k", b"one")
    _, v1 = store.get_versioned("k")
    store.put("k", b"two")
    assert not store.delete_if("k", v1)
    assert store.get("k") == b"two"
    _, v2 = store.get_versioned("k")
    assert store.delete_if("k", v2)
    assert not store.exists("k")
    assert not store.delete_if("k", v2)  # gone: nothing to delete
    assert store.put_if("k", b"again", if_absent=True) is not None  # absent again after a delete


def test_exactly_one_condition(store: ObjectStore) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        store.put_if("k", b"x")
    with pytest.raises(ValueError, match="exactly one"):
        store.put_if("k", b"x", if_absent=True, if_version="abc")
    assert not store.exists("k")


def test_conditional_objects_list_like_any_other(store: ObjectStore) -> None:
    store.put_if("runs/r/lock", b"x", if_absent=True)
    _, v = store.get_versioned("runs/r/lock")
    store.put_if("runs/r/lock", b"y", if_version=v)
    assert list(store.list("")) == ["runs/r/lock"]


def _race(n: int, fn: Callable[[int], T]) -> list[T | None]:
    """Run fn(i) in n threads released at once; their results."""
    barrier = threading.Barrier(n)
    results: list[T | None] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_racing_creates_have_one_winner(store: ObjectStore) -> None:
    for round_ in range(5):
        key = f"race/{round_}"

        def create(i: int, key: str = key) -> str | None:
            return store.put_if(key, f"writer {i}".encode(), if_absent=True)

        results = _race(THREADS, create)
        winners = [i for i, v in enumerate(results) if v is not None]
        assert len(winners) == 1, results
        assert store.get(key) == f"writer {winners[0]}".encode()


def test_racing_compare_and_swap_loses_no_update(store: ObjectStore) -> None:
    store.put("counter", b"0")
    per_thread = 5

    def bump(_: int) -> int:
        tries = 0
        for _ in range(per_thread):
            while True:
                tries += 1
                data, version = store.get_versioned("counter")
                if store.put_if("counter", str(int(data) + 1).encode(), if_version=version) is not None:
                    break
        return tries

    tries = _race(THREADS, bump)
    assert store.get("counter") == str(THREADS * per_thread).encode()
    assert sum(t or 0 for t in tries) >= THREADS * per_thread


# -- LocalStore: processes, lock files, filesystems without hard links ------------------------

_CREATE = """
import sys
from sailk8s.store.local import LocalStore
store = LocalStore(sys.argv[1])
sys.stdin.readline()  # start together
print("won" if store.put_if("race/key", sys.argv[2].encode(), if_absent=True) else "lost")
"""

_BUMP = """
import sys
from sailk8s.store.local import LocalStore
store = LocalStore(sys.argv[1])
sys.stdin.readline()
for _ in range(int(sys.argv[2])):
    while True:
        data, version = store.get_versioned("counter")
        if store.put_if("counter", str(int(data) + 1).encode(), if_version=version):
            break
"""


def _processes(code: str, argvs: list[list[str]]) -> list[str]:
    """Run code in one process per argv, let go together once all are started; their outputs."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, "-c", code, *argv], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for argv in argvs]
    for p in procs:  # all are started (imports done or not) before any is let go
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(out.strip())
    return outs


def test_local_processes_racing_to_create_have_one_winner(tmp_path: Path) -> None:
    root = str(tmp_path / "store")
    outs = _processes(_CREATE, [[root, str(i)] for i in range(4)])
    assert sorted(outs) == ["lost", "lost", "lost", "won"]
    assert LocalStore(root).get("race/key") == str(outs.index("won")).encode()


def test_local_processes_compare_and_swap_lose_no_update(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put("counter", b"0")
    _processes(_BUMP, [[str(store.root), "20"]] * 4)
    assert store.get("counter") == b"80"


def test_local_lock_files_are_neither_keys_nor_listed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put("d/k", b"one")
    _, version = store.get_versioned("d/k")
    assert store.put_if("d/k", b"two", if_version=version)
    assert list(store.list("")) == ["d/k"] and list(store.list("d/")) == ["d/k"]
    assert [p.name for p in (store.root / "d").iterdir() if p.name != "k"] == [".sailtmp.lock.k"]


def test_local_version_is_the_content_hash(tmp_path: Path) -> None:
    """Another LocalStore on the same root (another process) sees the same versions."""
    a, b = LocalStore(tmp_path / "s"), LocalStore(tmp_path / "s", durable=False)
    version = a.put_if("k", b"x", if_absent=True)
    assert version == b.get_versioned("k")[1]
    assert b.put_if("k", b"y", if_version=version) is not None
    assert a.put_if("k", b"z", if_version=version) is None


def test_local_create_without_hard_links_falls_back_to_the_lock(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    store = LocalStore(tmp_path / "store")
    assert store.put_if("k", b"one", if_absent=True) is not None
    assert store.put_if("k", b"two", if_absent=True) is None
    assert store.get("k") == b"one"
    assert list(store.list("")) == ["k"]
    results = _race(THREADS, lambda i: store.put_if("race", b"%d" % i, if_absent=True))
    assert sum(r is not None for r in results) == 1


# -- S3Store: the headers through a proxy, and retries whose first try went through ----------

def _via(s3: S3Server, proxy: FaultProxy) -> S3Store:
    return s3.store("p", endpoint=proxy.endpoint, retry_seconds=8.0)  # type: ignore[no-any-return]


def test_s3_conditional_headers_pass_the_fault_proxy(s3: S3Server, proxy: FaultProxy) -> None:
    store = _via(s3, proxy)
    version = store.put_if("k", b"one", if_absent=True)
    assert version is not None and store.put_if("k", b"two", if_absent=True) is None
    assert store.put_if("k", b"two", if_version="0" * 32) is None
    assert store.put_if("k", b"two", if_version=version) is not None
    assert store.get("k") == b"two"


@pytest.mark.parametrize("condition", ["absent", "version"])
def test_s3_retried_put_whose_first_try_went_through_is_ours(s3: S3Server, proxy: FaultProxy,
                                                             condition: str) -> None:
    store = _via(s3, proxy)
    kwargs: dict[str, object] = {"if_absent": True}
    if condition == "version":
        store.put("k", b"old")
        kwargs = {"if_version": store.get_versioned("k")[1]}
    proxy.inject("reset-after", 1, match="PUT /")
    version = store.put_if("k", b"mine, token 1234", **kwargs)  # type: ignore[arg-type]
    assert proxy.faults_served == 1
    assert version is not None  # the retry got 412 from our own first write, and saw it was ours
    assert store.get_versioned("k") == (b"mine, token 1234", version)


def test_s3_retried_put_that_lost_to_another_writer_fails(s3: S3Server, proxy: FaultProxy) -> None:
    store = _via(s3, proxy)
    s3.store("p").put("k", b"someone else")
    proxy.inject("reset", 1, match="PUT /")  # never reaches the server; the retry gets 412
    assert store.put_if("k", b"mine", if_absent=True) is None
    assert proxy.faults_served == 1
    assert store.get("k") == b"someone else"
