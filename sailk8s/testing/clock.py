"""Clocks for the fake cluster: real time, or simulated time that runs faster than real."""

from __future__ import annotations

import datetime as dt
import threading
import time


class Clock:
    """Real wall-clock time; the base the simulated clock speeds up."""

    speed: float = 1.0

    def now(self) -> float:
        """Seconds since the epoch on this clock."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        """Sleep `seconds` of this clock's time."""
        if seconds > 0:
            time.sleep(seconds / self.speed)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait on an event for `seconds` of this clock's time; True when it was set."""
        return event.wait(max(0.0, seconds) / self.speed)

    def real_seconds(self, seconds: float) -> float:
        """Real seconds that `seconds` of this clock's time take."""
        return seconds / self.speed

    def timestamp(self) -> str:
        """RFC 3339 UTC timestamp with second precision, like metadata.creationTimestamp."""
        return iso(self.now())

    def micro_timestamp(self) -> str:
        """RFC 3339 UTC timestamp with microseconds, like Lease renewTime."""
        moment = dt.datetime.fromtimestamp(self.now(), tz=dt.UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SimulatedClock(Clock):
    """Time that runs `speed` times faster than real time (600: ten minutes per second).

    `advance(seconds)` jumps forward at once, for tests that need a deadline to pass now.
    """

    def __init__(self, speed: float = 60.0, start: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._origin = time.time() if start is None else start
        self._real_origin = time.monotonic()
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._origin + (time.monotonic() - self._real_origin) * self.speed + self._offset

    def advance(self, seconds: float) -> None:
        """Jump the clock forward (sleepers notice at their next wake-up)."""
        with self._lock:
            self._offset += seconds


def iso(epoch: float) -> str:
    """Epoch seconds -> `2026-01-02T03:04:05Z`."""
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
