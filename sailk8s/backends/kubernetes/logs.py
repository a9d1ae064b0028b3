"""Pod logs of an attempt: read, followed across dropped streams, archived to and read from the store."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import structlog
import urllib3.exceptions
from tenacity import RetryCallState, Retrying, stop_before_delay, wait_random_exponential

from sailk8s.backends.archive import archived_logs
from sailk8s.backends.base import AttemptRef
from sailk8s.backends.kubernetes.client import KubeClient, response_lines
from sailk8s.backends.kubernetes.errors import one_line
from sailk8s.backends.kubernetes.manifest import CONTAINER, LABEL_REPLICA_TYPE, label_selector, replica_rank
from sailk8s.errors import BackendError, SailError
from sailk8s.ledger.results import StageResults
from sailk8s.store.base import ObjectStore

log = structlog.get_logger(__name__)
Obj = dict[str, Any]

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
    """What a follow has printed: the line count and the newest second's (stamp, text) lines.

    A follow requests `timestamps=true`, so each line arrives as `<RFC3339Nano> <text>`. After a
    drop it re-opens the log at sinceTime = the newest second printed (the API server passes
    sinceTime on to the kubelet at second precision) and skips the lines of that second it
    printed already, matched as (timestamp, text) with multiplicity, so repeated lines survive.
    """

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


def stream_lines(resp: Any, pod: str) -> Iterator[str]:
    """Lines of a log response; a broken stream raises StreamBroke, and its socket is closed."""
    done = False
    try:
        yield from response_lines(resp)
        done = True
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise StreamBroke(pod, one_line(err)) from None
    finally:
        # An unfinished body must not go back to the connection pool: close the socket.
        if done:
            resp.release_conn()
        else:
            resp.close()


def ranked_pods(pods: list[Obj]) -> list[tuple[int, str]]:
    """(node rank, pod name) of an attempt's pods, rank 0 first."""
    labels = [(p.get("metadata") or {}).get("labels") or {} for p in pods]
    has_master = any(str(lb.get(LABEL_REPLICA_TYPE, "")).lower() == "master" for lb in labels)
    return sorted(
        (replica_rank(lb, has_master), str(p["metadata"]["name"])) for lb, p in zip(labels, pods, strict=True)
    )


class PodLogs:
    """The logs of an attempt's pods through the client, and their archive in the store."""

    def __init__(self, client: KubeClient, store: ObjectStore | None, container: str = CONTAINER) -> None:
        self.client = client
        self.store = store
        self.container = container  # the training container: pytorch (PyTorchJob) or node (TrainJob)

    def read(self, ns: str, pod: str) -> Iterator[str]:
        """The pod's whole current log, line by line."""
        resp, _ = self.client.open_log(ns, pod, self.container)
        if resp is not None:
            yield from stream_lines(resp, pod)

    def follow(self, ref: AttemptRef, ns: str, pod: str, rank: int) -> Iterator[str]:
        """Follow a pod log across dropped streams, each line once, until the container ends.

        A broken stream is re-opened at sinceTime (the last second printed) and the replayed
        lines are skipped; reconnects back off and give up after retry_seconds without a new
        line. A pod deleted meanwhile ends in the archived log (the lines not printed yet).
        """
        cursor = LogCursor()
        backoff = Backoff(self.client.retry_seconds)
        first = True
        while True:
            opened = time.monotonic()
            try:
                resp, status = self.client.open_log(
                    ns,
                    pod,
                    self.container,
                    follow=True,
                    since_time=cursor.since_time(),
                    deadline_s=backoff.remaining(),
                )
            except BackendError as err:
                if first:
                    raise
                raise BackendError(
                    f"lost the log stream of pod {pod!r} after {cursor.printed} line(s) "
                    f"and could not reconnect: {err}"
                ) from None
            if resp is None:
                if not first and cursor.clean_end:
                    return  # the last stream ended cleanly: nothing was missed
                if status == 404:  # the pod is gone: the rest is in the archive
                    yield from cursor.skip_printed(self.archived(ref, rank))
                else:
                    log.warning("pod log unavailable: its container is not running", pod=pod)
                return
            first = False
            cursor.reconnect()
            new = 0
            broke: StreamBroke | None = None
            try:
                for raw in stream_lines(resp, pod):
                    line = cursor.accept(raw)
                    if line is not None:
                        new += 1
                        yield line
            except StreamBroke as err:
                broke = err
            cursor.clean_end = broke is None
            lasted = time.monotonic() - opened
            if new or lasted >= HEALTHY_STREAM_S:
                backoff.reset()
            if broke is None:
                # A follow ends cleanly when the container exits. A quick clean end that brought
                # nothing new is a re-read of a finished log (its status may lag): done. A longer
                # one is a server-side timeout on a running container: follow again.
                if new == 0 and lasted < HEALTHY_STREAM_S and cursor.reconnects > 1:
                    return
                continue
            wait_s = backoff.next_wait()
            if wait_s is None:
                raise BackendError(
                    f"the log stream of pod {pod!r} kept breaking ({broke.cause}): no new line "
                    f"after {backoff.failures} reconnect(s) in {backoff.elapsed():.1f}s"
                )
            log.warning(
                "pod log stream broke, reconnecting", pod=pod, wait_s=round(wait_s, 3), error=broke.cause
            )
            time.sleep(wait_s)

    def archived(self, ref: AttemptRef, rank: int | None) -> Iterator[str]:
        """The attempt's logs archived in the store, once its pods are gone."""
        if self.store is None:
            raise BackendError(f"no pods left for {ref.name!r} and no store configured to read archived logs")
        which = f" rank {rank}" if rank is not None else ""
        yield from archived_logs(
            self.store,
            ref,
            rank,
            missing=lambda where: (
                f"no{which} logs for {ref.name!r}: its pods are gone and nothing is archived under {where}"
            ),
        )

    def archive(self, ref: AttemptRef, ns: str, pods: list[Obj] | None = None) -> list[str]:
        """Copy each pod's log to the store's rank log of the attempt (best effort).

        `pods`: the attempt's pods when the caller has them already (saves a list request).
        """
        if self.store is None:
            return []
        written = []
        try:
            if pods is None:
                pods = self.client.list_pods(ns, label_selector(ref.run, ref.stage, ref.attempt))
            for rank, pod in ranked_pods(pods):
                text = "".join(line + "\n" for line in self.read(ns, pod))
                if text:
                    results = StageResults(self.store, ref.run, ref.stage)
                    written.append(results.archive_log(ref.attempt, rank, text.encode("utf-8")))
        except SailError as err:  # archiving must never turn a finished attempt into an error
            log.warning("could not archive pod logs", job=ref.name, error=str(err))
        return written
