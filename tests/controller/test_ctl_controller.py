"""Controller decisions with a scripted backend and a fake clock (no processes, instant)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from ctl_fakes import APP, HANG, INFRA, LOST, OK, PERMANENT, FakeBackend, FakeTime, make_pipeline

from sailk8s.backends.base import AttemptRef, LockHeld
from sailk8s.backends.local.storelock import StoreRunLock
from sailk8s.controller import Controller
from sailk8s.errors import BackendError, ConfigError
from sailk8s.ledger import StageResults
from sailk8s.ledger.runstate import (
    AttemptRecord,
    RunState,
    StageState,
    load_state,
    request_cancel,
    save_state,
)
from sailk8s.spec import Pipeline
from sailk8s.store.local import LocalStore

RETRY = {"max_attempts": 3, "backoff_base_seconds": 10, "backoff_cap_seconds": 600, "max_infra_retries": 2}


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store", durable=False)


@pytest.fixture
def ft() -> FakeTime:
    return FakeTime()


def make(store: LocalStore, ft: FakeTime, stages: list[dict[str, Any]],
         script: dict[str, list[Any]] | None = None,
         events: list[dict[str, Any]] | None = None) -> tuple[Pipeline, FakeBackend, Controller]:
    pipeline = make_pipeline(str(store.root), stages)
    backend = FakeBackend(store=store, time=ft, script=script or {})
    ctl = Controller(pipeline, backend, store, clock=ft.clock, sleep=ft.sleep, tick=5.0,
                     on_event=events.append if events is not None else None)
    return pipeline, backend, ctl


def backoffs(events: list[dict[str, Any]], ft: FakeTime) -> list[float]:
    """The retry delays announced, after checking they were slept in full (in tick-sized pieces,
    so a cancel request is seen during a long backoff)."""
    delays = [float(e["delay"]) for e in events if e["event"] == "stage_retrying"]
    assert sum(ft.sleeps) == pytest.approx(sum(delays)) and all(s <= 5.0 for s in ft.sleeps)
    return delays


def test_cancel_request_during_a_long_backoff_is_seen_within_a_tick(store: LocalStore, ft: FakeTime) -> None:
    retry = {"max_attempts": 3, "backoff_base_seconds": 500, "backoff_cap_seconds": 600}
    _, backend, ctl = make(store, ft, [{"name": "a", "retry": retry}], {"a": [APP, OK]})
    real_sleep = ft.sleep

    def sleep(seconds: float) -> None:
        real_sleep(seconds)
        request_cancel(store, "r1", "a")  # `python -m sailk8s cancel` while the stage waits to retry

    ctl.sleep = sleep
    state = ctl.run()
    assert state.stages["a"].state == "cancelled" and backend.submits == [("a", 1)]
    assert sum(ft.sleeps) <= 5.0  # one tick, not the 500-second backoff


def test_dag_runs_in_order_and_persists_state(store: LocalStore, ft: FakeTime) -> None:
    _, backend, ctl = make(store, ft, [{"name": "a"}, {"name": "b", "depends": ["a"]}])
    state = ctl.run()
    assert state.status == "succeeded"
    assert backend.submits == [("a", 1), ("b", 1)]
    saved = load_state(store, "r1")
    assert saved is not None
    assert {n: s.state for n, s in saved.stages.items()} == {"a": "succeeded", "b": "succeeded"}
    rec = saved.stages["a"].attempts[0]
    assert (rec.name, rec.phase, rec.finished_at is not None) == ("r1-a-1", "Succeeded", True)
    assert not store.exists("runs/r1/lock")  # released at the end


def test_permanent_failure_stops_at_once_and_blocks_dependants(store: LocalStore, ft: FakeTime) -> None:
    _, backend, ctl = make(store, ft, [{"name": "a", "retry": RETRY}, {"name": "b", "depends": ["a"]}],
                           {"a": [PERMANENT]})
    state = ctl.run()
    assert state.status == "failed"
    assert backend.submits == [("a", 1)]
    a, b = state.stages["a"], state.stages["b"]
    assert a.state == "failed" and "permanent" in (a.cause or "") and "bad config" in (a.cause or "")
    assert a.attempts[0].failure == "permanent" and a.attempts[0].exit_code == 3
    assert b.state == "blocked" and "'a'" in (b.cause or "") and not b.attempts
    assert ft.sleeps == []


def test_app_failures_retry_with_exponential_backoff(store: LocalStore, ft: FakeTime) -> None:
    evs: list[dict[str, Any]] = []
    _, backend, ctl = make(store, ft, [{"name": "a", "retry": RETRY}], {"a": [APP, APP, OK]}, events=evs)
    state = ctl.run()
    assert state.stages["a"].state == "succeeded"
    assert backend.submits == [("a", 1), ("a", 2), ("a", 3)]
    assert backoffs(evs, ft) == [10.0, 20.0]  # base * 2^(n-1)
    assert state.stages["a"].app_failures == 2


def test_app_failures_stop_at_max_attempts(store: LocalStore, ft: FakeTime) -> None:
    retry = {**RETRY, "max_attempts": 2}
    evs: list[dict[str, Any]] = []
    _, backend, ctl = make(store, ft, [{"name": "a", "retry": retry}], {"a": [APP, APP, OK]}, events=evs)
    state = ctl.run()
    a = state.stages["a"]
    assert a.state == "failed" and "2 of 2 attempts" in (a.cause or "") and "boom" in (a.cause or "")
    assert backend.submits == [("a", 1), ("a", 2)]
    assert backoffs(evs, ft) == [10.0]


def test_backoff_is_capped(store: LocalStore, ft: FakeTime) -> None:
    retry = {"max_attempts": 5, "backoff_base_seconds": 10, "backoff_cap_seconds": 25}
    evs: list[dict[str, Any]] = []
    _, _, ctl = make(store, ft, [{"name": "a", "retry": retry}], {"a": [APP, APP, APP, OK]}, events=evs)
    ctl.run()
    assert backoffs(evs, ft) == [10.0, 20.0, 25.0]


def test_infra_failures_do_not_count_as_app_failures(store: LocalStore, ft: FakeTime) -> None:
    retry = {**RETRY, "max_attempts": 1, "max_infra_retries": 3}
    _, backend, ctl = make(store, ft, [{"name": "a", "retry": retry}], {"a": [INFRA, LOST, INFRA, OK]})
    state = ctl.run()
    a = state.stages["a"]
    assert a.state == "succeeded" and a.app_failures == 0 and a.infra_failures == 3
    assert len(backend.submits) == 4
    assert [r.failure for r in a.attempts] == ["infra", "infra", "infra", None]


def test_infra_retries_have_their_own_cap(store: LocalStore, ft: FakeTime) -> None:
    _, backend, ctl = make(store, ft, [{"name": "a", "retry": RETRY}], {"a": [INFRA, INFRA, INFRA, OK]})
    state = ctl.run()
    a = state.stages["a"]
    assert a.state == "failed" and "infra retries exhausted" in (a.cause or "")
    assert len(backend.submits) == 3  # 1 + max_infra_retries (2)


def test_skip_stage_marked_succeeded_in_state(store: LocalStore, ft: FakeTime) -> None:
    _, backend, ctl = make(store, ft, [{"name": "a"}, {"name": "b", "depends": ["a"]}])
    ctl.run()
    backend.submits.clear()
    state = ctl.run()
    assert backend.submits == [] and state.status == "succeeded"


def test_skip_stage_complete_in_ledger(store: LocalStore, ft: FakeTime) -> None:
    store.put("runs/r1/a/report.json", json.dumps({"shards": 2}).encode())
    store.put("runs/r1/a/done/shard-000000.json", b"{}")
    _, backend, ctl = make(store, ft, [{"name": "a"}])
    ctl.run()
    assert backend.submits == [("a", 1)]  # one marker missing: not complete

    store2 = LocalStore(Path(str(store.root) + "-2"), durable=False)
    store2.put("runs/r1/a/report.json", json.dumps({"shards": 2}).encode())
    for i in range(2):
        store2.put(f"runs/r1/a/done/shard-00000{i}.json", b"{}")
    _, backend2, ctl2 = make(store2, ft, [{"name": "a"}])
    state = ctl2.run()
    assert backend2.submits == [] and state.stages["a"].state == "skipped"


def test_only_runs_the_selection(store: LocalStore, ft: FakeTime) -> None:
    _, backend, ctl = make(store, ft, [{"name": "a"}, {"name": "b", "depends": ["a"]}, {"name": "c"}])
    state = ctl.run(only=["b"])
    assert backend.submits == [("b", 1)]
    assert state.stages["a"].state == "pending" and state.status == "succeeded"
    with pytest.raises(ConfigError, match="no stage named 'zz'"):
        ctl.run(only=["zz"])


def test_independent_stages_run_concurrently(store: LocalStore, ft: FakeTime) -> None:
    both = threading.Barrier(2, timeout=120)  # a hang guard: passes once both wait

    def meet(ref: AttemptRef) -> None:
        # Each stage's first wait blocks until the other stage is also waiting.
        if ref.stage in ("a", "b") and not getattr(meet, ref.stage, False):
            setattr(meet, ref.stage, True)
            both.wait()

    _, backend, ctl = make(store, ft, [{"name": "a"}, {"name": "b"}, {"name": "c", "depends": ["a", "b"]}])
    backend.before_wait = meet
    state = ctl.run()
    assert state.status == "succeeded"
    assert backend.submits[-1] == ("c", 1)


def test_adopts_running_attempt_after_restart(store: LocalStore, ft: FakeTime) -> None:
    pipeline, backend, _ = make(store, ft, [{"name": "a"}])
    ref = backend.submit(pipeline, pipeline.stage("a"), 1)  # started by a controller that died
    backend.submits.clear()
    state = RunState(run="r1", stages={"a": StageState(name="a", state="running", attempts=[
        AttemptRecord(attempt=1, name=ref.name, phase="Running", submitted_at=ft.now)])})
    save_state(store, state)
    ctl = Controller(pipeline, backend, store, clock=ft.clock, sleep=ft.sleep)
    result = ctl.run()
    assert backend.submits == []  # adopted, not duplicated
    assert result.stages["a"].state == "succeeded" and len(result.stages["a"].attempts) == 1


def test_recorded_but_unsubmitted_attempt_is_submitted_under_same_number(store: LocalStore,
                                                                         ft: FakeTime) -> None:
    _pipeline, backend, ctl = make(store, ft, [{"name": "a"}])
    save_state(store, RunState(run="r1", stages={"a": StageState(name="a", state="running", attempts=[
        AttemptRecord(attempt=1, name="r1-a-1", submitted_at=ft.now)])}))
    ctl.run()
    assert backend.submits == [("a", 1)]


def test_second_live_controller_is_refused(store: LocalStore, ft: FakeTime) -> None:
    other = StoreRunLock(store, "r1", "other-host:42", lease_seconds=300)
    assert other.try_acquire()
    _, backend, ctl = make(store, ft, [{"name": "a"}])
    with pytest.raises(LockHeld, match="other-host:42"):
        ctl.run()
    assert backend.submits == []
    assert load_state(store, "r1") is None  # nothing written


def test_expired_lock_is_taken_over(store: LocalStore, ft: FakeTime) -> None:
    now = [1000.0]
    other = StoreRunLock(store, "r1", "other-host:42", lease_seconds=30, clock=lambda: now[0])
    assert other.try_acquire()
    mine = StoreRunLock(store, "r1", "me", lease_seconds=30, clock=lambda: now[0])
    assert not mine.try_acquire()
    now[0] += 31  # the other holder stopped renewing
    assert (mine.try_acquire() and mine.current_holder() is None) or mine.current_holder() != "other-host:42"
    with pytest.raises(BackendError, match="lost the lock"):
        other.renew()


def test_stall_is_reported_and_restarted(store: LocalStore, ft: FakeTime) -> None:
    events: list[dict[str, Any]] = []
    stage = {"name": "a", "stall_seconds": 30, "restart_on_stall": True, "retry": RETRY}
    _, backend, ctl = make(store, ft, [stage], {"a": [HANG, OK]}, events)
    backend.run_seconds = 20  # a healthy attempt ends before the stall limit
    state = ctl.run()
    a = state.stages["a"]
    assert a.state == "succeeded" and len(a.attempts) == 2
    assert a.attempts[0].reason == "Stalled" and a.attempts[0].failure == "app"
    assert backend.cancels == [AttemptRef("r1", "a", 1, state.run_id or "")]
    assert any(e["event"] == "stage_stalled" for e in events)


def test_stall_without_restart_is_flagged_and_cleared_by_progress(store: LocalStore, ft: FakeTime) -> None:
    _pipeline, backend, ctl = make(store, ft, [{"name": "a", "stall_seconds": 20}])
    backend.run_seconds = 100
    seen: list[bool] = []

    def watch(ref: AttemptRef) -> None:
        st = ctl.state.stages["a"]
        seen.append(st.stalled)
        if backend.elapsed.get(ref, 0) >= 60:  # the workload makes progress again
            done = int(backend.elapsed[ref])
            store.put("runs/r1/a/progress.json", json.dumps({"done": done, "total": 100}).encode())

    backend.before_wait = watch
    state = ctl.run()
    assert True in seen and seen[-1] is False  # flagged, then cleared by progress
    assert state.stages["a"].state == "succeeded"
    assert state.stages["a"].stalled is False and backend.cancels == []


def test_cancel_request_stops_retries_and_blocks_dependants(store: LocalStore, ft: FakeTime) -> None:
    stages = [{"name": "a", "retry": RETRY}, {"name": "b", "depends": ["a"]}]
    _, backend, ctl = make(store, ft, stages, {"a": [HANG]})

    def cancel_soon(ref: AttemptRef) -> None:
        if backend.elapsed.get(ref, 0) >= 20:
            request_cancel(store, "r1", "a")

    backend.before_wait = cancel_soon
    state = ctl.run()
    assert state.stages["a"].state == "cancelled" and state.status == "cancelled"
    assert state.stages["b"].state == "blocked"
    assert backend.cancels == [AttemptRef("r1", "a", 1, state.run_id or "")] and backend.submits == [("a", 1)]


def test_submit_error_is_permanent(store: LocalStore, ft: FakeTime) -> None:
    _pipeline, backend, ctl = make(store, ft, [{"name": "a", "retry": RETRY}])

    def refuse(*args: object) -> AttemptRef:
        raise BackendError("pytorchjobs.kubeflow.org is forbidden")

    backend.submit = refuse  # type: ignore[method-assign]
    state = ctl.run()
    a = state.stages["a"]
    assert a.state == "failed" and "forbidden" in (a.cause or "") and a.attempts[0].failure == "permanent"


def test_submit_one_stage_detached_then_follow(store: LocalStore, ft: FakeTime) -> None:
    _pipeline, backend, ctl = make(store, ft, [{"name": "a"}, {"name": "b", "depends": ["a"]}])
    state = ctl.submit("b", detach=True)
    assert backend.submits == [("b", 1)] and state.stages["b"].state == "running"
    state = ctl.submit("b")  # follows: adopts attempt 1
    assert backend.submits == [("b", 1)] and state.stages["b"].state == "succeeded"
    store.put("runs/r1/b/done/shard-000000.json", b"{}")
    store.put("runs/r1/b/report.json", b"{}")
    store.put("runs/r1/b/attempts/1/logs/rank-0.log", b"kept")
    state = ctl.submit("b", from_scratch=True)
    assert backend.submits == [("b", 1), ("b", 2)]
    left = list(store.list("runs/r1/b/"))
    assert "runs/r1/b/attempts/1/logs/rank-0.log" in left  # history kept
    assert "runs/r1/b/done/shard-000000.json" not in left  # the old attempt's markers are gone
    assert StageResults(store, "r1", "b").read_report() == {"shards": 0, "attempt": 2}


def test_lost_lock_stops_the_controller_but_not_the_attempts(store: LocalStore, ft: FakeTime) -> None:
    pipeline = make_pipeline(str(store.root), [{"name": "a"}])
    backend = FakeBackend(store=store, time=ft, script={"a": [HANG]})
    stolen = threading.Event()

    def slow_wait(ref: AttemptRef) -> None:
        time.sleep(0.05)  # real time passes so the heartbeat runs
        if not stolen.is_set() and backend.elapsed.get(ref, 0) > 0:
            thief = StoreRunLock(store, "r1", "thief:1", lease_seconds=60)
            store.put("runs/r1/lock", json.dumps({"holder": "thief:1", "token": thief.token,
                                                  "expires_at": time.time() + 60}).encode())
            stolen.set()

    backend.before_wait = slow_wait
    ctl = Controller(pipeline, backend, store, clock=ft.clock, sleep=ft.sleep, lease_seconds=0.3)
    with pytest.raises(BackendError, match="lost the lock on run 'r1' to thief:1"):
        ctl.run()
    assert backend.cancels == []  # the new holder adopts the running attempt
    saved = load_state(store, "r1")
    assert saved is not None and saved.stages["a"].state == "running"
