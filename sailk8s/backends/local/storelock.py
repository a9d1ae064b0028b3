"""StoreRunLock: the run lock kept in the object store, used by the local backend."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from sailk8s.backends.base import LockLost, RunLock
from sailk8s.backends.local.procs import pid_alive
from sailk8s.errors import ObjectNotFound
from sailk8s.ledger.paths import RunPaths
from sailk8s.store.base import ObjectStore


class StoreRunLock(RunLock):
    """A run lock kept as a JSON lease at runs/<run>/lock, for the local backend.

    Every write is conditional (ObjectStore.put_if): acquiring creates the lease only if none
    is there, or replaces an expired, dead or garbled one only if it is still the version we
    judged; renewing replaces only our own version. So of two controllers racing, exactly one
    wins, however slow the store. A lease whose holder does not renew it within
    `lease_seconds` expires; a holder on this host whose process is gone is treated as expired
    at once (a killed controller restarted on the same machine need not wait).
    """

    def __init__(
        self,
        store: ObjectStore,
        run: str,
        holder: str,
        lease_seconds: float = 30.0,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(run, holder, lease_seconds)
        self.store = store
        self.token = uuid.uuid4().hex
        self.clock = clock
        self.key = RunPaths(run).lock
        self._version: str | None = None  # our lease's version as we last wrote it
        self._acquired_at: float | None = None

    def _read(self) -> tuple[dict[str, Any] | None, str | None]:
        """The lease (None if absent or garbled) and its version (None if absent)."""
        try:
            raw, version = self.store.get_versioned(self.key)
        except ObjectNotFound:
            return None, None
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return None, version  # a garbled lease protects nothing; it is replaced
        return (data if isinstance(data, dict) else None), version

    def _live(self, lease: dict[str, Any] | None) -> bool:
        """Whether lease is held by someone else who may still be alive."""
        if not lease or lease.get("token") == self.token:
            return False
        if float(lease.get("expires_at", 0)) <= self.clock():
            return False
        if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int):
            return lease["pid"] == os.getpid() or pid_alive(lease["pid"])
        return True

    def _lease(self) -> bytes:
        now = self.clock()
        return json.dumps({
            "holder": self.holder,
            "token": self.token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquired_at": self._acquired_at or now,
            "renewed_at": now,
            "expires_at": now + self.lease_seconds,
        }).encode()

    def _our_version(self) -> str | None:
        """The stored lease's version if it is ours: written by a try whose answer we lost, say."""
        lease, version = self._read()
        return version if lease is not None and lease.get("token") == self.token else None

    def try_acquire(self) -> bool:
        lease, version = self._read()
        if self._live(lease):
            return False
        if lease is None or lease.get("token") != self.token:
            self._acquired_at = self.clock()
        if version is None:
            written = self.store.put_if(self.key, self._lease(), if_absent=True)
        else:  # expired, dead, garbled or ours: replace exactly what we judged, nothing newer
            written = self.store.put_if(self.key, self._lease(), if_version=version)
        if written is None:
            return False  # another controller wrote first
        self._version = written
        return True

    def renew(self) -> None:
        written = None
        if self._version is not None:
            written = self.store.put_if(self.key, self._lease(), if_version=self._version)
        if written is None and (version := self._our_version()) is not None:
            # A renewal that failed (store down past its retries) may have been written all the
            # same: the lease is still ours, at a version we did not hear of.
            written = self.store.put_if(self.key, self._lease(), if_version=version)
        if written is None:
            self._version = None
            lease, _ = self._read()
            if lease is None:
                raise LockLost(f"lost the lock on run {self.run!r}: its lease was removed or garbled")
            who = lease.get("holder", "another controller")
            raise LockLost(f"lost the lock on run {self.run!r} to {who}")
        self._version = written

    def release(self) -> None:
        if self._version is None or not self.store.delete_if(self.key, self._version):
            version = self._our_version()
            if version is not None:
                self.store.delete_if(self.key, version)
        self._version = None

    def current_holder(self) -> str | None:
        lease, _ = self._read()
        return str(lease.get("holder")) if lease and self._live(lease) else None
