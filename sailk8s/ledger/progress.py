"""progress.json (per rank and summed by rank 0) and report.json (per attempt + stage copy)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sailk8s.errors import ObjectNotFound, StoreError
from sailk8s.ledger.paths import StagePaths
from sailk8s.store.base import ObjectStore

log = structlog.get_logger(__name__)


class ProgressRecord(BaseModel):
    """What progress.json (and progress/rank-<r>.json) holds."""

    model_config = ConfigDict(extra="allow", frozen=True)

    done: float = Field(ge=0)
    total: float = Field(ge=0)
    unit: str = "shards"
    rate: float = Field(ge=0, default=0.0)  # units per second
    eta_seconds: float | None = None
    updated_at: float  # epoch seconds
    ranks: int | None = None  # in the aggregate: how many rank files were summed
    attempt: int | None = None  # the attempt that wrote it (rank files of older attempts are ignored)

    @property
    def fraction(self) -> float | None:
        """done/total in 0..1, None when the total is unknown (0)."""
        return min(1.0, self.done / self.total) if self.total else None


def eta(done: float, total: float, rate: float) -> float | None:
    """Seconds left at the current rate; None when it cannot be told."""
    if rate <= 0 or total <= 0:
        return None
    return max(0.0, (total - done) / rate)


class Progress:
    """Progress of one rank; rank 0 also writes the stage-level sum.

    Writes are throttled to one per `min_interval_s` unless forced, so callers can report
    after every batch. The rate is measured since this object was created (this attempt).
    """

    def __init__(self, store: ObjectStore, run: str, stage: str, *, rank: int = 0, unit: str = "shards",
                 attempt: int | None = None, min_interval_s: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.attempt = attempt
        self.paths = StagePaths(run, stage)
        self.rank = rank
        self.unit = unit
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._started = clock()
        self._start_done: float | None = None
        self._last_write = float("-inf")

    def update(self, done: float, total: float, *, force: bool = False,
               **extra: Any) -> ProgressRecord | None:
        """Record this rank's counters (written if due or forced); rank 0 then writes the sum.

        Progress is advisory: a store failure is logged, never raised. Returns what was written.
        """
        now = self._clock()
        if self._start_done is None:
            self._start_done = done  # work done by earlier attempts does not count for the rate
        if not force and now - self._last_write < self.min_interval_s:
            return None
        elapsed = now - self._started
        rate = (done - self._start_done) / elapsed if elapsed > 0 else 0.0
        record = ProgressRecord(done=done, total=total, unit=self.unit, rate=max(rate, 0.0),
                                eta_seconds=eta(done, total, rate), updated_at=now, attempt=self.attempt,
                                **extra)
        try:
            self.store.put(self.paths.rank_progress(self.rank), record.model_dump_json().encode())
            self._last_write = now
            if self.rank == 0:
                aggregate(self.store, self.paths, unit=self.unit, attempt=self.attempt, now=now)
        except StoreError as err:
            log.warning("progress not written", stage=self.paths.stage, rank=self.rank, error=str(err))
            return None
        return record


def aggregate(store: ObjectStore, paths: StagePaths, *, unit: str = "shards", attempt: int | None = None,
              now: float | None = None) -> ProgressRecord:
    """Sum the rank progress files (of `attempt`, when given) into progress.json.

    One listing plus one read per rank file.
    """
    done = total = rate = 0.0
    ranks = 0
    for key in store.list(paths.progress_prefix):
        rec = _read(store, key)
        if rec is None or (attempt is not None and rec.attempt != attempt):
            continue
        ranks += 1
        done += rec.done
        total += rec.total
        rate += rec.rate
    record = ProgressRecord(done=done, total=total, unit=unit, rate=rate, eta_seconds=eta(done, total, rate),
                            updated_at=time.time() if now is None else now, ranks=ranks,
                            attempt=attempt)
    store.put(paths.progress, record.model_dump_json().encode())
    return record


def read_progress(store: ObjectStore, run: str, stage: str, rank: int | None = None) -> ProgressRecord | None:
    """The stage's progress.json (or one rank's file); None when absent or unreadable."""
    paths = StagePaths(run, stage)
    return _read(store, paths.progress if rank is None else paths.rank_progress(rank))


def _read(store: ObjectStore, key: str) -> ProgressRecord | None:
    try:
        return ProgressRecord.model_validate_json(store.get(key))
    except ObjectNotFound:
        return None
    except ValidationError as err:
        log.warning("ignoring unreadable progress file", key=key, error=str(err).splitlines()[0])
        return None


def write_report(store: ObjectStore, run: str, stage: str, attempt: int, report: Mapping[str, Any]) -> None:
    """Write the attempt's report.json, then the stage-level copy (the latest attempt's)."""
    paths = StagePaths(run, stage)
    data = json.dumps({**report, "attempt": attempt}, sort_keys=True, indent=1, default=str).encode()
    store.put(paths.attempt_report(attempt), data)
    store.put(paths.report, data)


def read_report(store: ObjectStore, run: str, stage: str,
                attempt: int | None = None) -> dict[str, Any] | None:
    """The stage's latest report (or one attempt's); None when absent or not a JSON object."""
    paths = StagePaths(run, stage)
    key = paths.report if attempt is None else paths.attempt_report(attempt)
    try:
        data = json.loads(store.get(key))
    except ObjectNotFound:
        return None
    except ValueError:
        log.warning("ignoring unreadable report", key=key)
        return None
    return data if isinstance(data, dict) else None
