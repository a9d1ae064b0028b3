"""The fake API server's streams: watches (events, bookmarks, faults) and pod logs (followed, cut)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from sailk8s.testing.apierrors import ApiError
from sailk8s.testing.history import Matcher
from sailk8s.testing.podlogs import parse_time
from sailk8s.testing.resources import Obj, ResourceType
from sailk8s.testing.verbs import table_view

if TYPE_CHECKING:
    from sailk8s.testing.apiserver import FakeKubernetes
    from sailk8s.testing.handler import ApiHandler


def serve_watch(
    h: ApiHandler, rtype: ResourceType, ns: str | None, query: dict[str, str], matcher: Matcher
) -> None:
    """A watch stream of chunked JSON events, with the request's watch faults, lag and bookmarks."""
    kube = h.kube
    since: int | None = None
    raw_rv = query.get("resourceVersion", "")
    if raw_rv not in ("", "0"):
        try:
            since = int(raw_rv)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"invalid resourceVersion {raw_rv!r}") from exc
    timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else kube.watch_timeout
    fault = kube.faults.take_watch_fault(h.record.path)
    lag = kube.faults.watch_lag(h.record.path)
    stop = kube._open_watch()
    bookmarks = query.get("allowWatchBookmarks", "").lower() == "true"
    as_table = "as=Table" in h.headers.get("Accept", "")  # kubectl get -w
    h.start_chunked("application/json")
    sent = 0
    try:
        events = kube.state.watch(rtype, ns, matcher, since, stop, timeout)
        # Check the fault before waiting for the next event, so after_events=0 acts at once.
        while fault is None or sent < fault.after_events:
            event = next(events, None)
            if event is None:
                break
            if lag:
                time.sleep(lag)
            if as_table and event["type"] != "ERROR":
                event = {"type": event["type"], "object": table_view(h, rtype, [event["object"]], query)}
            h.chunk(json.dumps(event).encode() + b"\n")
            sent += 1
        if fault is not None and fault.action == "drop" and fault.abrupt:
            return h.drop()
        if fault is not None and fault.action == "gone":
            rv = kube.state.resource_version
            gone = ApiError(410, "Expired", f"too old resource version: {since or 0} ({rv})").status()
            h.chunk(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
        elif bookmarks and fault is None:
            bookmark = {
                "kind": rtype.kind,
                "apiVersion": rtype.api_version,
                "metadata": {"resourceVersion": str(kube.state.resource_version)},
            }
            h.chunk(json.dumps({"type": "BOOKMARK", "object": bookmark}).encode() + b"\n")
        h.end_chunked()
    finally:
        kube._close_watch(stop)


def serve_logs(h: ApiHandler, ns: str, name: str, query: dict[str, str]) -> None:
    """A container log, whole or followed (chunked), with the pod's log cuts."""
    kube = h.kube
    pod_type = h.pod_type()
    pod = kube.state.get(pod_type, ns, name)
    containers = [c.get("name", "") for c in pod.get("spec", {}).get("containers") or []]
    container = query.get("container") or ""
    if not container:
        if len(containers) != 1:
            raise ApiError(
                400,
                "BadRequest",
                f"a container name must be specified for pod {name}, choose one of: {containers}",
            )
        container = containers[0]
    elif container not in containers:
        raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
    previous = query.get("previous", "").lower() == "true"
    if not kube.logs.has_log(ns, name, container, previous):
        if previous:
            raise ApiError(
                400,
                "BadRequest",
                f'previous terminated container "{container}" in pod "{name}" not found',
            )
        reason = _waiting_reason(pod, container)
        raise ApiError(
            400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start: {reason}'
        )
    follow = query.get("follow", "").lower() == "true"
    tail = int(query["tailLines"]) if query.get("tailLines") else None
    limit = int(query["limitBytes"]) if query.get("limitBytes") else None
    timestamps = query.get("timestamps", "").lower() == "true"
    lines = kube.logs.read(
        ns,
        name,
        container,
        follow=follow,
        previous=previous,
        tail_lines=tail,
        timestamps=timestamps,
        since=log_since(kube, query),
        stop=kube.state.stopped,
    )
    if not follow:
        data = b"".join(lines)
        return h.send_text(200, data[:limit] if limit is not None else data)
    cut = kube.logs.take_cut(name)
    h.start_chunked("text/plain; charset=utf-8")
    sent = count = 0
    # Check the cut before waiting for the next line, so after_lines=0 acts at once.
    while cut is None or count < cut.after_lines:
        line = next(lines, None)
        if line is None:
            break
        count += 1
        if limit is not None and sent + len(line) > limit:
            line = line[: limit - sent]
        h.chunk(line)
        sent += len(line)
        if limit is not None and sent >= limit:
            break
    if cut is not None and cut.abrupt:
        return h.drop()
    h.end_chunked()


def log_since(kube: FakeKubernetes, query: dict[str, str]) -> float | None:
    """Epoch seconds from sinceTime (RFC 3339) or sinceSeconds, as the API server validates them."""
    since_time, since_seconds = query.get("sinceTime"), query.get("sinceSeconds")
    if since_time and since_seconds:
        raise ApiError(422, "Invalid", "at most one of `sinceTime` or `sinceSeconds` may be specified")
    if since_time:
        try:
            return parse_time(since_time)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"invalid sinceTime {since_time!r}") from exc
    if since_seconds:
        if not since_seconds.isdigit() or int(since_seconds) < 1:
            raise ApiError(422, "Invalid", "sinceSeconds: Invalid value: must be greater than 0")
        return kube.clock.now() - int(since_seconds)
    return None


def _waiting_reason(pod: Obj, container: str) -> str:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == container:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason"):
                return str(waiting["reason"])
    return "ContainerCreating"
