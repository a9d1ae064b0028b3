"""The fake API server's request handler: HTTP plumbing, routing, CRUD, lists and patches."""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from sailk8s.testing.apierrors import ApiError
from sailk8s.testing.faults import default_reason
from sailk8s.testing.patching import PatchError
from sailk8s.testing.resources import Obj, ResourceType
from sailk8s.testing.selectors import SelectorError
from sailk8s.testing.streams import serve_logs, serve_watch
from sailk8s.testing.verbs import (
    apply_patch,
    json_body,
    matcher_for,
    serve_delete_collection,
    serve_list,
    success_status,
)

if TYPE_CHECKING:
    from sailk8s.testing.apiserver import FakeKubernetes


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


class ApiHandler(BaseHTTPRequestHandler):
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
        self.record = record
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
            self.send_json(err.code, err.status(), headers=headers)
        except (SelectorError, PatchError, ValueError) as err:
            self.send_json(400, ApiError(400, "BadRequest", str(err)).status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug in the fake: answer 500 and keep it for tests to see
            self.kube.errors.append(f"{method} {path}: {type(exc).__name__}: {exc}")
            if record.status:  # the response had started: all we can do is cut it
                self.close_connection = True
            else:
                self.send_json(500, ApiError(500, "InternalError", f"fake apiserver error: {exc}").status())

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_json(
        self,
        code: int,
        obj: Any,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(obj).encode()
        self.record.status = code
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def send_text(self, code: int, data: bytes) -> None:
        self.record.status = code
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_chunked(self, content_type: str) -> None:
        self.record.status = 200
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def drop(self) -> None:
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
                return self.send_json(200, kube.version_info())
            if parts and parts[0] in ("healthz", "readyz", "livez"):
                return self.send_text(200, b"ok")
            if parts == ["api"]:
                if aggregated:
                    return self.send_json(200, kube.registry.aggregated(core=True), _AGGREGATED)
                return self.send_json(200, kube.registry.api_versions(f"127.0.0.1:{kube.port}"))
            if parts == ["apis"]:
                if aggregated:
                    return self.send_json(200, kube.registry.aggregated(core=False), _AGGREGATED)
                return self.send_json(200, kube.registry.api_group_list())
            if parts == ["api", "v1"]:
                return self.send_json(200, kube.registry.resource_list("", "v1"))
            if len(parts) == 2 and parts[0] == "apis":
                return self.send_json(200, _found(kube.registry.api_group(parts[1])))
            if len(parts) == 3 and parts[0] == "apis":
                return self.send_json(200, _found(kube.registry.resource_list(parts[1], parts[2])))
            if parts == []:
                return self.send_json(200, {"paths": ["/api", "/api/v1", "/apis", "/version"]})
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
            matcher = matcher_for(query)
            if watching:
                return serve_watch(self, rtype, ns, query, matcher)
            return serve_list(self, rtype, ns, query, matcher)
        if name is None:
            if method == "POST":
                new = json_body(body)
                kube.admit(rtype, {**new, "metadata": {"namespace": ns, **(new.get("metadata") or {})}})
                created = state.create(rtype, ns, new, dry_run=dry_run)
                return self.send_json(201, created)
            if method == "DELETE":
                return serve_delete_collection(self, rtype, ns, query, body, dry_run)
            raise ApiError(405, "MethodNotAllowed", f"the server does not allow {method} on {rtype.plural}")
        if method == "GET":
            if sub == "log":
                return serve_logs(self, ns or "", name, query)
            return self.send_json(200, state.get(rtype, ns, name))
        if method == "PUT":
            if sub is None:
                kube.admit(rtype, json_body(body))
            return self.send_json(
                200, state.replace(rtype, ns, name, json_body(body), subresource=sub, dry_run=dry_run)
            )
        if method == "PATCH":
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            return self.send_json(200, apply_patch(kube, rtype, ns, name, body, content_type, sub, dry_run))
        if method == "DELETE":
            options = json_body(body) if body else {}
            propagation = query.get("propagationPolicy") or options.get("propagationPolicy") or "Background"
            uid = (options.get("preconditions") or {}).get("uid")
            deleted = state.delete(
                rtype, ns, name, propagation=propagation, dry_run=dry_run, expected_uid=uid
            )
            if rtype.kind == "Pod" or rtype.group or deleted["metadata"].get("deletionTimestamp"):
                return self.send_json(200, deleted)
            return self.send_json(200, success_status(rtype, deleted))
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow {method} here")

    # -- verbs --------------------------------------------------------------------------------
    def pod_type(self) -> ResourceType:
        pod_type = self.kube.registry.lookup("", "v1", "pods")
        assert pod_type is not None
        return pod_type


def _found(doc: Obj | None) -> Obj:
    if doc is None:
        raise _unknown_path()
    return doc


def _unknown_path() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


