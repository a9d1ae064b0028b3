"""Progress per rank and summed by rank 0; reports per attempt with a stage-level copy."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from sailk8s.errors import StoreUnavailable
from sailk8s.ledger import ProgressReporter, StageResults


def Progress(store: Any, run: str, stage: str, **kw: Any) -> ProgressReporter:
    return ProgressReporter(StageResults(store, run, stage), **kw)


def read_progress(store: Any, run: str, stage: str, rank: int | None = None) -> Any:
    return StageResults(store, run, stage).read_progress(rank)


def read_report(store: Any, run: str, stage: str, attempt: int | None = None) -> Any:
    return StageResults(store, run, stage).read_report(attempt)


def write_report(store: Any, run: str, stage: str, attempt: int, report: dict[str, Any]) -> None:
    StageResults(store, run, stage).write_report(attempt, report)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rank_progress_rate_eta_and_throttle(store: Any) -> None:
    clock = Clock()
    p = Progress(store, "r1", "caption", rank=1, unit="samples", attempt=2, min_interval_s=5, clock=clock)
    first = p.update(0, 100)
    assert first is not None and first.rate == 0 and first.eta_seconds is None
    clock.now += 1
    assert p.update(10, 100) is None  # throttled
    clock.now += 9
    rec = p.update(50, 100)
    assert rec is not None and rec.rate == pytest.approx(5.0) and rec.eta_seconds == pytest.approx(10.0)
    stored = read_progress(store, "r1", "caption", rank=1)
    assert stored == rec and stored.unit == "samples" and stored.updated_at == 1010.0
    assert stored.fraction == 0.5
    assert read_progress(store, "r1", "caption") is None  # only rank 0 aggregates


def test_rank0_sums_ranks_of_this_attempt(store: Any) -> None:
    clock = Clock()
    ranks = [Progress(store, "r1", "filter", rank=r, attempt=3, min_interval_s=0, clock=clock)
             for r in (1, 2)]
    zero = Progress(store, "r1", "filter", rank=0, attempt=3, min_interval_s=0, clock=clock)
    stale = Progress(store, "r1", "filter", rank=7, attempt=2, min_interval_s=0, clock=clock)
    for p in (*ranks, zero, stale):
        p.update(0, 10)
    clock.now += 10
    stale.update(10, 10)
    ranks[0].update(4, 10)
    ranks[1].update(6, 10)
    zero.update(2, 10)
    agg = read_progress(store, "r1", "filter")
    assert agg is not None
    assert (agg.done, agg.total, agg.ranks, agg.attempt) == (12, 30, 3, 3)
    assert agg.rate == pytest.approx(1.2) and agg.eta_seconds == pytest.approx(18 / 1.2)


def test_progress_failures_are_logged_not_raised(store: Any) -> None:
    def broken(key: str, data: bytes) -> None:
        raise StoreUnavailable("store down")

    store.put = broken
    p = Progress(store, "r1", "sft", min_interval_s=0)
    with capture_logs() as logs:
        assert p.update(1, 2) is None
    assert logs[0]["event"] == "progress not written" and "store down" in logs[0]["error"]


def test_unreadable_progress_is_none(store: Any) -> None:
    store.put("runs/r1/sft/progress.json", b"[1, 2")
    assert read_progress(store, "r1", "sft") is None


def test_reports_per_attempt_and_latest_copy(store: Any) -> None:
    assert read_report(store, "r1", "filter") is None
    write_report(store, "r1", "filter", 1, {"in": 10, "out": 7, "dropped": {"nsfw": 3}})
    write_report(store, "r1", "filter", 2, {"in": 10, "out": 8, "dropped": {"nsfw": 2}})
    assert read_report(store, "r1", "filter") == {"in": 10, "out": 8, "dropped": {"nsfw": 2}, "attempt": 2}
    assert read_report(store, "r1", "filter", attempt=1)["out"] == 7
    assert store.exists("runs/r1/filter/attempts/1/report.json")
    store.put("runs/r1/filter/report.json", b"not json")
    assert read_report(store, "r1", "filter") is None
