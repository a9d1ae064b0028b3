"""StoreRunLock on conditional writes: of controllers racing for a run, exactly one holds it.

Before: acquiring wrote the lease, slept 0.2 s and read it back, so a lock write slower than
that let two controllers both believe they held the run (tests/chaos, two controllers started
at once with a slow store); the early one exited at its next renewal.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sailk8s.backends.base import LockLost
from sailk8s.backends.local.storelock import StoreRunLock
from sailk8s.errors import StoreUnavailable
from sailk8s.store.base import ObjectStore
from sailk8s.store.local import LocalStore
from sailk8s.testing.s3 import S3Server, s3_server
from sailk8s.testing.stores import CountingStore

KEY = "runs/r1/lock"


@pytest.fixture(scope="module")
def s3_module() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store", durable=False)
    server: S3Server = request.getfixturevalue("s3_module")
    fresh = S3Server(endpoint=server.endpoint, bucket=server.make_bucket())
    return fresh.store("pre", retry_seconds=5.0)  # type: ignore[no-any-return]


class HookedStore(CountingStore):
    """Runs hooks around the inner store's conditional calls, to stage races deterministically."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.before_put_if: Callable[[], None] | None = None
        self.after_put_if: Callable[[], None] | None = None

    def put_if(self, key: str, data: bytes, *, if_absent: bool = False,
               if_version: str | None = None) -> str | None:
        hook, self.before_put_if = self.before_put_if, None
        if hook:
            hook()
        written = super().put_if(key, data, if_absent=if_absent, if_version=if_version)
        hook, self.after_put_if = self.after_put_if, None
        if hook:
            hook()
        return written


def lock(store: ObjectStore, holder: str, clock: Callable[[], float] = time.time) -> StoreRunLock:
    return StoreRunLock(store, "r1", holder, lease_seconds=30, clock=clock)


def takes_it(other: StoreRunLock) -> Callable[[], None]:
    """A hook: `other` acquires the lock (and must succeed)."""
    def hook() -> None:
        assert other.try_acquire(), f"{other.holder} should have taken the lock"
    return hook


def test_free_lock_is_taken_and_then_refused_to_others(store: ObjectStore) -> None:
    a, b = lock(store, "a"), lock(store, "b")
    assert a.try_acquire()
    assert not b.try_acquire()
    assert b.current_holder() == "a" and a.current_holder() is None  # not "someone else" to a
    assert a.try_acquire()  # already ours
    a.renew()
    assert json.loads(store.get(KEY))["holder"] == "a"


def test_another_controller_writing_between_our_read_and_write_wins(store: ObjectStore) -> None:
    """The slow-write race: b creates the lease while a's create is on its way; a must not win."""
    hooked = HookedStore(store)
    a, b = lock(hooked, "a"), lock(store, "b")
    hooked.before_put_if = takes_it(b)
    assert not a.try_acquire()
    assert a.current_holder() == "b"
    b.renew()  # b keeps it: nobody overwrote b's lease


def test_a_slow_lock_write_that_lands_first_wins(store: ObjectStore) -> None:
    """a's write has landed but its answer is slow; b, starting meanwhile, sees a's lease and backs off."""
    hooked = HookedStore(store)
    a, b = lock(hooked, "a"), lock(store, "b")
    seen: list[bool] = []
    hooked.after_put_if = lambda: seen.append(b.try_acquire())
    assert a.try_acquire()
    assert seen == [False]
    a.renew()


def test_racing_controllers_have_exactly_one_holder(store: ObjectStore) -> None:
    locks = [lock(store, f"c{i}") for i in range(6)]
    barrier = threading.Barrier(len(locks))
    won: list[bool] = [False] * len(locks)

    def run(i: int) -> None:
        barrier.wait()
        won[i] = locks[i].try_acquire()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(locks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(won) == 1, won
    winner = locks[won.index(True)]
    assert all(lk.current_holder() == winner.holder for lk in locks if lk is not winner)


def test_expired_lease_is_replaced_only_if_unchanged(store: ObjectStore) -> None:
    """Two controllers find the same expired lease; the one writing second must fail."""
    now = [1000.0]
    old = lock(store, "old", clock=lambda: now[0])
    assert old.try_acquire()
    now[0] += 31
    hooked = HookedStore(store)
    a, b = lock(hooked, "a", clock=lambda: now[0]), lock(store, "b", clock=lambda: now[0])
    hooked.before_put_if = takes_it(b)
    assert not a.try_acquire()
    with pytest.raises(LockLost, match="lost the lock on run 'r1' to b"):
        old.renew()


def test_renew_after_a_takeover_is_lost_and_release_leaves_the_new_lease(store: ObjectStore) -> None:
    now = [1000.0]
    a = lock(store, "a", clock=lambda: now[0])
    assert a.try_acquire()
    now[0] += 31
    b = lock(store, "b", clock=lambda: now[0])
    assert b.try_acquire()
    with pytest.raises(LockLost, match="to b"):
        a.renew()
    a.release()
    assert json.loads(store.get(KEY))["holder"] == "b"
    b.release()
    assert not store.exists(KEY)


def test_a_removed_lease_is_lost_not_recreated(store: ObjectStore) -> None:
    """Gone means someone else may have held and released it meanwhile: stop, do not write."""
    a = lock(store, "a")
    assert a.try_acquire()
    store.delete(KEY)
    with pytest.raises(LockLost, match="removed or garbled"):
        a.renew()
    assert not store.exists(KEY)


def test_a_renewal_written_without_an_answer_is_recognised(store: ObjectStore) -> None:
    """The store wrote our renewal but the call failed (outage past its retries): still ours."""
    hooked = HookedStore(store)
    a = lock(hooked, "a")
    assert a.try_acquire()

    def fail() -> None:
        raise StoreUnavailable("put: gave up after 9 attempt(s)")

    hooked.after_put_if = fail
    with pytest.raises(StoreUnavailable):
        a.renew()  # the controller's heartbeat logs this and tries again
    a.renew()
    assert not lock(store, "b").try_acquire()
    hooked.after_put_if = fail
    with pytest.raises(StoreUnavailable):
        a.renew()
    a.release()
    assert not store.exists(KEY)


def test_garbled_lease_is_replaced(store: ObjectStore) -> None:
    store.put(KEY, b"{not json")
    a = lock(store, "a")
    assert a.try_acquire()
    assert json.loads(store.get(KEY))["holder"] == "a"


def test_dead_holder_on_this_host_is_expired_at_once(store: ObjectStore) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.put(KEY, json.dumps({"holder": "dead", "token": "t", "host": socket.gethostname(),
                               "pid": dead.pid, "expires_at": time.time() + 300}).encode())
    a = lock(store, "a")
    assert a.current_holder() is None
    assert a.try_acquire()


def test_live_holder_elsewhere_is_respected(store: ObjectStore) -> None:
    store.put(KEY, json.dumps({"holder": "far:1", "token": "t", "host": "elsewhere",
                               "pid": 1, "expires_at": time.time() + 300}).encode())
    a = lock(store, "a")
    assert not a.try_acquire()
    assert a.current_holder() == "far:1"


def test_acquire_and_renew_cost_few_requests(tmp_path: Path) -> None:
    """One read and one conditional write to take the lock; one conditional write per renewal."""
    store = CountingStore(LocalStore(tmp_path / "store", durable=False))
    a = lock(store, "a")
    assert a.try_acquire()
    assert dict(store.calls) == {"get_versioned": 1, "put_if": 1}
    store.calls.clear()
    a.renew()
    assert dict(store.calls) == {"put_if": 1}
    store.calls.clear()
    a.release()
    assert dict(store.calls) == {"delete_if": 1}
