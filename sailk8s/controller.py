"""Drives a run: stage order, retries, adoption, run state. One code path for every Backend.

- Stages start in dependency order; independent stages run concurrently (one thread each).
  With `only`, dependencies outside the selection are assumed to be satisfied.
- A stage is skipped when it is complete: state.json says it succeeded, or (no attempt
  recorded) its report.json exists and the ledger holds a done marker for each of its shards.
- Attempt k is recorded in state.json BEFORE it is submitted under its deterministic name
  (`<run>-<stage>-<k>`), so a restarted controller finds it and adopts it (status, or a
  submit of the same k, which backends treat as adoption) instead of starting a duplicate.
- After an attempt ends, sailk8s.failures.decide says: done, retry after a backoff (infra
  failures on their own budget, app failures up to max_attempts) or stop with the cause.
  Dependants of a stage that did not succeed are marked blocked and never started.
- A stage whose progress.json has not changed for stage.stall_seconds is marked stalled in
  state.json (and the log); with restart_on_stall the attempt is cancelled and retried as an
  app failure.
- One controller per run: the backend's RunLock, renewed by a heartbeat thread.
Time (clock, sleep) is injectable so backoff and stall tests run instantly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import structlog

from sailk8s.backends.base import AttemptRef, AttemptStatus, Backend, LockLost, Phase, RunLock
from sailk8s.errors import BackendError, ConfigError, SailError, StoreError
from sailk8s.exitcodes import FailureClass
from sailk8s.failures import Action, decide, describe
from sailk8s.ledger.claims import claim_outputs
from sailk8s.ledger.results import StageResults
from sailk8s.ledger.runstate import (
    BLOCKED,
    CANCELLED,
    DONE,
    FAILED,
    PENDING,
    RETRYING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    TERMINAL,
    AttemptRecord,
    RunState,
    StageState,
    cancel_requested,
    changed_definitions,
    clear_cancel,
    load_state,
    read_cancel,
    save_state,
)
from sailk8s.spec import Pipeline, Stage
from sailk8s.store.base import ObjectStore

log = structlog.get_logger(__name__)

Event = dict[str, Any]


class _Aborted(Exception):
    """The controller is stopping (lock lost or interrupted): leave attempts running for adoption."""


def new_run_id() -> str:
    """A fresh run identity (12 hex digits)."""
    return uuid.uuid4().hex[:12]


def default_holder() -> str:
    """This controller's identity for the run lock: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def read_progress(store: ObjectStore, run: str, stage: str) -> dict[str, Any] | None:
    """The stage's progress record as a dict (for events), or None when absent or unreadable."""
    record = StageResults(store, run, stage).read_progress()
    return None if record is None else record.model_dump()


def progress_mark(progress: dict[str, Any] | None) -> str | None:
    """What counts as progress: the work counters, not the timestamp rank 0 refreshes."""
    if progress is None:
        return None
    keys = [k for k in ("done", "step", "samples", "tokens") if k in progress]
    picked = {k: progress[k] for k in keys} if keys else progress
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()


class Controller:
    """Runs a pipeline's stages on a backend, persisting run state in the store."""

    def __init__(self, pipeline: Pipeline, backend: Backend, store: ObjectStore, *,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 tick: float | None = None, lease_seconds: float = 30.0, lock_wait: float = 0.0,
                 holder: str | None = None, lock: RunLock | None = None,
                 on_event: Callable[[Event], None] | None = None) -> None:
        self.pipeline = pipeline
        self.run_name = pipeline.run
        self.backend = backend
        self.store = store
        self.clock = clock
        self.sleep = sleep
        # How often a waiting stage looks at cancel requests and progress. Each look is a new
        # backend.wait() (for Kubernetes: a list + watch), so it is long there; stall checks
        # shorten it per stage (stall_seconds / 3).
        self.tick = tick if tick is not None else (5.0 if backend.name == "local" else 60.0)
        self.lease_seconds = lease_seconds
        self.lock_wait = lock_wait
        self.holder = holder or default_holder()
        self._lock = lock
        self.on_event = on_event
        self.state = RunState(run=pipeline.run, backend=backend.name)
        self.fingerprints = pipeline.fingerprints()
        self._mutex = threading.RLock()
        self._changed = threading.Condition(self._mutex)
        self._abort: BaseException | None = None
        self._stop_heartbeat = threading.Event()

    # -- public entry points ----------------------------------------------------------------
    def run(self, only: Sequence[str] | None = None, rerun: Sequence[str] = (),
            rerun_changed: bool = False) -> RunState:
        """Run every selected stage in dependency order; returns the final run state.

        `rerun`: stages whose results are discarded first, with those of every stage below them.
        `rerun_changed`: the same for every selected stage whose definition changed since its
        results were made (idempotent, so safe in a Job that restarts; otherwise they are refused).
        """
        selected = self._select(only)
        named = [s.name for s in self._select(rerun, "--rerun")] if rerun else []
        with self._locked():
            clear_cancel(self.store, self.run_name)
            self._load()
            if rerun_changed:
                named += changed_definitions(self.state, self.fingerprints, [s.name for s in selected])
            resets = self.pipeline.downstream(named) if named else []
            self._check_definitions([s.name for s in selected if s.name not in resets])
            self._claim([s for s in self.pipeline.order() if s.name in resets or s in selected], resets)
            for name in resets:
                self._reset_stage(self.pipeline.stage(name), self.state.stages[name])
            for stage in selected:
                st = self.state.stages[stage.name]
                if st.state in (FAILED, BLOCKED, CANCELLED):
                    # A new `run` after a stop gives those stages a fresh retry budget.
                    st.state, st.cause, st.app_failures, st.infra_failures = PENDING, None, 0, 0
            self.state.status = RUNNING
            self.state.finished_at = None
            self._save()
            self._emit("run_started", stages=[s.name for s in selected])
            self._schedule(selected)
            return self._finish_run(selected)

    def submit(self, stage_name: str, *, from_scratch: bool = False, detach: bool = False) -> RunState:
        """Run one stage (retries included) or, with detach, submit its next attempt and return."""
        stage = self.pipeline.stage(stage_name)
        with self._locked():
            clear_cancel(self.store, self.run_name)
            self._load()
            st = self.state.stage(stage.name)
            if not from_scratch:
                self._check_definitions([stage.name])
            self._claim([stage], [stage.name] if from_scratch else [])
            if from_scratch:
                self._reset_stage(stage, st)
            elif st.state in (FAILED, CANCELLED, BLOCKED):
                # An explicit submit after a stop gets a fresh retry budget.
                st.state, st.cause, st.app_failures, st.infra_failures = PENDING, None, 0, 0
            self.state.status = RUNNING
            self._save()
            if detach:
                self._submit_detached(stage, st)
            else:
                self._drive_stage(stage)
                self._finish_run([stage])
            return self.state

    # -- lock and state ---------------------------------------------------------------------
    def _locked(self) -> _LockScope:
        return _LockScope(self)

    def _select(self, only: Sequence[str] | None, option: str = "--only") -> list[Stage]:
        order = self.pipeline.order()
        if not only:
            return order
        names = {s.name for s in order}
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ConfigError(f"{option}: no stage named {', '.join(map(repr, unknown))} in run "
                              f"{self.run_name!r} (stages: {', '.join(s.name for s in order)})")
        return [s for s in order if s.name in set(only)]

    def _load(self) -> None:
        loaded = load_state(self.store, self.run_name)
        with self._mutex:
            if loaded is not None:
                self.state = loaded  # a run from before run ids keeps none: its attempts carry none
            elif not self.state.run_id:
                self.state.run_id = new_run_id()  # a new run in this store
            self.state.backend = self.backend.name
            self.state.controller = self.holder
            if self.state.started_at is None:
                self.state.started_at = self.clock()
            for s in self.pipeline.stages:
                self.state.stage(s.name)

    def _check_definitions(self, names: Sequence[str]) -> None:
        """Refuse to reuse results made from another stage definition (they would be mixed)."""
        changed = changed_definitions(self.state, self.fingerprints, names)
        if changed:
            raise ConfigError(
                f"run {self.run_name!r} has results of {', '.join(map(repr, changed))} made with another "
                "definition (kind, inputs, outputs or config, theirs or a stage's they depend on): reusing "
                "them would mix old and new results. Run again with `--rerun "
                f"{','.join(changed)}` (or `--rerun-changed`) to discard those results and redo the "
                "stages and every stage below them, or restore the previous definition"
            )

    def _claim(self, stages: Sequence[Stage], resets: Sequence[str]) -> None:
        """Claim the outputs this controller may write or delete: those of stages not done yet and
        of those being reset (refused, before anything runs, when another run or stage owns them)."""
        for stage in stages:
            if stage.name in resets or self.state.stages[stage.name].state not in DONE:
                claim_outputs(self.store, self.run_name, stage.name, stage.outputs)

    def _save(self) -> None:
        with self._mutex:
            save_state(self.store, self.state, now=self.clock())
            self._changed.notify_all()

    def _emit(self, event: str, **fields: Any) -> None:
        if self.on_event is not None:
            self.on_event({"event": event, "run": self.run_name, "time": self.clock(), **fields})

    def _heartbeat(self, lock: RunLock) -> None:
        interval = max(0.05, self.lease_seconds / 3)
        while not self._stop_heartbeat.wait(interval):
            try:
                lock.renew()
            except LockLost as err:
                log.error("run lock lost: stopping, attempts keep running", error=str(err))
                with self._mutex:
                    self._abort = err
                    self._changed.notify_all()
                return
            except SailError as err:  # the store hiccups: keep trying until the lease runs out
                log.warning("run lock renewal failed", error=str(err))

    # -- scheduling ---------------------------------------------------------------------------
    def _schedule(self, selected: list[Stage]) -> None:
        names = {s.name for s in selected}
        threads: dict[str, threading.Thread] = {}
        with self._mutex:
            while True:
                if self._abort is not None:
                    break
                open_stages = 0
                for stage in selected:
                    st = self.state.stages[stage.name]
                    if stage.name in threads:
                        if threads[stage.name].is_alive():
                            open_stages += 1
                        continue
                    deps = [d for d in stage.depends if d in names]
                    dep_states = {d: self.state.stages[d].state for d in deps}
                    bad = [d for d, s in dep_states.items() if s in TERMINAL and s not in DONE]
                    if bad:
                        if st.state not in TERMINAL:
                            st.state = BLOCKED
                            st.cause = f"not started: dependency {bad[0]!r} {dep_states[bad[0]]}"
                            self._emit("stage_blocked", stage=stage.name, cause=st.cause)
                            self._save()
                        continue
                    if all(s in DONE for s in dep_states.values()):
                        t = threading.Thread(target=self._stage_thread, args=(stage,),
                                             name=f"stage-{stage.name}", daemon=True)
                        threads[stage.name] = t
                        t.start()
                        open_stages += 1
                    else:
                        open_stages += 1  # waiting for its dependencies
                if open_stages == 0:
                    break
                self._changed.wait(timeout=self.tick)
        for t in threads.values():
            t.join(timeout=None if self._abort is None else 0.5)
        if self._abort is not None:
            raise self._abort

    def _stage_thread(self, stage: Stage) -> None:
        try:
            self._drive_stage(stage)
        except _Aborted:
            pass
        except SailError as err:
            self._fail_stage(stage, f"controller error: {err}")
        except Exception as err:  # a bug must not leave the run hanging: fail the stage, say why
            log.exception("controller error", stage=stage.name)
            self._fail_stage(stage, f"controller error: {type(err).__name__}: {err}")
        finally:
            with self._mutex:
                self._changed.notify_all()

    def _fail_stage(self, stage: Stage, cause: str) -> None:
        with self._mutex:
            st = self.state.stages[stage.name]
            st.state, st.cause, st.finished_at = FAILED, cause, self.clock()
            with contextlib.suppress(SailError):
                self._save()
        self._emit("stage_failed", stage=stage.name, cause=cause)

    def _finish_run(self, selected: Iterable[Stage]) -> RunState:
        with self._mutex:
            states = [self.state.stages[s.name].state for s in selected]
            if all(s in DONE for s in states):
                self.state.status = SUCCEEDED
            elif any(s == FAILED for s in states):
                self.state.status = FAILED
            elif any(s == CANCELLED for s in states):
                self.state.status = CANCELLED
            else:
                self.state.status = FAILED
            self.state.finished_at = self.clock()
            self._save()
        self._emit("run_finished", status=self.state.status)
        return self.state

    # -- one stage ---------------------------------------------------------------------------
    def _complete(self, stage: Stage, st: StageState) -> bool:
        if st.state in DONE:
            return True
        return not st.attempts and StageResults(self.store, self.run_name, stage.name).complete()

    def _cancel_wanted(self, stage: Stage) -> bool:
        return cancel_requested(read_cancel(self.store, self.run_name), stage.name)

    def _check_abort(self) -> None:
        if self._abort is not None:
            raise _Aborted()

    def _drive_stage(self, stage: Stage) -> None:
        st = self.state.stages[stage.name]
        if self._complete(stage, st):
            with self._mutex:
                if st.state not in DONE:
                    st.state, st.finished_at = SKIPPED, self.clock()
                    st.fingerprint = st.fingerprint or self.fingerprints[stage.name]
                    self._save()
            log.info("stage already complete: skipped", stage=stage.name)
            self._emit("stage_skipped", stage=stage.name)
            return
        ref = self._adopt(stage, st)
        while True:
            self._check_abort()
            if ref is None:
                if self._cancel_wanted(stage):
                    self._set_final(stage, st, CANCELLED, "cancelled by request")
                    return
                ref = self._submit_next(stage, st)
                if ref is None:
                    return
            status = self._watch(stage, st, ref)
            if not self._after_attempt(stage, st, ref, status):
                return
            ref = None

    def _adopt(self, stage: Stage, st: StageState) -> AttemptRef | None:
        """The unfinished attempt a previous controller left behind, adopted; None if none."""
        last = st.last
        if st.state == RETRYING and st.next_retry_at is not None:
            wait = st.next_retry_at - self.clock()
            if wait > 0:
                self.sleep(wait)
        if last is None or last.finished:
            return None
        ref = self._ref(stage, last.attempt)
        status = self.backend.status(ref)
        if status.phase is Phase.UNKNOWN:
            # Recorded but never reached the backend: submit the same attempt (same name).
            try:
                ref = self.backend.submit(self.pipeline, stage, last.attempt, self.run_id)
            except BackendError as err:
                self._record_submit_failure(stage, st, last, err)
                return None
        log.info("adopted attempt", stage=stage.name, attempt=last.attempt, phase=status.phase.value)
        self._emit("attempt_adopted", stage=stage.name, attempt=last.attempt, name=ref.name,
                   phase=status.phase.value)
        with self._mutex:
            st.state = RUNNING
            self._save()
        return ref

    def _submit_next(self, stage: Stage, st: StageState) -> AttemptRef | None:
        with self._mutex:
            k = (st.last.attempt if st.last else 0) + 1
            ref = self._ref(stage, k)
            now = self.clock()
            rec = AttemptRecord(attempt=k, name=ref.name, submitted_at=now)
            st.attempts.append(rec)
            st.fingerprint = st.fingerprint or self.fingerprints[stage.name]
            st.state, st.next_retry_at, st.stalled = RUNNING, None, False
            st.started_at = st.started_at or now
            self._save()  # recorded first: a controller killed during submit adopts it by name
        try:
            ref = self.backend.submit(self.pipeline, stage, k, self.run_id)
        except BackendError as err:
            self._record_submit_failure(stage, st, rec, err)
            return None
        log.info("submitted attempt", stage=stage.name, attempt=k, name=ref.name)
        self._emit("attempt_submitted", stage=stage.name, attempt=k, name=ref.name)
        return ref

    def _record_submit_failure(self, stage: Stage, st: StageState, rec: AttemptRecord,
                               err: BackendError) -> None:
        # The backend refused the attempt (forbidden, CRD missing, spec mismatch): retrying
        # the same request cannot help, and the backend already retried transient errors.
        with self._mutex:
            rec.phase, rec.reason = Phase.FAILED.value, "SubmitFailed"
            rec.failure = FailureClass.PERMANENT.value
            rec.message, rec.finished_at = str(err), self.clock()
        self._set_final(stage, st, FAILED, f"permanent failure, not retried: submit failed: {err}")

    def _set_final(self, stage: Stage, st: StageState, word: str, cause: str | None) -> None:
        with self._mutex:
            st.state, st.cause, st.finished_at, st.next_retry_at = word, cause, self.clock(), None
            st.stalled = st.stalled and word not in DONE
            self._save()
        log.info("stage finished", stage=stage.name, state=word, cause=cause)
        self._emit(f"stage_{word}", stage=stage.name, cause=cause)

    def _watch(self, stage: Stage, st: StageState, ref: AttemptRef) -> AttemptStatus:
        """Wait for the attempt to end, watching for cancel requests and stalled progress."""
        mark = progress_mark(read_progress(self.store, self.run_name, stage.name))
        since = self.clock()
        cancelling = False
        tick = min(self.tick, stage.stall_seconds / 3) if stage.stall_seconds else self.tick
        while True:
            self._check_abort()
            status = self.backend.wait(ref, timeout=tick)
            self._note_phase(st, ref, status)
            if status.phase.finished or status.phase is Phase.UNKNOWN:
                final = read_progress(self.store, self.run_name, stage.name)
                if final is not None and progress_mark(final) != mark:
                    self._emit("progress", stage=stage.name, attempt=ref.attempt, progress=final)
                return status
            if not cancelling and self._cancel_wanted(stage):
                cancelling = True
                log.info("cancelling attempt on request", stage=stage.name, attempt=ref.attempt)
                self.backend.cancel(ref)
                continue
            progress = read_progress(self.store, self.run_name, stage.name)
            new_mark = progress_mark(progress)
            now = self.clock()
            if new_mark != mark:
                mark, since = new_mark, now
                if progress is not None:
                    self._emit("progress", stage=stage.name, attempt=ref.attempt, progress=progress)
                if st.stalled:
                    with self._mutex:
                        st.stalled = False
                        self._save()
            elif stage.stall_seconds is not None and now - since >= stage.stall_seconds and not st.stalled:
                with self._mutex:
                    st.stalled = True
                    self._save()
                log.warning("stage stalled: no progress", stage=stage.name, attempt=ref.attempt,
                            seconds=round(now - since, 1))
                self._emit("stage_stalled", stage=stage.name, attempt=ref.attempt, seconds=now - since)
                if stage.restart_on_stall:
                    self.backend.cancel(ref)
                    return AttemptStatus(Phase.FAILED, reason="Stalled", failure=FailureClass.APP,
                                         message=f"no progress for {stage.stall_seconds:g}s; cancelled "
                                                 "to restart", finished_at=now)

    def _note_phase(self, st: StageState, ref: AttemptRef, status: AttemptStatus) -> None:
        rec = next((a for a in reversed(st.attempts) if a.attempt == ref.attempt), None)
        if rec is not None and not rec.finished and rec.phase != status.phase.value \
                and status.phase in (Phase.PENDING, Phase.RUNNING):
            with self._mutex:
                rec.phase = status.phase.value
                self._save()

    def _ref(self, stage: Stage, attempt: int) -> AttemptRef:
        return AttemptRef(self.run_name, stage.name, attempt, self.run_id)

    @property
    def run_id(self) -> str:
        return self.state.run_id or ""

    def _without_results(self, stage: Stage, status: AttemptStatus) -> AttemptStatus:
        """A success the store cannot show is a failure: "succeeded" means the results are there."""
        if status.phase is not Phase.SUCCEEDED:
            return status
        missing = StageResults(self.store, self.run_name, stage.name).missing()
        if missing is None:
            return status
        log.warning("attempt succeeded without its results in the store", stage=stage.name, missing=missing)
        return AttemptStatus(Phase.FAILED, reason="NoResults", failure=FailureClass.APP,
                             message=f"succeeded without results: {missing}", exit_code=status.exit_code,
                             started_at=status.started_at, finished_at=status.finished_at)

    def _after_attempt(self, stage: Stage, st: StageState, ref: AttemptRef, status: AttemptStatus) -> bool:
        """Record the ended attempt and apply the decision; True when another attempt follows."""
        status = self._without_results(stage, status)
        decision = decide(status, stage.retry, st.app_failures, st.infra_failures)
        with self._mutex:
            rec = next((a for a in reversed(st.attempts) if a.attempt == ref.attempt), None)
            if rec is not None:
                rec.phase = Phase.FAILED.value if status.phase is Phase.UNKNOWN else status.phase.value
                rec.finished_at = status.finished_at or self.clock()
                rec.exit_code, rec.reason, rec.message = status.exit_code, status.reason, status.message
                rec.failure = decision.failure.value if decision.failure else None
            st.app_failures, st.infra_failures = decision.app_failures, decision.infra_failures
            self._save()
        self._emit("attempt_finished", stage=stage.name, attempt=ref.attempt, phase=status.phase.value,
                   failure=decision.failure.value if decision.failure else None,
                   message=None if status.phase is Phase.SUCCEEDED else describe(status))
        if decision.action is Action.DONE:
            self._set_final(stage, st, SUCCEEDED, None)
            return False
        if decision.action is Action.CANCELLED:
            self._set_final(stage, st, CANCELLED, decision.cause)
            return False
        if decision.action is Action.FAIL:
            self._set_final(stage, st, FAILED, decision.cause)
            return False
        if self._cancel_wanted(stage):
            self._set_final(stage, st, CANCELLED, "cancelled by request")
            return False
        with self._mutex:
            st.state, st.cause = RETRYING, decision.cause
            st.next_retry_at = self.clock() + decision.delay
            self._save()
        log.warning("retrying stage", stage=stage.name, after_seconds=decision.delay, cause=decision.cause)
        self._emit("stage_retrying", stage=stage.name, delay=decision.delay, cause=decision.cause)
        self._backoff(stage, decision.delay)
        return True

    def _backoff(self, stage: Stage, delay: float) -> None:
        """Sleep out a retry backoff, looking at cancel requests every tick (backoffs reach minutes)."""
        left = delay
        while left > 0:
            self._check_abort()
            if self._cancel_wanted(stage):
                return  # the caller's loop sees the request and ends the stage as cancelled
            chunk = min(left, self.tick)
            self.sleep(chunk)
            left -= chunk

    def _submit_detached(self, stage: Stage, st: StageState) -> None:
        if self._complete(stage, st):
            self._drive_stage(stage)  # marks it skipped
            return
        last = st.last
        if last is not None and not last.finished and \
                self.backend.status(self._ref(stage, last.attempt)).phase in (
                    Phase.PENDING, Phase.RUNNING):
            self._emit("attempt_adopted", stage=stage.name, attempt=last.attempt, name=last.name)
            return
        if last is not None and not last.finished:
            last.phase, last.finished_at = Phase.FAILED.value, self.clock()
        self._submit_next(stage, st)

    def _reset_stage(self, stage: Stage, st: StageState) -> None:
        """--attempt-from-scratch / --rerun: forget done markers, checkpoints, progress and report,
        and delete the stage's outputs (claimed by it first), so no stale shard outlives the rerun.

        Attempt records stay: new attempts continue the numbering, so no job name is reused.
        A live attempt is cancelled first: it must not write old results after the reset.
        """
        last = st.last
        if last is not None and not last.finished:
            self.backend.cancel(self._ref(stage, last.attempt))
            last.phase, last.finished_at = Phase.CANCELLED.value, self.clock()
            log.warning("cancelled the running attempt of a stage being reset", stage=stage.name,
                        attempt=last.name)
        StageResults(self.store, self.run_name, stage.name).reset()
        for prefix in stage.outputs:
            for key in list(self.store.list(prefix.strip("/") + "/")):
                self.store.delete(key)
        st.state, st.cause, st.stalled, st.fingerprint = PENDING, None, False, None
        st.app_failures = st.infra_failures = 0
        st.started_at = st.finished_at = st.next_retry_at = None
        log.info("stage reset: starting from scratch", stage=stage.name, outputs=stage.outputs)


class _LockScope:
    """Holds the run lock (and its heartbeat) for the duration of a with-block."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller
        self.lock: RunLock | None = None
        self.thread: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        c = self.c
        lock = c._lock or c.backend.run_lock(c.run_name, c.holder, c.lease_seconds)
        try:
            lock.acquire(wait=c.lock_wait)
        except StoreError as err:
            raise StoreError(f"cannot take the run lock: {err}") from None
        self.lock = lock
        c._stop_heartbeat.clear()
        self.thread = threading.Thread(target=c._heartbeat, args=(lock,), name="run-lock", daemon=True)
        self.thread.start()
        return lock

    def __exit__(self, *exc: object) -> None:
        self.c._stop_heartbeat.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        if self.lock is not None:
            try:
                self.lock.release()
            except SailError as err:
                log.warning("could not release the run lock", error=str(err))
