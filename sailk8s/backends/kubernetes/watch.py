"""A list+watch cache of the objects one list call returns, kept current on a background thread."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
import urllib3.exceptions

from sailk8s.backends.kubernetes.client import Listing, response_lines
from sailk8s.backends.kubernetes.errors import (
    KubeApiError,
    call_api,
    final_error,
    gave_up_error,
    is_transient,
)
from sailk8s.errors import BackendError

log = structlog.get_logger(__name__)
Obj = dict[str, Any]


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class ObjectWatch:
    """Objects of one list call by name, current through a watch; `on_change` fires on each update.

    The watch resumes from the last resourceVersion after a dropped connection, lists again on
    410 Gone and asks for bookmarks; a failure that outlasts the retry budget is kept in `error`
    for the reader.
    """

    def __init__(
        self,
        listing: Listing,
        *,
        host: str,
        deadline_s: float,
        on_change: Callable[[], None],
        watch_timeout: int = 3600,
        on_event: Callable[[str, Obj], None] | None = None,
    ) -> None:
        self._listing = listing
        self._call = listing.call
        self._host = host
        self._deadline_s = deadline_s
        self._on_change = on_change
        # Sees every event in order, even ones a later event overwrites before the reader looks.
        self._on_event = on_event
        self._watch_timeout = watch_timeout
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._resp: Any = None
        self._objects: dict[str, Obj] = {}
        self.resource_version: str | None = None
        self.listed = threading.Event()
        self.error: BackendError | None = None
        self.relists = 0
        self.reconnects = 0
        self._thread = threading.Thread(target=self._run, name=f"watch-{listing.call.resource}", daemon=True)

    def start(self) -> ObjectWatch:
        self._thread.start()
        return self

    def stop(self, join_s: float = 2.0) -> None:
        """End the watch: close the open stream so the thread leaves its blocking read."""
        self._stop.set()
        resp = self._resp
        if resp is not None:
            # Already closed, or an older urllib3: then the thread ends at the watch timeout.
            with contextlib.suppress(Exception):
                resp.shutdown()
        self._thread.join(join_s)

    def objects(self) -> list[Obj]:
        with self._lock:
            return list(self._objects.values())

    def _relist(self) -> None:
        resp = call_api(
            self._listing.list_response,
            self._call,
            host=self._host,
            deadline_s=self._deadline_s,
        )
        data = json.loads(resp.data)
        with self._lock:
            self._objects = {o["metadata"]["name"]: o for o in data.get("items") or []}
            self.resource_version = (data.get("metadata") or {}).get("resourceVersion")
        self.relists += 1
        self.listed.set()
        self._on_change()

    def _stream(self) -> None:
        resp = self._listing.watch_response(self.resource_version, self._watch_timeout)
        self._resp = resp
        done = False
        try:
            if self._stop.is_set():  # stop() ran before it could see this stream: end it here
                return
            for line in response_lines(resp):
                if self._stop.is_set():
                    return
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise KubeApiError(obj.get("code") or 500, obj.get("reason"))
                meta = obj.get("metadata") or {}
                with self._lock:
                    self.resource_version = meta.get("resourceVersion") or self.resource_version
                    if kind == "BOOKMARK":
                        continue
                    if kind == "DELETED":
                        self._objects.pop(str(meta.get("name")), None)
                    else:
                        self._objects[str(meta.get("name"))] = obj
                if self._on_event is not None:
                    self._on_event(str(kind), obj)
                self._on_change()
            done = True
        finally:
            self._resp = None
            # An unfinished body must not go back to the connection pool: close the socket.
            if done:
                resp.release_conn()
            else:
                resp.close()

    def _run(self) -> None:
        failing_since: float | None = None
        last: BaseException = RuntimeError("no error")
        backoff = 0.1
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self._relist()
                if self._stop.is_set():
                    return
                self._stream()
                failing_since, backoff = None, 0.1
                if not self._stop.is_set():
                    self.reconnects += 1  # the server ended the watch (timeout): resume
            except _Gone:
                log.info("watch expired (410 Gone), listing again", call=self._call.describe())
                self.resource_version = None
            except BackendError as err:
                self._fail(err)
                return
            except KubeApiError as err:
                if err.status == 410:
                    self.resource_version = None
                    continue
                if not is_transient(err):
                    self._fail(final_error(err, self._call, self._host))
                    return
                failing_since = failing_since or time.monotonic()
                last = err
            except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, ValueError) as err:
                if self._stop.is_set():
                    return
                log.info("watch dropped, reconnecting", call=self._call.describe(), error=type(err).__name__)
                self.reconnects += 1
                failing_since = failing_since or time.monotonic()
                last = err
            if failing_since is not None:
                if time.monotonic() - failing_since > self._deadline_s:
                    self._fail(
                        gave_up_error(
                            last, self._call, self._host, self.reconnects, time.monotonic() - failing_since
                        )
                    )
                    return
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _fail(self, err: BackendError) -> None:
        self.error = err
        self._on_change()
