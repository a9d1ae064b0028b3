"""The run lock as a coordination.k8s.io/v1 Lease: one holder, renewal, takeover after expiry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sailk8s.backends.base import LockHeld, LockLost
from sailk8s.backends.kubernetes.backend import KubernetesBackend
from sailk8s.backends.kubernetes.lease import LeaseRunLock
from sailk8s.errors import BackendError
from sailk8s.testing.apiserver import FakeKubernetes


class ManualClock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def kube() -> Iterator[FakeKubernetes]:
    with FakeKubernetes(namespaces=("sail",)) as k:
        yield k


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def lock(kube: FakeKubernetes, clock: ManualClock, holder: str, seconds: float = 30) -> LeaseRunLock:
    backend = KubernetesBackend(
        configuration=kube.client_configuration(), namespace="sail", retry_seconds=2, clock=clock
    )
    run_lock = backend.run_lock("r1", holder, seconds)
    assert isinstance(run_lock, LeaseRunLock)
    return run_lock


def test_one_holder_at_a_time(kube: FakeKubernetes, clock: ManualClock) -> None:
    a, b = lock(kube, clock, "ctl-a"), lock(kube, clock, "ctl-b")
    assert a.try_acquire()
    assert a.try_acquire()  # re-entrant for its holder
    assert not b.try_acquire()
    assert b.current_holder() == "ctl-a"
    lease = kube.state.get(kube.type("leases", "coordination.k8s.io"), "sail", "sail-run-r1")
    assert lease["spec"]["holderIdentity"] == "ctl-a" and lease["spec"]["leaseDurationSeconds"] == 30
    with pytest.raises(LockHeld, match=r"run 'r1' is driven by another controller \(ctl-a\)"):
        b.acquire(wait=0)


def test_renewal_keeps_it_and_expiry_lets_another_take_over(kube: FakeKubernetes, clock: ManualClock) -> None:
    a, b = lock(kube, clock, "ctl-a"), lock(kube, clock, "ctl-b")
    assert a.try_acquire()
    clock.t += 20
    a.renew()
    clock.t += 20  # 20 s after the renewal: still valid
    assert not b.try_acquire()
    clock.t += 11  # 31 s without renewal: expired (a was killed)
    assert b.current_holder() is None
    assert b.try_acquire()
    lease = kube.state.get(kube.type("leases", "coordination.k8s.io"), "sail", "sail-run-r1")
    assert lease["spec"]["holderIdentity"] == "ctl-b" and lease["spec"]["leaseTransitions"] == 1
    with pytest.raises(LockLost, match="lost the lease on run 'r1' to ctl-b"):
        a.renew()


def test_release_frees_it_at_once(kube: FakeKubernetes, clock: ManualClock) -> None:
    a, b = lock(kube, clock, "ctl-a"), lock(kube, clock, "ctl-b")
    assert a.try_acquire()
    b.release()  # not the holder: no-op
    assert b.current_holder() == "ctl-a"
    a.release()
    assert b.try_acquire()


def test_racing_writers_cannot_both_win(kube: FakeKubernetes, clock: ManualClock) -> None:
    a, b = lock(kube, clock, "ctl-a"), lock(kube, clock, "ctl-b")
    assert a.try_acquire()
    clock.t += 60
    stale = b._read()  # b reads the expired lease...
    assert stale is not None
    assert lock(kube, clock, "ctl-c").try_acquire()  # ...c takes it over first...
    assert not b._write(stale, b._now(), 1)  # ...so b's write, based on the old version, conflicts
    assert b.current_holder() == "ctl-c"


def test_forbidden_lease_names_the_rbac(kube: FakeKubernetes, clock: ManualClock) -> None:
    kube.faults.fail(403, times=1, path="leases")
    with pytest.raises(
        BackendError,
        match=r"forbidden: cannot get leases.coordination.k8s.io .*apiGroups: "
        r'\["coordination.k8s.io"\], resources: \["leases"\], verbs: \["get"\]',
    ):
        lock(kube, clock, "ctl-a").try_acquire()
