"""The fake cluster's objects: CRUD with server-set metadata, resourceVersions, watch history."""

from __future__ import annotations

import builtins
import copy
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator

from sailk8s.testing.apierrors import ApiError, not_found
from sailk8s.testing.clock import Clock
from sailk8s.testing.history import ChangeHistory, Matcher, WatchEvent, gone_event, translate
from sailk8s.testing.resources import Obj, ResourceType

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


Listener = Callable[[WatchEvent], None]


class ClusterState:
    """Objects by type/namespace/name, one resourceVersion counter and a bounded change history."""

    def __init__(self, clock: Clock, history: int = 10000) -> None:
        self.clock = clock
        self.cond = threading.Condition(threading.RLock())
        self._objects: dict[ResourceType, dict[tuple[str, str], Obj]] = {}
        self._history = ChangeHistory(history)
        self._rv = 0
        self._listeners: list[Listener] = []
        self.stopped = threading.Event()

    # -- bookkeeping --------------------------------------------------------------------------
    @property
    def resource_version(self) -> int:
        """The latest committed resourceVersion."""
        with self.cond:
            return self._rv

    @property
    def floor(self) -> int:
        """Watches from a resourceVersion older than this get 410 Gone."""
        with self.cond:
            return self._history.floor

    def compact(self) -> None:
        """Forget the change history, like etcd compaction: older watches get 410 Gone."""
        with self.cond:
            self._history.compact(self._rv)

    def subscribe(self, listener: Listener) -> None:
        """Call `listener` after every committed change (in the writer's thread)."""
        with self.cond:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        """Stop calling `listener`."""
        with self.cond:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _commit(self, rtype: ResourceType, kind: str, obj: Obj, old: Obj | None) -> WatchEvent:
        """Assign the next resourceVersion, record the event and wake watchers (lock held)."""
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        event = WatchEvent(self._rv, rtype, kind, copy.deepcopy(obj), old)
        self._history.record(event)
        self.cond.notify_all()
        return event

    def _notify(self, events: list[WatchEvent]) -> None:
        """Run listeners outside the lock so they may write back."""
        with self.cond:
            listeners = list(self._listeners)
        for event in events:
            for listener in listeners:
                listener(event)

    def _bucket(self, rtype: ResourceType) -> dict[tuple[str, str], Obj]:
        return self._objects.setdefault(rtype, {})

    def _key(self, rtype: ResourceType, namespace: str | None, name: str) -> tuple[str, str]:
        return ((namespace or "") if rtype.namespaced else "", name)

    def _require_namespace(self, rtype: ResourceType, namespace: str | None) -> None:
        if not rtype.namespaced:
            return
        if not namespace:
            raise ApiError(400, "BadRequest", "the namespace of the object must be set")
        for ns_type, bucket in self._objects.items():
            if ns_type.plural == "namespaces" and not ns_type.group and ("", namespace) in bucket:
                return
        raise ApiError(
            404, "NotFound", f'namespaces "{namespace}" not found', {"name": namespace, "kind": "namespaces"}
        )

    # -- reads --------------------------------------------------------------------------------
    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        """A copy of one object, or 404."""
        with self.cond:
            obj = self._bucket(rtype).get(self._key(rtype, namespace, name))
            if obj is None:
                raise not_found(rtype, name)
            return copy.deepcopy(obj)

    def find(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj | None:
        """A copy of one object, or None."""
        try:
            return self.get(rtype, namespace, name)
        except ApiError:
            return None

    def list(
        self, rtype: ResourceType, namespace: str | None = None, matcher: Matcher | None = None
    ) -> tuple[list[Obj], int]:
        """Copies of matching objects sorted by namespace/name, and the list resourceVersion."""
        with self.cond:
            items = [
                copy.deepcopy(obj)
                for (ns, _), obj in sorted(self._bucket(rtype).items())
                if (not namespace or ns == namespace) and (matcher is None or matcher(obj))
            ]
            return items, self._rv

    # -- writes -------------------------------------------------------------------------------
    def create(self, rtype: ResourceType, namespace: str | None, body: Obj, *, dry_run: bool = False) -> Obj:
        """Store a new object with server-set metadata; 409 AlreadyExists when the name is taken."""
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        if rtype.namespaced:
            namespace = meta.get("namespace") or namespace
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        name = meta.get("name")
        if not name and meta.get("generateName"):
            name = meta["generateName"] + uuid.uuid4().hex[:5]
            meta["name"] = name
        if not name:
            raise ApiError(
                422,
                "Invalid",
                f"{rtype.kind} is invalid: metadata.name: Required value: name or generateName is required",
                {"kind": rtype.kind},
            )
        if len(name) > 253 or not _NAME_RE.match(name):
            raise ApiError(
                422,
                "Invalid",
                f'{rtype.kind} "{name}" is invalid: metadata.name: Invalid value: '
                f'"{name}": a lowercase RFC 1123 subdomain must consist of lower '
                "case alphanumeric characters, '-' or '.'",
                {"name": name, "kind": rtype.kind},
            )
        obj["apiVersion"] = rtype.api_version
        obj["kind"] = rtype.kind
        with self.cond:
            self._require_namespace(rtype, namespace)
            key = self._key(rtype, namespace, name)
            if key in self._bucket(rtype):
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{rtype.qualified} "{name}" already exists',
                    {"name": name, "group": rtype.group, "kind": rtype.plural},
                )
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = self.clock.timestamp()
            meta["generation"] = 1
            meta.pop("deletionTimestamp", None)
            if rtype.kind == "Pod":
                obj.setdefault("status", {}).setdefault("phase", "Pending")
            elif rtype.kind == "Namespace":
                obj.setdefault("status", {"phase": "Active"})
            if dry_run:
                meta["resourceVersion"] = str(self._rv)
                return obj
            self._bucket(rtype)[key] = obj
            event = self._commit(rtype, "ADDED", obj, None)
        self._notify([event])
        return copy.deepcopy(obj)

    def replace(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: Obj,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> Obj:
        """PUT: replace an object (or only its status), checking resourceVersion preconditions."""
        with self.cond:
            key = self._key(rtype, namespace, name)
            current = self._bucket(rtype).get(key)
            if current is None:
                raise not_found(rtype, name)
            meta = body.get("metadata") or {}
            if meta.get("name") not in (None, name):
                raise ApiError(
                    400,
                    "BadRequest",
                    f"the name of the object ({meta.get('name')}) does not "
                    f"match the name on the URL ({name})",
                )
            wanted_rv = meta.get("resourceVersion")
            if wanted_rv and str(wanted_rv) != current["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {rtype.qualified} "{name}": the object '
                    "has been modified; please apply your changes to the latest version and "
                    "try again",
                    {"name": name, "group": rtype.group, "kind": rtype.plural},
                )
            obj = self._merge_update(rtype, current, copy.deepcopy(body), subresource)
            if dry_run:
                return obj
            self._bucket(rtype)[key] = obj
            event = self._commit(rtype, "MODIFIED", obj, copy.deepcopy(current))
        self._notify([event])
        return copy.deepcopy(obj)

    def _merge_update(self, rtype: ResourceType, current: Obj, body: Obj, subresource: str | None) -> Obj:
        """The stored object after an update: status only via /status when the type has one."""
        if subresource == "status":
            obj = copy.deepcopy(current)
            obj["status"] = body.get("status", {})
            return obj
        obj = body
        obj["apiVersion"] = rtype.api_version
        obj["kind"] = rtype.kind
        meta = obj.setdefault("metadata", {})
        kept = ("uid", "creationTimestamp", "namespace", "name", "generation", "deletionTimestamp")
        for field_name in kept:
            if field_name in current["metadata"]:
                meta[field_name] = current["metadata"][field_name]
        if rtype.has_status:
            if "status" in current:
                obj["status"] = copy.deepcopy(current["status"])
            else:
                obj.pop("status", None)

        def spec_of(o: Obj) -> Obj:
            return {k: v for k, v in o.items() if k not in ("metadata", "status")}

        if spec_of(obj) != spec_of(current):
            meta["generation"] = int(current["metadata"].get("generation", 1)) + 1
        return obj

    def delete(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        *,
        propagation: str = "Background",
        dry_run: bool = False,
        expected_uid: str | None = None,
    ) -> Obj:
        """Delete an object; its dependents (ownerReferences) go too unless propagation is Orphan."""
        events: builtins.list[WatchEvent] = []
        with self.cond:
            key = self._key(rtype, namespace, name)
            current = self._bucket(rtype).get(key)
            if current is None:
                raise not_found(rtype, name)
            if expected_uid and current["metadata"]["uid"] != expected_uid:
                raise ApiError(
                    409,
                    "Conflict",
                    f"Precondition failed: UID in precondition: {expected_uid}, "
                    f"UID in object meta: {current['metadata']['uid']}",
                )
            if dry_run:
                return copy.deepcopy(current)
            result = copy.deepcopy(current)
            if propagation == "Foreground":
                # The real server keeps the owner, marked, until its dependents are gone.
                marked = copy.deepcopy(current)
                marked["metadata"]["deletionTimestamp"] = self.clock.timestamp()
                finalizers = marked["metadata"].setdefault("finalizers", [])
                if "foregroundDeletion" not in finalizers:
                    finalizers.append("foregroundDeletion")
                self._bucket(rtype)[key] = marked
                events.append(self._commit(rtype, "MODIFIED", marked, current))
                result = copy.deepcopy(marked)
            uid = current["metadata"]["uid"]
            if propagation != "Orphan":
                events.extend(self._delete_dependents(uid))
            if rtype.kind == "Namespace":
                events.extend(self._delete_namespace_contents(name))
            removed = self._bucket(rtype).pop(key)
            events.append(self._commit(rtype, "DELETED", removed, copy.deepcopy(removed)))
        self._notify(events)
        return result

    def _delete_dependents(self, owner_uid: str) -> builtins.list[WatchEvent]:
        """Garbage-collect objects owned by `owner_uid` (lock held), depth first."""
        events: builtins.list[WatchEvent] = []
        for rtype, bucket in list(self._objects.items()):
            for key, obj in list(bucket.items()):
                owners = obj["metadata"].get("ownerReferences") or []
                if any(ref.get("uid") == owner_uid for ref in owners) and key in bucket:
                    events.extend(self._delete_dependents(obj["metadata"]["uid"]))
                    removed = bucket.pop(key)
                    events.append(self._commit(rtype, "DELETED", removed, copy.deepcopy(removed)))
        return events

    def _delete_namespace_contents(self, namespace: str) -> builtins.list[WatchEvent]:
        events: builtins.list[WatchEvent] = []
        for rtype, bucket in list(self._objects.items()):
            if not rtype.namespaced:
                continue
            for key in [k for k in bucket if k[0] == namespace]:
                removed = bucket.pop(key)
                events.append(self._commit(rtype, "DELETED", removed, copy.deepcopy(removed)))
        return events

    def mutate(
        self, rtype: ResourceType, namespace: str | None, name: str, change: Callable[[Obj], None]
    ) -> Obj:
        """In-process read-modify-write under the lock (the operator's writes; never conflicts)."""
        with self.cond:
            key = self._key(rtype, namespace, name)
            current = self._bucket(rtype).get(key)
            if current is None:
                raise not_found(rtype, name)
            obj = copy.deepcopy(current)
            change(obj)
            if obj == current:
                return obj
            self._bucket(rtype)[key] = obj
            event = self._commit(rtype, "MODIFIED", obj, copy.deepcopy(current))
        self._notify([event])
        return copy.deepcopy(obj)

    # -- watch --------------------------------------------------------------------------------
    def watch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        matcher: Matcher,
        since: int | None,
        stop: threading.Event,
        timeout: float | None,
    ) -> Iterator[Obj]:
        """Yield watch events (`{"type", "object"}`) from `since` (None: current state first).

        Ends after `timeout` real seconds, when `stop` is set or the server stops; yields one
        ERROR 410 event when `since` is older than the retained history.
        """
        deadline = None if timeout is None else _monotonic() + timeout
        with self.cond:
            if since is None:
                snapshot, cursor = self.list(rtype, namespace, matcher)
                pending: builtins.list[Obj] = [{"type": "ADDED", "object": obj} for obj in snapshot]
            elif since < self._history.floor:
                yield gone_event(since, self._history.floor)
                return
            else:
                cursor = since
                pending = []
        yield from pending
        while not stop.is_set() and not self.stopped.is_set():
            with self.cond:
                if cursor < self._history.floor:
                    yield_gone = True
                    batch: builtins.list[WatchEvent] = []
                else:
                    yield_gone = False
                    batch = self._history.after(cursor)
                    if not batch:
                        remaining = None if deadline is None else deadline - _monotonic()
                        if remaining is not None and remaining <= 0:
                            return
                        self.cond.wait(0.2 if remaining is None else min(0.2, remaining))
                        continue
            if yield_gone:
                yield gone_event(cursor, self.floor)
                return
            for event in batch:
                cursor = event.rv
                out = translate(event, rtype, namespace, matcher)
                if out is not None:
                    yield out
            if deadline is not None and _monotonic() >= deadline:
                return


def _monotonic() -> float:
    return time.monotonic()


