"""The fake cluster's change history: committed events by resourceVersion, bounded like etcd's,
and what a filtered watcher sees of each."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

from sailk8s.testing.apierrors import ApiError
from sailk8s.testing.resources import Obj, ResourceType

Matcher = Callable[[Obj], bool]


@dataclass(frozen=True)
class WatchEvent:
    """One committed change: its resourceVersion, type and the object before and after."""

    rv: int
    rtype: ResourceType
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj
    old: Obj | None


class ChangeHistory:
    """Committed changes, oldest first; a watch may resume from any resourceVersion >= `floor`.

    Not locked: the ClusterState that owns it holds its lock around every call.
    """

    def __init__(self, limit: int = 10000) -> None:
        self.limit = limit
        self.floor = 0  # the oldest resourceVersion a watch may resume from
        self._events: list[WatchEvent] = []

    def record(self, event: WatchEvent) -> None:
        """Keep `event`; past the limit the older half is dropped and the floor rises."""
        self._events.append(event)
        if len(self._events) > self.limit:
            dropped = len(self._events) // 2
            self.floor = self._events[dropped - 1].rv
            del self._events[:dropped]

    def compact(self, rv: int) -> None:
        """Forget everything up to `rv`, like etcd compaction: older watches get 410 Gone."""
        self._events.clear()
        self.floor = rv

    def after(self, rv: int) -> list[WatchEvent]:
        """The events committed after resourceVersion `rv`."""
        return self._events[bisect.bisect_right(self._events, rv, key=lambda e: e.rv) :]


def gone_event(since: int, floor: int) -> Obj:
    """The ERROR event a watch gets when its resourceVersion was compacted away."""
    status = ApiError(410, "Expired", f"too old resource version: {since} ({floor})").status()
    return {"type": "ERROR", "object": status}


def translate(event: WatchEvent, rtype: ResourceType, namespace: str | None, matcher: Matcher) -> Obj | None:
    """What a filtered watcher sees of one change (an object leaving the filter is DELETED)."""
    if event.rtype != rtype:
        return None
    ns = event.obj["metadata"].get("namespace", "")
    if namespace and ns != namespace:
        return None
    now_matches = matcher(event.obj)
    if event.type == "MODIFIED":
        was_matching = event.old is not None and matcher(event.old)
        if now_matches and not was_matching:
            return {"type": "ADDED", "object": event.obj}
        if was_matching and not now_matches:
            return {"type": "DELETED", "object": event.obj}
    if not now_matches:
        return None
    return {"type": event.type, "object": event.obj}
