"""Request and watch faults the fake API server injects on demand."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field


@dataclass
class RequestFault:
    """Answer matching requests with `status` instead of serving them, `times` times (None: forever)."""

    status: int
    times: int | None = 1
    method: str | None = None
    path: str | None = None  # regular expression searched in the request path
    watch: bool | None = None  # only watch requests (True), only non-watch (False), or both
    reason: str | None = None
    message: str | None = None
    retry_after: int | None = None
    hits: int = 0

    def matches(self, method: str, path: str, is_watch: bool) -> bool:
        """True when this fault applies to the request and has uses left."""
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method and self.method.upper() != method.upper():
            return False
        if self.watch is not None and self.watch != is_watch:
            return False
        return not self.path or re.search(self.path, path) is not None


@dataclass
class WatchFault:
    """Break matching watch streams after `after_events` events: drop them or answer 410 Gone."""

    action: str  # "drop" or "gone"
    times: int | None = 1
    path: str | None = None
    after_events: int = 0
    abrupt: bool = True  # drop: close the socket mid-stream instead of ending the chunked body
    hits: int = 0

    def matches(self, path: str) -> bool:
        """True when this fault applies to a watch on `path` and has uses left."""
        if self.times is not None and self.hits >= self.times:
            return False
        return not self.path or re.search(self.path, path) is not None


@dataclass
class WatchLag:
    """Delay every event of matching watch streams: one watch running behind another."""

    seconds: float
    path: str | None = None

    def matches(self, path: str) -> bool:
        """True when this lag applies to a watch on `path`."""
        return not self.path or re.search(self.path, path) is not None


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def default_reason(status: int) -> str:
    """The Status reason the real server uses for an HTTP code."""
    return _REASONS.get(status, "InternalError")


@dataclass
class FaultPlan:
    """The faults armed on a server; methods arm one and return it so tests can read `.hits`."""

    requests: list[RequestFault] = field(default_factory=list)
    watches: list[WatchFault] = field(default_factory=list)
    lags: list[WatchLag] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(
        self,
        status: int = 503,
        times: int | None = 1,
        *,
        method: str | None = None,
        path: str | None = None,
        watch: bool | None = None,
        reason: str | None = None,
        message: str | None = None,
        retry_after: int | None = None,
    ) -> RequestFault:
        """Answer the next `times` matching requests with `status` (5xx/429 bursts, 403, ...)."""
        fault = RequestFault(status, times, method, path, watch, reason, message, retry_after)
        with self._lock:
            self.requests.append(fault)
        return fault

    def throttle(self, times: int = 3, *, path: str | None = None, retry_after: int = 1) -> RequestFault:
        """429 TooManyRequests with Retry-After on the next `times` matching requests."""
        return self.fail(
            429,
            times,
            path=path,
            retry_after=retry_after,
            message="Too many requests, please try again later.",
        )

    def conflict_on_create(self, times: int = 1, *, path: str | None = None) -> RequestFault:
        """409 AlreadyExists on the next `times` matching POSTs (another writer won the race)."""
        return self.fail(409, times, method="POST", path=path, reason="AlreadyExists")

    def drop_watch(
        self, times: int | None = 1, *, path: str | None = None, after_events: int = 0, abrupt: bool = True
    ) -> WatchFault:
        """Cut the next `times` matching watch streams after `after_events` events."""
        fault = WatchFault("drop", times, path, after_events, abrupt)
        with self._lock:
            self.watches.append(fault)
        return fault

    def expire_watch(
        self, times: int | None = 1, *, path: str | None = None, after_events: int = 0
    ) -> WatchFault:
        """Send a 410 Gone ERROR event on the next `times` matching watch streams."""
        fault = WatchFault("gone", times, path, after_events)
        with self._lock:
            self.watches.append(fault)
        return fault

    def lag_watch(self, seconds: float, *, path: str | None = None) -> WatchLag:
        """Send each event of matching watch streams `seconds` late (until cleared)."""
        lag = WatchLag(seconds, path)
        with self._lock:
            self.lags.append(lag)
        return lag

    def watch_lag(self, path: str) -> float:
        """Seconds by which each event of a watch on `path` is held back."""
        with self._lock:
            return sum(lag.seconds for lag in self.lags if lag.matches(path))

    def clear(self) -> None:
        """Disarm every fault."""
        with self._lock:
            self.requests.clear()
            self.watches.clear()
            self.lags.clear()

    def take_request_fault(self, method: str, path: str, is_watch: bool) -> RequestFault | None:
        """The first armed request fault for this request, with one use consumed."""
        with self._lock:
            for fault in self.requests:
                if fault.matches(method, path, is_watch):
                    fault.hits += 1
                    return fault
        return None

    def take_watch_fault(self, path: str) -> WatchFault | None:
        """The first armed watch fault for a watch on `path`, with one use consumed."""
        with self._lock:
            for fault in self.watches:
                if fault.matches(path):
                    fault.hits += 1
                    return fault
        return None
