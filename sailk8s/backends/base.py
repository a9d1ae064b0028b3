"""The Backend contract and the status vocabulary shared by every backend."""

from __future__ import annotations

import abc
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from sailk8s.errors import BackendError
from sailk8s.exitcodes import FailureClass
from sailk8s.spec import Pipeline, Stage


class Phase(StrEnum):
    """Where an attempt is; the same words for local processes and PyTorchJobs."""

    PENDING = "Pending"  # accepted, not all processes/pods running yet
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    UNKNOWN = "Unknown"  # the backend has no record of it

    @property
    def finished(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED)


def attempt_name(run: str, stage: str, attempt: int) -> str:
    """Deterministic `<run>-<stage>-<attempt>`, made a DNS-1035 label (<= 63 chars)."""
    raw = f"{run}-{stage}-{attempt}".lower()
    name = re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")
    if not name or not name[0].isalpha():
        name = "s-" + name
    if len(name) > 63:
        import hashlib

        digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
        suffix = f"-{digest}-{attempt}"
        name = name[: 63 - len(suffix)].rstrip("-") + suffix
    return name


@dataclass(frozen=True)
class AttemptRef:
    """Names one attempt of one stage of one run; `run_id` tells this run from an earlier one of
    the same name (a wiped store, another bucket): backends adopt only attempts carrying it."""

    run: str
    stage: str
    attempt: int
    run_id: str = ""

    @property
    def name(self) -> str:
        return attempt_name(self.run, self.stage, self.attempt)


@dataclass(frozen=True)
class AttemptStatus:
    """What a backend knows about an attempt. `failure` is set when phase is FAILED."""

    phase: Phase
    reason: str | None = None  # short machine word: OOMKilled, Evicted, NodeLost, ExitCode...
    message: str | None = None  # one readable line for people
    failure: FailureClass | None = None
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    details: dict[str, str] = field(default_factory=dict)


class LockHeld(BackendError):
    """Another live controller holds the run's lock."""


class LockLost(BackendError):
    """Our lease on the run expired and another controller took it over."""


class RunLock(abc.ABC):
    """Makes sure only one controller drives a run: a lease with an expiry its holder renews.

    Backends hand one out through `Backend.run_lock()`:
    - LocalBackend: an object in the store at runs/<run>/lock (sailk8s.backends.local.storelock.StoreRunLock),
    - KubernetesBackend: a coordination.k8s.io/v1 Lease named after the run
      (spec.holderIdentity = holder, spec.leaseDurationSeconds = lease_seconds, renewTime).
    A holder that stops renewing (killed controller) loses the lease once `lease_seconds` pass
    without renewal; another controller may then take it over. Implementations provide
    try_acquire / renew / release / current_holder; `acquire` (waiting) is shared.
    The controller renews every lease_seconds / 3 while it runs and releases at the end.
    """

    def __init__(self, run: str, holder: str, lease_seconds: float = 30.0) -> None:
        self.run = run
        self.holder = holder
        self.lease_seconds = lease_seconds

    @abc.abstractmethod
    def try_acquire(self) -> bool:
        """Take the lease if it is free, expired or already ours; False if another live holder has it."""

    @abc.abstractmethod
    def renew(self) -> None:
        """Extend our lease; raise LockLost if another holder has taken it."""

    @abc.abstractmethod
    def release(self) -> None:
        """Give the lease up if it is ours (no-op otherwise)."""

    @abc.abstractmethod
    def current_holder(self) -> str | None:
        """Who holds an unexpired lease now (None if nobody), for messages."""

    def acquire(
        self,
        wait: float = 0.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Take the lease, waiting up to `wait` seconds for it; LockHeld naming the holder otherwise."""
        deadline = clock() + wait
        while not self.try_acquire():
            if clock() >= deadline:
                holder = self.current_holder() or "another controller"
                raise LockHeld(
                    f"run {self.run!r} is driven by another controller ({holder}); wait for it to "
                    f"finish, cancel it, or retry after its lease expires ({self.lease_seconds:g}s "
                    "without renewal)"
                )
            sleep(min(1.0, max(0.05, self.lease_seconds / 10)))


class Backend(abc.ABC):
    """Runs stage attempts. Implementations: LocalBackend, KubernetesBackend."""

    name: str

    def run_lock(self, run: str, holder: str, lease_seconds: float = 30.0) -> RunLock:
        """The lock that keeps a second controller off `run` (see RunLock); backends override it."""
        raise BackendError(f"the {self.name} backend provides no run lock")

    @abc.abstractmethod
    def submit(self, pipeline: Pipeline, stage: Stage, attempt: int, run_id: str = "") -> AttemptRef:
        """Start an attempt; adopt one of the same name only if it is this run's (same run_id):
        another run's is stopped and removed, never taken for ours."""

    @abc.abstractmethod
    def status(self, ref: AttemptRef) -> AttemptStatus:
        """The attempt's current status (one cheap look, no waiting)."""

    @abc.abstractmethod
    def wait(self, ref: AttemptRef, timeout: float | None = None) -> AttemptStatus:
        """Block until the attempt finishes or timeout passes, without busy polling."""

    @abc.abstractmethod
    def logs(self, ref: AttemptRef, *, follow: bool = False, rank: int | None = None) -> Iterator[str]:
        """Log lines of the attempt (master/rank 0 first), live or archived in the store."""

    @abc.abstractmethod
    def cancel(self, ref: AttemptRef) -> None:
        """Stop the attempt and its processes/pods; cancelling a finished one is a no-op."""
