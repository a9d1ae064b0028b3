"""One stage's attempts: skip, adopt or submit, watch, decide, retry, reset (mixed into Controller)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog

from sailk8s.backends.base import AttemptRef, AttemptStatus, Backend, Phase
from sailk8s.controller.runinfo import Aborted, Event, progress_mark, read_progress
from sailk8s.errors import BackendError
from sailk8s.exitcodes import FailureClass
from sailk8s.failures import Action, decide, describe
from sailk8s.ledger.results import StageResults
from sailk8s.ledger.runstate import (
    CANCELLED,
    DONE,
    FAILED,
    PENDING,
    RETRYING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    AttemptRecord,
    RunState,
    StageState,
    cancel_requested,
    read_cancel,
    save_state,
)
from sailk8s.spec import Pipeline, Stage
from sailk8s.store.base import ObjectStore

log = structlog.get_logger("sailk8s.controller")


class StageDriver:
    """Drives one stage at a time on the controller's state (the Controller sets these fields)."""

    pipeline: Pipeline
    run_name: str
    backend: Backend
    store: ObjectStore
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    tick: float
    state: RunState
    fingerprints: dict[str, str]
    on_event: Callable[[Event], None] | None
    _mutex: threading.RLock
    _changed: threading.Condition
    _abort: BaseException | None

    @property
    def run_id(self) -> str:
        """This run's identity ('' for a run from before run ids)."""
        return self.state.run_id or ""

    def _save(self) -> None:
        with self._mutex:
            save_state(self.store, self.state, now=self.clock())
            self._changed.notify_all()

    def _emit(self, event: str, **fields: Any) -> None:
        if self.on_event is not None:
            self.on_event({"event": event, "run": self.run_name, "time": self.clock(), **fields})

    def _complete(self, stage: Stage, st: StageState) -> bool:
        if st.state in DONE:
            return True
        return not st.attempts and StageResults(self.store, self.run_name, stage.name).complete()

    def _cancel_wanted(self, stage: Stage) -> bool:
        return cancel_requested(read_cancel(self.store, self.run_name), stage.name)

    def _check_abort(self) -> None:
        if self._abort is not None:
            raise Aborted()

    def _drive_stage(self, stage: Stage, resume: bool = False) -> None:
        st = self.state.stages[stage.name]
        adopting = resume and st.last is not None and not st.last.finished  # an outage ended mid-attempt
        if not adopting and self._complete(stage, st):
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


