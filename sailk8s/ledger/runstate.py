"""Run state in the store (runs/<run>/state.json) and cancel requests: plain JSON, one writer at a time.

The controller writes state.json while it holds the run lock; `status`, `cancel` and `submit
--detach` read it, and write it only when no live controller holds the lock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import structlog
from pydantic import BaseModel, Field, ValidationError

from sailk8s.errors import ObjectNotFound, StoreError
from sailk8s.ledger.paths import RunPaths
from sailk8s.store.base import ObjectStore

log = structlog.get_logger(__name__)

# Stage state words shown by `status` (attempt phases use sailk8s.backends.base.Phase).
PENDING = "pending"  # not started yet
RUNNING = "running"  # an attempt is submitted or running
RETRYING = "retrying"  # waiting out the backoff before the next attempt
SUCCEEDED = "succeeded"
SKIPPED = "skipped"  # found complete in the ledger, nothing run
FAILED = "failed"
BLOCKED = "blocked"  # a dependency failed or was cancelled
CANCELLED = "cancelled"
TERMINAL = frozenset({SUCCEEDED, SKIPPED, FAILED, BLOCKED, CANCELLED})
DONE = frozenset({SUCCEEDED, SKIPPED})


class AttemptRecord(BaseModel):
    """One attempt of one stage as the controller saw it."""

    attempt: int
    name: str
    phase: str = "Pending"
    submitted_at: float
    finished_at: float | None = None
    failure: str | None = None
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed", "Cancelled")


class StageState(BaseModel):
    """A stage's progress through the controller: state word, attempts, failure counts, cause."""

    name: str
    kind: str | None = None
    depends: list[str] = Field(default_factory=list)
    state: str = PENDING
    attempts: list[AttemptRecord] = Field(default_factory=list)
    app_failures: int = 0
    infra_failures: int = 0
    cause: str | None = None  # why it failed / was blocked / was cancelled (one line)
    stalled: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    next_retry_at: float | None = None
    updated_at: float | None = None
    # Pipeline.fingerprints() of the definition the stage's results were made with.
    fingerprint: str | None = None

    @property
    def last(self) -> AttemptRecord | None:
        return self.attempts[-1] if self.attempts else None


class RunState(BaseModel):
    """The whole run: which controller drives it and every stage's state."""

    run: str
    # This run's identity: made when the run is first created in this store. Attempts carry
    # it, so an earlier run of the same name (a wiped store, another bucket) is never adopted.
    run_id: str | None = None
    backend: str = "local"
    controller: str | None = None
    status: str = RUNNING
    started_at: float | None = None
    updated_at: float | None = None
    finished_at: float | None = None
    stages: dict[str, StageState] = Field(default_factory=dict)

    def stage(self, name: str) -> StageState:
        """The stage's state, created pending on first use."""
        if name not in self.stages:
            self.stages[name] = StageState(name=name)
        return self.stages[name]


def load_state(store: ObjectStore, run: str) -> RunState | None:
    """The run's persisted state, or None if the run has none yet."""
    try:
        raw = store.get(RunPaths(run).state)
    except ObjectNotFound:
        return None
    try:
        return RunState.model_validate_json(raw)
    except ValidationError as err:
        raise StoreError(f"{store.describe(RunPaths(run).state)} is not a valid run state: "
                         f"{err.errors()[0]['msg']}") from None


def save_state(store: ObjectStore, state: RunState, now: float | None = None) -> None:
    """Write state.json atomically (the store's put is atomic)."""
    state.updated_at = time.time() if now is None else now
    store.put(RunPaths(state.run).state, state.model_dump_json(indent=1).encode())


def request_cancel(store: ObjectStore, run: str, stage: str | None, now: float | None = None) -> None:
    """Record a cancel request the controller honours: no further attempts for those stages."""
    req = read_cancel(store, run)
    if stage is None:
        req["all"] = True
    else:
        req.setdefault("stages", [])
        if stage not in req["stages"]:
            req["stages"].append(stage)
    req["requested_at"] = time.time() if now is None else now
    store.put(RunPaths(run).cancel, json.dumps(req).encode())


def read_cancel(store: ObjectStore, run: str) -> dict[str, Any]:
    """The run's cancel request ({"all": bool, "stages": [...]}) or {} when none."""
    try:
        data = json.loads(store.get(RunPaths(run).cancel))
    except ObjectNotFound:
        return {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def cancel_requested(req: dict[str, Any], stage: str) -> bool:
    """Whether a cancel request read by read_cancel covers stage."""
    return bool(req.get("all")) or stage in (req.get("stages") or [])


def clear_cancel(store: ObjectStore, run: str) -> None:
    """Forget a cancel request (a new `run` or `submit` starts afresh)."""
    store.delete(RunPaths(run).cancel)


def changed_definitions(state: RunState, fingerprints: dict[str, str], names: Iterable[str]) -> list[str]:
    """Stages among `names` whose results were made from another definition than the current one."""
    out = []
    for name in names:
        st = state.stages.get(name)
        if st is not None and st.fingerprint is not None and st.fingerprint != fingerprints.get(name):
            out.append(name)
    return out


def list_runs(store: ObjectStore) -> list[str]:
    """The names of the runs in the store that have a run state, sorted (one listing of runs/)."""
    names = []
    for key in store.list("runs/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "state.json":
            names.append(parts[1])
    return sorted(names)


class RunSummary(BaseModel):
    """One line of a run listing: status, start, duration and stages done of total."""

    run: str
    status: str
    backend: str
    started_at: float | None
    finished_at: float | None
    duration_seconds: float | None
    stages_done: int
    stages_total: int
    failed: list[str]


def summarize(state: RunState, now: float | None = None) -> RunSummary:
    """A run's listing line from its state (a running run's duration runs up to `now`)."""
    end = state.finished_at or (state.updated_at if state.status in TERMINAL else None)
    end = end if end is not None else (time.time() if now is None else now)
    duration = end - state.started_at if state.started_at is not None else None
    return RunSummary(run=state.run, status=state.status, backend=state.backend, started_at=state.started_at,
                      finished_at=state.finished_at, duration_seconds=duration,
                      stages_done=sum(s.state in DONE for s in state.stages.values()),
                      stages_total=len(state.stages),
                      failed=[n for n, s in state.stages.items() if s.state == FAILED])


def run_summaries(store: ObjectStore, now: float | None = None) -> list[RunSummary]:
    """Every run with a readable state, newest first; an unreadable state.json is skipped (logged),
    so one broken run never hides the others."""
    out = []
    for name in list_runs(store):
        try:
            state = load_state(store, name)
        except StoreError as err:
            log.warning("skipping unreadable run state", run=name, error=str(err))
            continue
        if state is not None:
            out.append(summarize(state, now))
    return sorted(out, key=lambda s: s.started_at or 0.0, reverse=True)
