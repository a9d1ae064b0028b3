"""Container logs of the fake cluster's pods, appendable by the operator and followable over HTTP."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class LogBuffer:
    """One container's log: timestamped lines, closed when the container terminates."""

    lines: list[tuple[str, bytes]] = field(default_factory=list)
    closed: bool = False


@dataclass
class StreamCut:
    """Cut matching follow streams after `after_lines` lines, `times` times (None: forever).

    abrupt: close the socket mid-body (a dying load balancer); else end the body cleanly
    while the container still runs (an API server or idle timeout ending the request).
    """

    after_lines: int = 0
    times: int | None = 1
    pod: str | None = None
    abrupt: bool = True
    hits: int = 0

    def matches(self, pod: str) -> bool:
        """True when this cut applies to a follow of `pod` and has uses left."""
        if self.times is not None and self.hits >= self.times:
            return False
        return self.pod is None or self.pod == pod


def parse_time(stamp: str) -> float:
    """RFC 3339 (fractional seconds up to nanoseconds allowed) -> epoch seconds."""
    text = stamp.strip().replace("z", "Z")
    if "." in text:  # Python parses at most microseconds: drop the extra digits of RFC3339Nano
        head, _, rest = text.partition(".")
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits) :]}"
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class PodLogs:
    """Logs keyed by (namespace, pod, container); `previous` keeps the last restart's log."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._current: dict[tuple[str, str, str], LogBuffer] = {}
        self._previous: dict[tuple[str, str, str], LogBuffer] = {}
        self._cuts: list[StreamCut] = []
        self.stopped = threading.Event()

    def cut_streams(
        self, times: int | None = 1, *, after_lines: int = 0, pod: str | None = None, abrupt: bool = True
    ) -> StreamCut:
        """Arm a cut of the next `times` follow streams (of `pod`, else any) after `after_lines` lines."""
        cut = StreamCut(after_lines, times, pod, abrupt)
        with self._cond:
            self._cuts.append(cut)
        return cut

    def take_cut(self, pod: str) -> StreamCut | None:
        """The first armed cut for a new follow of `pod`, with one use consumed."""
        with self._cond:
            for cut in self._cuts:
                if cut.matches(pod):
                    cut.hits += 1
                    return cut
        return None

    def start(self, namespace: str, pod: str, container: str) -> None:
        """Begin a fresh log for a container (the old one becomes `previous`)."""
        key = (namespace, pod, container)
        with self._cond:
            if key in self._current:
                self._previous[key] = self._current[key]
            self._current[key] = LogBuffer()
            self._cond.notify_all()

    def append(self, namespace: str, pod: str, container: str, data: bytes, timestamp: str) -> None:
        """Add output (split into lines) to a container's log."""
        key = (namespace, pod, container)
        with self._cond:
            buffer = self._current.setdefault(key, LogBuffer())
            for line in data.splitlines(keepends=True):
                buffer.lines.append((timestamp, line if line.endswith(b"\n") else line + b"\n"))
            self._cond.notify_all()

    def close(self, namespace: str, pod: str, container: str) -> None:
        """Mark a container's log finished: followers stop after the last line."""
        with self._cond:
            buffer = self._current.setdefault((namespace, pod, container), LogBuffer())
            buffer.closed = True
            self._cond.notify_all()

    def remove_pod(self, namespace: str, pod: str) -> None:
        """Forget every log of a deleted pod (and end its followers)."""
        with self._cond:
            for store in (self._current, self._previous):
                for key in [k for k in store if k[:2] == (namespace, pod)]:
                    store.pop(key).closed = True
            self._cond.notify_all()

    def has_log(self, namespace: str, pod: str, container: str, previous: bool = False) -> bool:
        """True when the container has started (or had a previous run)."""
        with self._cond:
            return (namespace, pod, container) in (self._previous if previous else self._current)

    def text(self, namespace: str, pod: str, container: str) -> str:
        """The whole current log as text (for tests)."""
        with self._cond:
            buffer = self._current.get((namespace, pod, container))
            return b"".join(line for _, line in buffer.lines).decode(errors="replace") if buffer else ""

    def read(
        self,
        namespace: str,
        pod: str,
        container: str,
        *,
        follow: bool = False,
        previous: bool = False,
        tail_lines: int | None = None,
        timestamps: bool = False,
        since: float | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[bytes]:
        """Yield log lines; with `follow`, keep yielding until the log closes or `stop` is set.

        since: epoch seconds; only lines stamped at or after it (sinceTime / sinceSeconds).
        """
        key = (namespace, pod, container)
        with self._cond:
            buffer = (self._previous if previous else self._current).get(key)
            if buffer is None:
                return
            start = max(0, len(buffer.lines) - tail_lines) if tail_lines is not None else 0
        position = start
        while True:
            with self._cond:
                chunk = buffer.lines[position:]
                position += len(chunk)
                finished = buffer.closed or not follow
                if not chunk and not finished:
                    if self.stopped.is_set() or (stop is not None and stop.is_set()):
                        return
                    self._cond.wait(0.2)
                    continue
            for stamp, line in chunk:
                if since is not None and parse_time(stamp) < since:
                    continue
                yield (stamp.encode() + b" " + line) if timestamps else line
            if finished and not chunk:
                return
            if finished:
                with self._cond:
                    if position >= len(buffer.lines):
                        return
