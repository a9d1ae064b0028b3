"""The run lock in a cluster: a coordination.k8s.io/v1 Lease, updated with optimistic concurrency."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from typing import Any

from sailk8s.backends.base import LockLost, RunLock
from sailk8s.backends.kubernetes.client import LEASE_GROUP, KubeClient
from sailk8s.backends.kubernetes.errors import Call, KubeApiError, final_error
from sailk8s.backends.kubernetes.manifest import LABEL_RUN

Obj = dict[str, Any]


def lease_name(run: str) -> str:
    """The Lease that guards a run (a DNS-1123 subdomain: run names are labels already)."""
    return f"sail-run-{run}"


def _parse(stamp: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00")) if stamp else None
    except ValueError:
        return None


class LeaseRunLock(RunLock):
    """RunLock backed by a Lease in `namespace`.

    Every write carries the resourceVersion it read, so two controllers racing for an expired
    lease cannot both win: the loser gets 409 Conflict and sees the winner on its next read.
    """

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        run: str,
        holder: str,
        lease_seconds: float = 30.0,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(run, holder, lease_seconds)
        self._client = client
        self._clock = clock
        self.name = lease_name(run)
        self.namespace = namespace

    def _now(self) -> str:
        # The client's own serialization of a datetime, as it wrote Lease times before.
        return dt.datetime.fromtimestamp(self._clock(), tz=dt.UTC).isoformat()

    def _read(self) -> Obj | None:
        try:
            return self._client.read_lease(self.namespace, self.name)
        except KubeApiError as err:
            if err.status == 404:
                return None
            raise self._error(err, "get") from None

    def _error(self, err: KubeApiError, verb: str) -> Exception:
        call = Call(verb, "leases", LEASE_GROUP, self.namespace, self.name)
        if err.status == 404:
            return self._client.explain_not_found(err, call)
        return final_error(err, call, self._client.host)

    def _expired(self, lease: Obj) -> bool:
        """Whether the lease is free: no holder, or not renewed within its duration."""
        spec = lease.get("spec") or {}
        if not spec.get("holderIdentity"):
            return True
        renewed = _parse(spec.get("renewTime") or spec.get("acquireTime"))
        if renewed is None:
            return True
        duration = spec.get("leaseDurationSeconds") or self.lease_seconds
        now = dt.datetime.fromtimestamp(self._clock(), tz=dt.UTC)
        return bool((now - renewed).total_seconds() > duration)

    def _spec(self, acquired: str, transitions: int) -> Obj:
        return {
            "acquireTime": acquired,
            "holderIdentity": self.holder,
            "leaseDurationSeconds": max(1, math.ceil(self.lease_seconds)),
            "leaseTransitions": transitions,
            "renewTime": self._now(),
        }

    def try_acquire(self) -> bool:
        lease = self._read()
        if lease is None:
            body = {
                "metadata": {"labels": {LABEL_RUN: self.run}, "name": self.name, "namespace": self.namespace},
                "spec": self._spec(self._now(), 0),
            }
            try:
                self._client.create_lease(self.namespace, body)
                return True
            except KubeApiError as err:
                if err.status == 409:  # another controller created it first
                    return False
                raise self._error(err, "create") from None
        spec = lease.get("spec") or {}
        transitions = int(spec.get("leaseTransitions") or 0)
        if spec.get("holderIdentity") == self.holder:
            return self._write(lease, spec.get("acquireTime") or self._now(), transitions)
        if not self._expired(lease):
            return False
        return self._write(lease, self._now(), transitions + 1)

    def _write(self, lease: Obj, acquired: str, transitions: int) -> bool:
        lease["spec"] = self._spec(acquired, transitions)
        try:
            self._client.replace_lease(self.namespace, self.name, lease)
            return True
        except KubeApiError as err:
            if err.status in (404, 409):  # changed or deleted since we read it: someone else moved
                return False
            raise self._error(err, "update") from None

    def renew(self) -> None:
        lease = self._read()
        spec = (lease or {}).get("spec")
        if lease is None or spec is None or spec.get("holderIdentity") != self.holder:
            holder = spec.get("holderIdentity") if spec is not None else None
            raise LockLost(f"lost the lease on run {self.run!r} to {holder or 'nobody (deleted)'}")
        transitions = int(spec.get("leaseTransitions") or 0)
        if not self._write(lease, spec.get("acquireTime") or self._now(), transitions):
            raise LockLost(f"lost the lease on run {self.run!r}: it changed while renewing")

    def release(self) -> None:
        lease = self._read()
        spec = (lease or {}).get("spec")
        if lease is None or spec is None or spec.get("holderIdentity") != self.holder:
            return
        # As client-go does: clear the holder so the next controller need not wait for expiry.
        for key in ("holderIdentity", "renewTime", "acquireTime"):
            spec.pop(key, None)
        try:
            self._client.replace_lease(self.namespace, self.name, lease)
        except KubeApiError as err:
            if err.status not in (404, 409):
                raise self._error(err, "update") from None

    def current_holder(self) -> str | None:
        lease = self._read()
        spec = (lease or {}).get("spec")
        if lease is None or spec is None or self._expired(lease):
            return None
        holder = spec.get("holderIdentity")
        return str(holder) if holder else None
