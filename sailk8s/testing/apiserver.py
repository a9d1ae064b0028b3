"""A fake Kubernetes API server on 127.0.0.1 for the real kubernetes client, the kubeflow SDK and kubectl.

Start it as a context manager; it serves real HTTP from a background thread::

    from sailk8s.testing import FakeKubernetes, FakeTrainingOperator

    with FakeKubernetes() as kube:                      # random free port, namespace "default"
        kube.kubeconfig(tmp_path / "kubeconfig")        # for kubectl / config.load_kube_config
        api = kubernetes.client.ApiClient(kube.client_configuration())
        with FakeTrainingOperator(kube, mode="simulate", duration=2.0):
            ...                                         # create PyTorchJobs, watch them finish
        kube.request_count(method="GET")                # every request is logged in kube.requests

Served: discovery (/api, /apis, aggregated discovery, /version), CRUD + watch for namespaces,
pods (+ /log, /status), events, services, configmaps, secrets, nodes, leases
(coordination.k8s.io/v1) and pytorchjobs (kubeflow.org/v1, + /status); label and field
selectors; limit/continue; server-set uid, resourceVersion, creationTimestamp, generation;
409 AlreadyExists/Conflict; watch from a resourceVersion with 410 Gone once compacted;
Table output for `kubectl get`; DeleteOptions propagationPolicy with owner-reference GC.

Faults (see `sailk8s.testing.faults.FaultPlan`), armed on `kube.faults`::

    kube.faults.fail(503, times=3, path="pytorchjobs")     # a 5xx burst (also 403, 500...)
    kube.faults.throttle(times=2)                          # 429 with Retry-After
    kube.faults.conflict_on_create(path="pytorchjobs")     # 409 AlreadyExists on POST
    kube.faults.drop_watch(after_events=1)                 # cut the next watch stream
    kube.faults.expire_watch()                             # 410 Gone ERROR on the next watch
    kube.logs.cut_streams(after_lines=2)                   # cut the next pod log follow stream
    kube.compact()                                         # forget history: old RVs get 410
    kube.close_watches()                                   # end every open watch now
    kube.crd_installed = False                             # kubeflow.org/v1 answers 404
                                                           # (or FakeKubernetes(install_crd=False))
PyTorchJobs pass the Training Operator's webhook rules (admission=True) and, with
`crd_file=<kubeflow.org_pytorchjobs.yaml>`, the CRD's openAPIV3Schema; violations are 422.
Unexpected server exceptions answer 500 and are kept in `kube.errors`.
Pod-level faults (eviction, OOMKilled, node loss...) live on `FakeTrainingOperator`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sailk8s.testing.admission import admit, load_crd, minimal_crd
from sailk8s.testing.clock import Clock
from sailk8s.testing.faults import FaultPlan, default_reason
from sailk8s.testing.patching import PatchError, json_patch, merge_patch
from sailk8s.testing.podlogs import PodLogs, parse_time
from sailk8s.testing.resources import APIEXTENSIONS, CRD_NAME, Obj, ResourceRegistry, ResourceType, table
from sailk8s.testing.selectors import SelectorError, labels_match, parse_field_selector, parse_label_selector
from sailk8s.testing.state import ApiError, ClusterState, Matcher, not_found

if TYPE_CHECKING:
    from sailk8s.backends.kubernetes.client import Configuration


@dataclass
class RequestRecord:
    """One request the server answered: what tests and benchmarks count."""

    method: str
    path: str
    query: dict[str, str]
    watch: bool
    time: float
    status: int = 0
    user_agent: str = ""


@dataclass
class _Route:
    """A parsed resource URL."""

    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None
    watch_path: bool = False


_AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


class _Handler(BaseHTTPRequestHandler):
    """Serves one connection; all state lives on the FakeKubernetes it belongs to."""

    protocol_version = "HTTP/1.1"
    server_version = "fake-kube-apiserver"
    kube: FakeKubernetes  # set on a per-server subclass

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log replaces stderr lines."""

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without TCP_NODELAY, Nagle + delayed ACK
        # add ~40 ms to every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.kube._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.kube._track(self.connection, False)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- plumbing -----------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        split = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(split.query, keep_blank_values=True).items()}
        path = split.path.rstrip("/") or "/"
        is_watch = query.get("watch", "").lower() in ("true", "1") or "/watch/" in path
        record = RequestRecord(
            method, path, query, is_watch, time.time(), user_agent=self.headers.get("User-Agent", "")
        )
        self.kube._record(record)
        self._record = record
        try:
            body = self._read_body()
            self.kube._check_auth(self.headers.get("Authorization"))
            fault = self.kube.faults.take_request_fault(method, path, is_watch)
            if fault is not None:
                raise ApiError(
                    fault.status,
                    fault.reason or default_reason(fault.status),
                    fault.message or f"injected fault: {fault.status}",
                    retry_after=fault.retry_after,
                )
            self._serve(method, path, query, body)
        except ApiError as err:
            headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else {}
            self._send_json(err.code, err.status(), headers=headers)
        except (SelectorError, PatchError, ValueError) as err:
            self._send_json(400, ApiError(400, "BadRequest", str(err)).status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug in the fake: answer 500 and keep it for tests to see
            self.kube.errors.append(f"{method} {path}: {type(exc).__name__}: {exc}")
            if record.status:  # the response had started: all we can do is cut it
                self.close_connection = True
            else:
                self._send_json(500, ApiError(500, "InternalError", f"fake apiserver error: {exc}").status())

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(
        self,
        code: int,
        obj: Any,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(obj).encode()
        self._record.status = code
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_text(self, code: int, data: bytes) -> None:
        self._record.status = code
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_chunked(self, content_type: str) -> None:
        self._record.status = 200
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _drop(self) -> None:
        """Cut the connection mid-stream, as a dying load balancer would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # -- routing ------------------------------------------------------------------------------
    def _serve(self, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        kube = self.kube
        parts = [p for p in path.split("/") if p]
        accept = self.headers.get("Accept", "")
        aggregated = "as=APIGroupDiscoveryList" in accept and "v=v2" in accept
        if method == "GET":
            if parts == ["version"]:
                return self._send_json(200, kube.version_info())
            if parts and parts[0] in ("healthz", "readyz", "livez"):
                return self._send_text(200, b"ok")
            if parts == ["api"]:
                if aggregated:
                    return self._send_json(200, kube.registry.aggregated(core=True), _AGGREGATED)
                return self._send_json(200, kube.registry.api_versions(f"127.0.0.1:{kube.port}"))
            if parts == ["apis"]:
                if aggregated:
                    return self._send_json(200, kube.registry.aggregated(core=False), _AGGREGATED)
                return self._send_json(200, kube.registry.api_group_list())
            if parts == ["api", "v1"]:
                return self._send_json(200, kube.registry.resource_list("", "v1"))
            if len(parts) == 2 and parts[0] == "apis":
                return self._send_json(200, _found(kube.registry.api_group(parts[1])))
            if len(parts) == 3 and parts[0] == "apis":
                return self._send_json(200, _found(kube.registry.resource_list(parts[1], parts[2])))
            if parts == []:
                return self._send_json(200, {"paths": ["/api", "/api/v1", "/apis", "/version"]})
        route = self._route(parts)
        if route is None:
            raise _unknown_path()
        self._serve_resource(method, route, query, body)

    def _route(self, parts: list[str]) -> _Route | None:
        """Parse `/api/v1/...` or `/apis/<g>/<v>/...` into a resource route."""
        if len(parts) >= 3 and parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        watch_path = False
        if rest and rest[0] == "watch":
            watch_path, rest = True, rest[1:]
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            candidate = self.kube.registry.lookup(group, version, rest[2])
            if candidate is not None and candidate.namespaced:
                namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            return None
        rtype = self.kube.registry.lookup(group, version, rest[0])
        if rtype is None:
            return None
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in rtype.subresources:
            return None
        return _Route(rtype, namespace, name, sub, watch_path)

    def _serve_resource(self, method: str, route: _Route, query: dict[str, str], body: bytes) -> None:
        kube = self.kube
        state = kube.state
        rtype, ns, name, sub = route.rtype, route.namespace, route.name, route.subresource
        dry_run = bool(query.get("dryRun"))
        watching = route.watch_path or query.get("watch", "").lower() in ("true", "1")
        if (method == "GET" and name is None) or (method == "GET" and watching):
            if name is not None:  # the deprecated single-object watch
                query = {**query, "fieldSelector": f"metadata.name={name}"}
            matcher = _matcher(query)
            if watching:
                return self._watch(rtype, ns, query, matcher)
            return self._list(rtype, ns, query, matcher)
        if name is None:
            if method == "POST":
                new = _json(body)
                kube.admit(rtype, {**new, "metadata": {"namespace": ns, **(new.get("metadata") or {})}})
                created = state.create(rtype, ns, new, dry_run=dry_run)
                return self._send_json(201, created)
            if method == "DELETE":
                return self._delete_collection(rtype, ns, query, body, dry_run)
            raise ApiError(405, "MethodNotAllowed", f"the server does not allow {method} on {rtype.plural}")
        if method == "GET":
            if sub == "log":
                return self._logs(ns or "", name, query)
            return self._send_json(200, state.get(rtype, ns, name))
        if method == "PUT":
            if sub is None:
                kube.admit(rtype, _json(body))
            return self._send_json(
                200, state.replace(rtype, ns, name, _json(body), subresource=sub, dry_run=dry_run)
            )
        if method == "PATCH":
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            return self._send_json(200, kube.patch(rtype, ns, name, body, content_type, sub, dry_run))
        if method == "DELETE":
            options = _json(body) if body else {}
            propagation = query.get("propagationPolicy") or options.get("propagationPolicy") or "Background"
            uid = (options.get("preconditions") or {}).get("uid")
            deleted = state.delete(
                rtype, ns, name, propagation=propagation, dry_run=dry_run, expected_uid=uid
            )
            if rtype.kind == "Pod" or rtype.group or deleted["metadata"].get("deletionTimestamp"):
                return self._send_json(200, deleted)
            return self._send_json(200, _success(rtype, deleted))
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow {method} here")

    # -- verbs --------------------------------------------------------------------------------
    def _list(self, rtype: ResourceType, ns: str | None, query: dict[str, str], matcher: Matcher) -> None:
        items, rv = self.kube.state.list(rtype, ns, matcher)
        start = 0
        if query.get("continue"):
            try:
                token = json.loads(base64.urlsafe_b64decode(query["continue"].encode()))
                start, token_rv = int(token["start"]), int(token["rv"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ApiError(400, "BadRequest", "invalid continue token") from exc
            if token_rv < self.kube.state.floor:
                raise ApiError(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result.",
                )
        meta: Obj = {"resourceVersion": str(rv)}
        limit = int(query.get("limit") or 0)
        if limit > 0 and start + limit < len(items):
            token = json.dumps({"start": start + limit, "rv": rv}).encode()
            meta["continue"] = base64.urlsafe_b64encode(token).decode()
            meta["remainingItemCount"] = len(items) - start - limit
            page = items[start : start + limit]
        else:
            page = items[start:]
        if "as=Table" in self.headers.get("Accept", ""):
            return self._send_json(200, self._table(rtype, page, query, meta))
        self._send_json(
            200,
            {"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version, "metadata": meta, "items": page},
        )

    def _table(
        self, rtype: ResourceType, objects: list[Obj], query: dict[str, str], meta: Obj | None = None
    ) -> Obj:
        """The Table view of objects, for a list or for one watch event."""
        moment = dt.datetime.fromtimestamp(self.kube.clock.now(), tz=dt.UTC)
        list_meta = meta or {"resourceVersion": objects[0]["metadata"].get("resourceVersion", "")}
        return table(rtype, objects, list_meta, query.get("includeObject", "Metadata"), moment)

    def _watch(self, rtype: ResourceType, ns: str | None, query: dict[str, str], matcher: Matcher) -> None:
        kube = self.kube
        since: int | None = None
        raw_rv = query.get("resourceVersion", "")
        if raw_rv not in ("", "0"):
            try:
                since = int(raw_rv)
            except ValueError as exc:
                raise ApiError(400, "BadRequest", f"invalid resourceVersion {raw_rv!r}") from exc
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else kube.watch_timeout
        fault = kube.faults.take_watch_fault(self._record.path)
        lag = kube.faults.watch_lag(self._record.path)
        stop = kube._open_watch()
        bookmarks = query.get("allowWatchBookmarks", "").lower() == "true"
        as_table = "as=Table" in self.headers.get("Accept", "")  # kubectl get -w
        self._start_chunked("application/json")
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
                    event = {"type": event["type"], "object": self._table(rtype, [event["object"]], query)}
                self._chunk(json.dumps(event).encode() + b"\n")
                sent += 1
            if fault is not None and fault.action == "drop" and fault.abrupt:
                return self._drop()
            if fault is not None and fault.action == "gone":
                rv = kube.state.resource_version
                gone = ApiError(410, "Expired", f"too old resource version: {since or 0} ({rv})").status()
                self._chunk(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            elif bookmarks and fault is None:
                bookmark = {
                    "kind": rtype.kind,
                    "apiVersion": rtype.api_version,
                    "metadata": {"resourceVersion": str(kube.state.resource_version)},
                }
                self._chunk(json.dumps({"type": "BOOKMARK", "object": bookmark}).encode() + b"\n")
            self._end_chunked()
        finally:
            kube._close_watch(stop)

    def _logs(self, ns: str, name: str, query: dict[str, str]) -> None:
        kube = self.kube
        pod_type = self._pod_type()
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
            since=self._log_since(query),
            stop=kube.state.stopped,
        )
        if not follow:
            data = b"".join(lines)
            return self._send_text(200, data[:limit] if limit is not None else data)
        cut = kube.logs.take_cut(name)
        self._start_chunked("text/plain; charset=utf-8")
        sent = count = 0
        # Check the cut before waiting for the next line, so after_lines=0 acts at once.
        while cut is None or count < cut.after_lines:
            line = next(lines, None)
            if line is None:
                break
            count += 1
            if limit is not None and sent + len(line) > limit:
                line = line[: limit - sent]
            self._chunk(line)
            sent += len(line)
            if limit is not None and sent >= limit:
                break
        if cut is not None and cut.abrupt:
            return self._drop()
        self._end_chunked()

    def _log_since(self, query: dict[str, str]) -> float | None:
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
            return self.kube.clock.now() - int(since_seconds)
        return None

    def _delete_collection(
        self, rtype: ResourceType, ns: str | None, query: dict[str, str], body: bytes, dry_run: bool
    ) -> None:
        options = _json(body) if body else {}
        propagation = query.get("propagationPolicy") or options.get("propagationPolicy") or "Background"
        items, _ = self.kube.state.list(rtype, ns, _matcher(query))
        deleted = []
        for item in items:
            meta = item["metadata"]
            try:
                deleted.append(
                    self.kube.state.delete(
                        rtype, meta.get("namespace"), meta["name"], propagation=propagation, dry_run=dry_run
                    )
                )
            except ApiError:
                continue  # deleted meanwhile (e.g. garbage-collected with its owner)
        self._send_json(
            200,
            {
                "kind": f"{rtype.kind}List",
                "apiVersion": rtype.api_version,
                "metadata": {"resourceVersion": str(self.kube.state.resource_version)},
                "items": deleted,
            },
        )

    def _pod_type(self) -> ResourceType:
        pod_type = self.kube.registry.lookup("", "v1", "pods")
        assert pod_type is not None
        return pod_type


def _found(doc: Obj | None) -> Obj:
    if doc is None:
        raise _unknown_path()
    return doc


def _unknown_path() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def _json(body: bytes) -> Obj:
    try:
        value = json.loads(body or b"{}")
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ApiError(400, "BadRequest", "the request body must be a JSON object")
    return value


def _success(rtype: ResourceType, obj: Obj) -> Obj:
    meta = obj.get("metadata", {})
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {
            "name": meta.get("name"),
            "group": rtype.group,
            "kind": rtype.plural,
            "uid": meta.get("uid"),
        },
    }


def _matcher(query: dict[str, str]) -> Matcher:
    requirements = parse_label_selector(query.get("labelSelector"))
    field_predicate = parse_field_selector(query.get("fieldSelector"))

    def matcher(obj: Obj) -> bool:
        return labels_match(requirements, obj.get("metadata", {}).get("labels")) and field_predicate(obj)

    return matcher


def _waiting_reason(pod: Obj, container: str) -> str:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == container:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason"):
                return str(waiting["reason"])
    return "ContainerCreating"


@dataclass(repr=False)
class FakeKubernetes:
    """The fake API server: `with FakeKubernetes() as kube:` serves on `kube.url`."""

    host: str = "127.0.0.1"
    port: int = 0
    namespaces: tuple[str, ...] = ("default",)
    token: str | None = None  # when set, requests need `Authorization: Bearer <token>`
    clock: Clock = field(default_factory=Clock)
    history: int = 10000
    watch_timeout: float = 1800.0  # real servers end watches after 30-60 minutes
    server_version: str = "1.34"
    install_crd: bool = True  # False: a cluster without the Training Operator (kubeflow.org/v1 is 404)
    crd_file: str | Path | None = None  # the real CRD YAML: PyTorchJobs are checked against its schema
    admission: bool = True  # the Training Operator's validating webhook rules
    registry: ResourceRegistry = field(default_factory=ResourceRegistry)
    faults: FaultPlan = field(default_factory=FaultPlan)
    logs: PodLogs = field(default_factory=PodLogs)

    def __post_init__(self) -> None:
        self.state = ClusterState(self.clock, self.history)
        self.requests: list[RequestRecord] = []
        self.errors: list[str] = []  # unexpected server-side exceptions (answered 500), for tests
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._watch_stops: set[threading.Event] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.state.subscribe(self._forget_pod_logs)
        self.state.subscribe(self._track_crd)
        self.crd = load_crd(self.crd_file) if self.crd_file else None
        self.registry.crd_installed = False
        for namespace in ("kube-system", *self.namespaces):
            if self.state.find(self.type("namespaces"), None, namespace) is None:
                self.state.create(self.type("namespaces"), None, {"metadata": {"name": namespace}})
        self.crd_installed = self.install_crd

    def __repr__(self) -> str:
        return f"FakeKubernetes(url={self.url!r}, objects_rv={self.state.resource_version})"

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> FakeKubernetes:
        """Bind the port and serve from a daemon thread."""
        handler = type("BoundHandler", (_Handler,), {"kube": self})
        server_class = type("FakeKubeHTTPServer", (ThreadingHTTPServer,), {"request_queue_size": 128})
        self._httpd = server_class((self.host, self.port), handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"fake-kube-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end watches and log streams, and close every open connection."""
        self.state.stopped.set()
        self.logs.stopped.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> FakeKubernetes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`."""
        return f"http://{self.host}:{self.port}"

    # -- client helpers -----------------------------------------------------------------------
    def kubeconfig(self, path: str | Path, namespace: str = "default", context: str = "fake") -> Path:
        """Write a kubeconfig for kubectl and `kubernetes.config.load_kube_config`; returns the path."""
        user: Obj = {"token": self.token} if self.token else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": user}],
            "contexts": [
                {"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}
            ],
            "current-context": context,
            "preferences": {},
        }
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(config, indent=2))  # JSON is YAML; no dependency needed
        return target

    def client_configuration(self) -> Configuration:
        """A `kubernetes.client.Configuration` pointing at this server (for ApiClient/TrainingClient)."""
        from sailk8s.backends.kubernetes.client import configuration_for

        return configuration_for(self.url, self.token)

    # -- state helpers ------------------------------------------------------------------------
    def type(self, plural: str, group: str = "") -> ResourceType:
        """The ResourceType for a plural (core group unless `group` is given), even if not served."""
        for rtype in self.registry.types:
            if rtype.plural == plural and rtype.group == group:
                return rtype
        raise KeyError(f"unknown resource {plural}.{group}")

    @property
    def crd_installed(self) -> bool:
        """Whether kubeflow.org/v1 PyTorchJobs are served (False: 404, like a cluster without it)."""
        return self.registry.crd_installed

    @crd_installed.setter
    def crd_installed(self, value: bool) -> None:
        """Install or remove the PyTorchJob CRD object (removing it deletes every PyTorchJob)."""
        crd_type = self.type("customresourcedefinitions", APIEXTENSIONS)
        present = self.state.find(crd_type, None, CRD_NAME) is not None
        if value and not present:
            self.state.create(crd_type, None, self.crd or minimal_crd())
        elif not value and present:
            self.state.delete(crd_type, None, CRD_NAME)

    def _track_crd(self, event: Any) -> None:
        """Serve kubeflow.org/v1 exactly while the CRD object exists, as a real server does."""
        if event.rtype.plural != "customresourcedefinitions" or event.obj["metadata"]["name"] != CRD_NAME:
            return
        installed = event.type != "DELETED"
        if not installed:
            jobs, _ = self.state.list(self.type("pytorchjobs", "kubeflow.org"))
            for job in jobs:
                with contextlib.suppress(ApiError):
                    self.state.delete(
                        self.type("pytorchjobs", "kubeflow.org"),
                        job["metadata"]["namespace"],
                        job["metadata"]["name"],
                    )
        self.registry.crd_installed = installed

    def admit(self, rtype: ResourceType, obj: Obj) -> None:
        """Run PyTorchJob admission (CRD schema, webhook) on an object about to be stored."""
        if rtype.kind == "PyTorchJob":
            admit(obj, self.crd, self.admission)

    def compact(self) -> None:
        """Forget the watch history: watches from older resourceVersions get 410 Gone."""
        self.state.compact()

    def close_watches(self) -> None:
        """End every open watch stream now (cleanly, as an apiserver restart would)."""
        with self._lock:
            stops = list(self._watch_stops)
        for stop in stops:
            stop.set()

    def open_watches(self) -> int:
        """How many watch streams are open now."""
        with self._lock:
            return len(self._watch_stops)

    def patch(
        self,
        rtype: ResourceType,
        ns: str | None,
        name: str,
        body: bytes,
        content_type: str,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> Obj:
        """Apply a JSON patch, merge patch (strategic merge is treated as merge) or apply patch."""
        with self.state.cond:  # read-modify-write atomically against other writers
            if content_type == "application/apply-patch+yaml":
                import yaml

                patch_doc = yaml.safe_load(body or b"{}")
                current = self.state.find(rtype, ns, name)
                if current is None:
                    patch_doc.setdefault("metadata", {}).setdefault("name", name)
                    self.admit(rtype, patch_doc)
                    return self.state.create(rtype, ns, patch_doc, dry_run=dry_run)
            else:
                try:
                    patch_doc = json.loads(body or b"{}")
                except ValueError as exc:
                    raise ApiError(400, "BadRequest", f"the patch is not valid JSON: {exc}") from exc
                current = self.state.get(rtype, ns, name)
            if content_type == "application/json-patch+json":
                patched = json_patch(current, patch_doc)
            elif isinstance(patch_doc, dict):
                patched = merge_patch(current, patch_doc)
            else:
                raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
            if not isinstance(patched, dict):
                raise ApiError(422, "Invalid", "the patched object is not an object")
            wanted = None
            if isinstance(patch_doc, dict):
                wanted = (patch_doc.get("metadata") or {}).get("resourceVersion")
            current_rv = current["metadata"]["resourceVersion"]
            patched.setdefault("metadata", {})["resourceVersion"] = wanted or current_rv
            if subresource is None:
                self.admit(rtype, patched)
            return self.state.replace(rtype, ns, name, patched, subresource=subresource, dry_run=dry_run)

    def version_info(self) -> Obj:
        """GET /version."""
        major, minor = self.server_version.split(".")[:2]
        return {
            "major": major,
            "minor": minor,
            "gitVersion": f"v{self.server_version}.0-fake",
            "gitCommit": "0" * 40,
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.24",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    # -- request log --------------------------------------------------------------------------
    def request_count(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        watch: bool | None = None,
        user_agent_contains: str | None = None,
    ) -> int:
        """How many logged requests match all the given filters."""
        with self._lock:
            records = list(self.requests)
        return sum(
            1
            for r in records
            if (method is None or r.method == method.upper())
            and (path_contains is None or path_contains in r.path)
            and (watch is None or r.watch == watch)
            and (user_agent_contains is None or user_agent_contains in r.user_agent)
        )

    def clear_requests(self) -> None:
        """Empty the request log."""
        with self._lock:
            self.requests.clear()

    # -- internals used by the handler --------------------------------------------------------
    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)

    def _check_auth(self, header: str | None) -> None:
        if self.token and header != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized", "Unauthorized")

    def _track(self, conn: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _open_watch(self) -> threading.Event:
        stop = threading.Event()
        with self._lock:
            self._watch_stops.add(stop)
        return stop

    def _close_watch(self, stop: threading.Event) -> None:
        with self._lock:
            self._watch_stops.discard(stop)

    def _forget_pod_logs(self, event: Any) -> None:
        if event.type == "DELETED" and event.rtype.kind == "Pod":
            meta = event.obj["metadata"]
            self.logs.remove_pod(meta.get("namespace", ""), meta["name"])


__all__ = ["ApiError", "FakeKubernetes", "RequestRecord", "not_found"]
