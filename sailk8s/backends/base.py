"""The Backend contract and the status vocabulary shared by every backend."""

from __future__ import annotations

import abc
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

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
    """Names one attempt of one stage of one run."""

    run: str
    stage: str
    attempt: int

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


class Backend(abc.ABC):
    """Runs stage attempts. Implementations: LocalBackend, KubernetesBackend."""

    name: str

    @abc.abstractmethod
    def submit(self, pipeline: Pipeline, stage: Stage, attempt: int) -> AttemptRef:
        """Start an attempt; if one with the same name exists and matches, adopt it."""

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
