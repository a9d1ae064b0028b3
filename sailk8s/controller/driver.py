"""The Controller: selects stages, takes the run lock, schedules stage threads, finishes the run."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import structlog

from sailk8s.backends.base import Backend, LockLost, RunLock
from sailk8s.controller.attempts import StageDriver
from sailk8s.controller.runinfo import Aborted, Event, default_holder, new_run_id
from sailk8s.errors import ConfigError, SailError, StoreError, StoreUnavailable
from sailk8s.ledger.claims import claim_outputs
from sailk8s.ledger.runstate import (
    BLOCKED,
    CANCELLED,
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    RunState,
    changed_definitions,
    clear_cancel,
    load_state,
)
from sailk8s.spec import Pipeline, Stage
from sailk8s.store.base import ObjectStore

log = structlog.get_logger("sailk8s.controller")


# How long a stage's driver waits out a store that stays unavailable after the store's own
# retries (SAIL_STORE_RETRY_SECONDS) before the stage fails with the store's error.
STORE_OUTAGE_SECONDS = 600.0

class Controller(StageDriver):
    """Runs a pipeline's stages on a backend, persisting run state in the store.

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
                st = self.state.stage(s.name)
                # Readers without the pipeline file (status --store, the dashboard) draw the DAG from these.
                st.kind, st.depends = s.kind, list(s.depends)

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
            self._ride_out_store_outages(stage)
        except Aborted:
            pass
        except SailError as err:
            self._fail_stage(stage, f"controller error: {err}")
        except Exception as err:  # a bug must not leave the run hanging: fail the stage, say why
            log.exception("controller error", stage=stage.name)
            self._fail_stage(stage, f"controller error: {type(err).__name__}: {err}")
        finally:
            with self._mutex:
                self._changed.notify_all()

    def _ride_out_store_outages(self, stage: Stage) -> None:
        """Drive the stage; a store outage longer than the store's own retries is waited out (up to
        STORE_OUTAGE_SECONDS), then the stage is driven again from its running attempt."""
        first_failure: float | None = None
        resume = False
        while True:
            try:
                self._drive_stage(stage, resume=resume)
                return
            except StoreUnavailable as err:
                now = self.clock()
                first_failure = now if first_failure is None else first_failure
                if now - first_failure > STORE_OUTAGE_SECONDS:
                    raise
                log.warning("store unavailable: waiting to drive the stage again", stage=stage.name,
                            error=str(err))
                self._check_abort()
                self.sleep(min(self.tick, 5.0))
                resume = True

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
