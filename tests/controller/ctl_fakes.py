"""Test doubles for the controller: a scripted backend and a fake clock."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sailk8s.backends.base import AttemptRef, AttemptStatus, Backend, Phase, RunLock
from sailk8s.backends.local.storelock import StoreRunLock
from sailk8s.exitcodes import FailureClass
from sailk8s.ledger import StageResults
from sailk8s.spec import Pipeline, Stage, parse_pipeline
from sailk8s.store.base import ObjectStore


class FakeTime:
    """clock() and sleep() that move a fake time forward instantly, recording the sleeps."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


OK = AttemptStatus(Phase.SUCCEEDED, exit_code=0)
APP = AttemptStatus(Phase.FAILED, reason="ExitCode", message="exit code 1: boom", failure=FailureClass.APP,
                    exit_code=1)
INFRA = AttemptStatus(Phase.FAILED, reason="Evicted", message="pod evicted", failure=FailureClass.INFRA)
PERMANENT = AttemptStatus(Phase.FAILED, reason="ExitCode", message="exit code 3: bad config",
                          failure=FailureClass.PERMANENT, exit_code=3)
LOST = AttemptStatus(Phase.UNKNOWN, reason="NotFound")
HANG = "hang"  # the attempt runs (and makes no progress) until cancelled


@dataclass
class FakeBackend(Backend):
    """Each stage's attempts end with the next scripted outcome (default: success)."""

    store: ObjectStore
    time: FakeTime
    script: dict[str, list[AttemptStatus | str]] = field(default_factory=dict)
    run_seconds: float = 60.0  # fake time an attempt takes
    name: str = "fake"
    submits: list[tuple[str, int]] = field(default_factory=list)
    cancels: list[AttemptRef] = field(default_factory=list)
    running: dict[AttemptRef, AttemptStatus | str] = field(default_factory=dict)
    done: dict[AttemptRef, AttemptStatus] = field(default_factory=dict)
    before_wait: Callable[[AttemptRef], None] | None = None
    elapsed: dict[AttemptRef, float] = field(default_factory=dict)
    write_results: bool = True  # a successful attempt leaves its report, as a real workload does

    def __post_init__(self) -> None:
        self._mu = threading.Lock()

    def submit(self, pipeline: Pipeline, stage: Stage, attempt: int, run_id: str = "") -> AttemptRef:
        ref = AttemptRef(pipeline.run, stage.name, attempt, run_id)
        with self._mu:
            if ref in self.running or ref in self.done:
                return ref  # adoption, as the real backends do
            self.submits.append((stage.name, attempt))
            outcomes = self.script.get(stage.name, [])
            self.running[ref] = outcomes.pop(0) if outcomes else OK
        return ref

    def status(self, ref: AttemptRef) -> AttemptStatus:
        with self._mu:
            if ref in self.done:
                return self.done[ref]
            if ref in self.running:
                return AttemptStatus(Phase.RUNNING)
        return AttemptStatus(Phase.UNKNOWN, reason="NotFound")

    def wait(self, ref: AttemptRef, timeout: float | None = None) -> AttemptStatus:
        if self.before_wait is not None:
            self.before_wait(ref)
        with self._mu:
            outcome = self.running.get(ref)
            if outcome is None:
                return self.done.get(ref) or AttemptStatus(Phase.UNKNOWN, reason="NotFound")
            step = self.run_seconds if timeout is None else timeout
            if outcome != HANG:
                left = self.run_seconds - self.elapsed.get(ref, 0.0)
                if left <= step:
                    assert isinstance(outcome, AttemptStatus)
                    self.time.advance(left)
                    del self.running[ref]
                    self.done[ref] = outcome
                    if outcome.phase is Phase.SUCCEEDED and self.write_results:  # as a real workload does
                        StageResults(self.store, ref.run, ref.stage).write_report(ref.attempt, {"shards": 0})
                    return outcome
            self.elapsed[ref] = self.elapsed.get(ref, 0.0) + step
        self.time.advance(step)
        return AttemptStatus(Phase.RUNNING)

    def logs(self, ref: AttemptRef, *, follow: bool = False, rank: int | None = None) -> Iterator[str]:
        yield f"log of {ref.name}"

    def cancel(self, ref: AttemptRef) -> None:
        with self._mu:
            self.cancels.append(ref)
            if ref in self.running:
                self.running.pop(ref)
                self.done[ref] = AttemptStatus(Phase.CANCELLED, reason="Cancelled")

    def run_lock(self, run: str, holder: str, lease_seconds: float = 30.0) -> RunLock:
        return StoreRunLock(self.store, run, holder, lease_seconds)


def make_pipeline(store_root: str, stages: list[dict[str, object]], run: str = "r1") -> Pipeline:
    """A pipeline on a file store with the given stage dicts (kind defaults to filter)."""
    full = [{"kind": "filter", **s} for s in stages]
    return parse_pipeline({"run": run, "backend": "local", "store": f"file://{store_root}", "stages": full})
