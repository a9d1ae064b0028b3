"""One rank's progress reports: throttled, with the rate of this attempt, written through StageResults."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sailk8s.ledger.results import ProgressRecord, StageResults, eta


class ProgressReporter:
    """Progress of one rank; rank 0's write also updates the stage's record (StageResults).

    Writes are throttled to one per `min_interval_s` unless forced, so callers can report after
    every batch. The rate is measured since the first update (this attempt's own work).
    """

    def __init__(self, results: StageResults, *, rank: int = 0, unit: str = "shards",
                 attempt: int | None = None, min_interval_s: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.results, self.rank, self.unit, self.attempt = results, rank, unit, attempt
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._started = clock()
        self._start_done: float | None = None
        self._last_write = float("-inf")

    def update(self, done: float, total: float, *, force: bool = False,
               **extra: Any) -> ProgressRecord | None:
        """Record this rank's counters if due (or forced); returns what was written, else None."""
        now = self._clock()
        if self._start_done is None:
            self._start_done = done  # work done by earlier attempts does not count for the rate
        if not force and now - self._last_write < self.min_interval_s:
            return None
        elapsed = now - self._started
        rate = max((done - self._start_done) / elapsed if elapsed > 0 else 0.0, 0.0)
        fields = {"eta_seconds": eta(done, total, rate), **extra}
        record = ProgressRecord(done=done, total=total, unit=self.unit, rate=rate, updated_at=now,
                                attempt=self.attempt, **fields)
        if not self.results.write_progress(self.rank, record):
            return None
        self._last_write = now
        return record
