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

    Object stores have no compare-and-swap, so acquiring writes the lease and reads it back
    after `settle_seconds`: of two controllers racing, the last writer wins and the other sees
    a foreign token and backs off. A lease whose holder does not renew it within
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
        sleep: Callable[[float], None] = time.sleep,
        settle_seconds: float = 0.2,
    ) -> None:
        super().__init__(run, holder, lease_seconds)
        self.store = store
        self.token = uuid.uuid4().hex
        self.clock = clock
        self.sleep = sleep
        self.settle_seconds = settle_seconds
        self.key = RunPaths(run).lock

    def _read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.store.get(self.key))
        except ObjectNotFound:
            return None
        except (ValueError, UnicodeDecodeError):
            return None  # a garbled lease protects nothing; it is overwritten
        return data if isinstance(data, dict) else None

    def _live(self, lease: dict[str, Any] | None) -> bool:
        """Whether lease is held by someone else who may still be alive."""
        if not lease or lease.get("token") == self.token:
            return False
        if float(lease.get("expires_at", 0)) <= self.clock():
            return False
        if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int):
            return lease["pid"] == os.getpid() or pid_alive(lease["pid"])
        return True

    def _write(self, acquired_at: float | None = None) -> None:
        now = self.clock()
        lease = {
            "holder": self.holder,
            "token": self.token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquired_at": acquired_at or now,
            "renewed_at": now,
            "expires_at": now + self.lease_seconds,
        }
        self.store.put(self.key, json.dumps(lease).encode())

    def try_acquire(self) -> bool:
        if self._live(self._read()):
            return False
        self._write()
        if self.settle_seconds:
            self.sleep(self.settle_seconds)
        lease = self._read()
        return bool(lease and lease.get("token") == self.token)

    def renew(self) -> None:
        lease = self._read()
        if lease is not None and lease.get("token") != self.token:
            who = lease.get("holder", "another controller")
            raise LockLost(f"lost the lock on run {self.run!r} to {who}")
        self._write(acquired_at=(lease or {}).get("acquired_at"))

    def release(self) -> None:
        lease = self._read()
        if lease is not None and lease.get("token") == self.token:
            self.store.delete(self.key)

    def current_holder(self) -> str | None:
        lease = self._read()
        return str(lease.get("holder")) if lease and self._live(lease) else None
