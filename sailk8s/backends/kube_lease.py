"""The run lock in a cluster: a coordination.k8s.io/v1 Lease, updated with optimistic concurrency.

Every write carries the resourceVersion it read, so two controllers racing for an expired
lease cannot both win: the loser gets 409 Conflict and sees the winner on its next read.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING, Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from sailk8s.backends.base import LockLost, RunLock
from sailk8s.backends.kube_errors import Call, call_api, final_error

if TYPE_CHECKING:
    from sailk8s.backends.kubernetes import KubernetesBackend

GROUP = "coordination.k8s.io"


def lease_name(run: str) -> str:
    """The Lease that guards a run (a DNS-1123 subdomain: run names are labels already)."""
    return f"sail-run-{run}"


class LeaseRunLock(RunLock):
    """RunLock backed by a Lease in the backend's namespace."""

    def __init__(
        self, backend: KubernetesBackend, run: str, holder: str, lease_seconds: float = 30.0
    ) -> None:
        super().__init__(run, holder, lease_seconds)
        self._backend = backend
        self._api = k8s.CoordinationV1Api(backend.api)
        self.name = lease_name(run)
        self.namespace = backend.namespace

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._backend.clock(), tz=dt.UTC)

    def _call(self, fn: Any, verb: str) -> Any:
        call = Call(verb, "leases", GROUP, self.namespace, self.name)
        return call_api(
            fn, call, host=self._backend.host, deadline_s=self._backend.retry_seconds, translate=False
        )

    def _read(self) -> k8s.V1Lease | None:
        try:
            return self._call(lambda: self._api.read_namespaced_lease(self.name, self.namespace), "get")
        except ApiException as err:
            if err.status == 404:
                return None
            raise self._error(err, "get") from None

    def _error(self, err: ApiException, verb: str) -> Exception:
        if err.status == 404:
            return self._backend._explain_404(err, Call(verb, "leases", GROUP, self.namespace, self.name))
        return final_error(err, Call(verb, "leases", GROUP, self.namespace, self.name), self._backend.host)

    def _expired(self, lease: k8s.V1Lease) -> bool:
        """Whether the lease is free: no holder, or not renewed within its duration."""
        spec = lease.spec
        if spec is None or not spec.holder_identity:
            return True
        renewed = spec.renew_time or spec.acquire_time
        if renewed is None:
            return True
        duration = spec.lease_duration_seconds or self.lease_seconds
        return bool((self._now() - renewed).total_seconds() > duration)

    def _spec(self, acquired: dt.datetime, transitions: int) -> k8s.V1LeaseSpec:
        return k8s.V1LeaseSpec(
            holder_identity=self.holder,
            lease_duration_seconds=max(1, math.ceil(self.lease_seconds)),
            acquire_time=acquired,
            renew_time=self._now(),
            lease_transitions=transitions,
        )

    def try_acquire(self) -> bool:
        lease = self._read()
        if lease is None:
            body = k8s.V1Lease(
                metadata=k8s.V1ObjectMeta(
                    name=self.name, namespace=self.namespace, labels={"sail.io/run": self.run}
                ),
                spec=self._spec(self._now(), 0),
            )
            try:
                self._call(lambda: self._api.create_namespaced_lease(self.namespace, body), "create")
                return True
            except ApiException as err:
                if err.status == 409:  # another controller created it first
                    return False
                raise self._error(err, "create") from None
        spec = lease.spec or k8s.V1LeaseSpec()
        if spec.holder_identity == self.holder:
            return self._write(lease, spec.acquire_time or self._now(), spec.lease_transitions or 0)
        if not self._expired(lease):
            return False
        return self._write(lease, self._now(), (spec.lease_transitions or 0) + 1)

    def _write(self, lease: k8s.V1Lease, acquired: dt.datetime, transitions: int) -> bool:
        lease.spec = self._spec(acquired, transitions)
        try:
            self._call(lambda: self._api.replace_namespaced_lease(self.name, self.namespace, lease), "update")
            return True
        except ApiException as err:
            if err.status in (404, 409):  # changed or deleted since we read it: someone else moved
                return False
            raise self._error(err, "update") from None

    def renew(self) -> None:
        lease = self._read()
        spec = lease.spec if lease is not None else None
        if lease is None or spec is None or spec.holder_identity != self.holder:
            holder = spec.holder_identity if spec is not None else None
            raise LockLost(f"lost the lease on run {self.run!r} to {holder or 'nobody (deleted)'}")
        if not self._write(lease, spec.acquire_time or self._now(), spec.lease_transitions or 0):
            raise LockLost(f"lost the lease on run {self.run!r}: it changed while renewing")

    def release(self) -> None:
        lease = self._read()
        if lease is None or lease.spec is None or lease.spec.holder_identity != self.holder:
            return
        # As client-go does: clear the holder so the next controller need not wait for expiry.
        lease.spec.holder_identity = None
        lease.spec.renew_time = None
        lease.spec.acquire_time = None
        try:
            self._call(lambda: self._api.replace_namespaced_lease(self.name, self.namespace, lease), "update")
        except ApiException as err:
            if err.status not in (404, 409):
                raise self._error(err, "update") from None

    def current_holder(self) -> str | None:
        lease = self._read()
        if lease is None or self._expired(lease) or lease.spec is None:
            return None
        holder: str | None = lease.spec.holder_identity
        return holder
