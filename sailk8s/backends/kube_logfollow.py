"""Resuming a followed pod log: where the follow is (to skip replayed lines) and reconnect backoff.

A follow requests `timestamps=true`, so each line arrives as `<RFC3339Nano> <text>`. After a
drop it re-opens the log at sinceTime = the newest second printed (the API server passes
sinceTime on to the kubelet at second precision) and skips the lines of that second it
printed already, matched as (timestamp, text) with multiplicity, so repeated lines survive.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator

from tenacity import RetryCallState, Retrying, stop_before_delay, wait_random_exponential

from sailk8s.errors import BackendError

# A stream that lived this long was healthy: its end does not count against the retry budget.
HEALTHY_STREAM_S = 5.0


class StreamBroke(BackendError):
    """A log stream that ended mid-body (connection reset, truncated chunk...)."""

    def __init__(self, pod: str, cause: str) -> None:
        super().__init__(f"the log stream of pod {pod!r} broke: {cause}")
        self.cause = cause


def split_stamp(raw: str) -> tuple[str | None, str]:
    """(`2026-01-02T03:04:05.123Z`, text) from a timestamped log line; (None, raw) without a stamp."""
    stamp, sep, text = raw.partition(" ")
    ok = sep and len(stamp) >= 20 and stamp[4] == "-" and stamp[10] == "T" and stamp.endswith("Z")
    return (stamp, text) if ok else (None, raw)


class LogCursor:
    """What a follow has printed: the line count and the newest second's (stamp, text) lines."""

    def __init__(self) -> None:
        self.printed = 0
        self.reconnects = 0  # streams opened so far
        self.clean_end = False  # the last stream ended with a complete body
        self._second: str | None = None  # `YYYY-MM-DDTHH:MM:SS` of the newest line printed
        self._window: Counter[tuple[str, str]] = Counter()
        self._by_count = False  # some line had no stamp: resume by line count instead
        self._replay: Counter[tuple[str, str]] = Counter()
        self._skip = 0

    def since_time(self) -> str | None:
        """The sinceTime for the next stream; None: read from the start (and skip by count)."""
        if self._by_count or self._second is None:
            return None
        return self._second + "Z"

    def reconnect(self) -> None:
        """A new stream opens: expect a replay of what was printed since since_time()."""
        self.reconnects += 1
        if self.since_time() is None:
            self._skip, self._replay = self.printed, Counter()
        else:
            self._skip, self._replay = 0, Counter(self._window)

    def accept(self, raw: str) -> str | None:
        """The line's text when it is new; None when the stream replays a printed line."""
        if self._skip:
            self._skip -= 1
            return None
        stamp, text = split_stamp(raw)
        if stamp is None:
            self._by_count = True
            self.printed += 1
            return raw
        key = (stamp, text)
        if self._replay[key] > 0:
            self._replay[key] -= 1
            return None
        second = stamp[:19]
        if self._second is None or second > self._second:
            self._second = second
            self._window.clear()
        if second == self._second:
            self._window[key] += 1
        self.printed += 1
        return text

    def skip_printed(self, lines: Iterable[str]) -> Iterator[str]:
        """The lines of a whole (untimestamped) log after those already printed."""
        for index, line in enumerate(lines):
            if index >= self.printed:
                yield line


class Backoff:
    """Random exponential waits between reconnects (tenacity's), bounded in time since the
    last progress: `next_wait` answers None once `budget_s` would be exceeded."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = max(budget_s, 0.0)
        self._retrying = Retrying()
        self._wait = wait_random_exponential(multiplier=0.2, max=5.0)
        self._stop = stop_before_delay(self.budget_s)
        self.reset()

    def reset(self) -> None:
        """Progress was made: start a fresh budget."""
        self._state = RetryCallState(self._retrying, None, (), {})
        self.failures = 0

    def elapsed(self) -> float:
        """Seconds since the budget started."""
        return time.monotonic() - self._state.start_time

    def remaining(self) -> float:
        """Seconds left of the budget (for the reconnect request's own retries)."""
        return max(0.0, self.budget_s - self.elapsed())

    def next_wait(self) -> float | None:
        """Record one more failure; the seconds to wait before retrying, None to give up."""
        self.failures += 1
        state = self._state
        state.attempt_number = self.failures
        state.outcome_timestamp = time.monotonic()
        state.upcoming_sleep = self._wait(state)
        if self._stop(state):
            return None
        return state.upcoming_sleep
