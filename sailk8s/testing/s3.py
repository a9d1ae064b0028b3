"""Test helpers for S3: a real S3 HTTP server on 127.0.0.1 (moto) and a fault-injecting proxy."""

from __future__ import annotations

import http.client
import logging
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit
from xml.sax.saxutils import escape as xml_escape

from sailk8s.settings import Settings

FaultKind = Literal["503", "500", "429", "403", "reset", "reset-after", "slow"]

ACCESS_KEY = "sail-test-access"
SECRET_KEY = "sail-test-secret-do-not-log"  # tests assert this never shows up in output
REGION = "us-east-1"

_ERROR_BODIES: dict[str, tuple[int, str, str]] = {
    "503": (503, "ServiceUnavailable", "Please reduce your request rate."),
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "429": (429, "SlowDown", "Please reduce your request rate."),
    "403": (403, "AccessDenied", "Access Denied"),
}


@dataclass
class S3Server:
    """Coordinates of a running test S3 server and its bucket."""

    endpoint: str
    bucket: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION

    def settings(self, endpoint: str | None = None, retry_seconds: float = 10.0) -> Settings:
        """SAIL_* settings pointing at this server (or at a proxy in front of it)."""
        return Settings(
            store_endpoint=endpoint or self.endpoint,
            store_access_key=self.access_key,
            store_secret_key=self.secret_key,
            store_region=self.region,
            store_retry_seconds=retry_seconds,
        )

    def uri(self, prefix: str = "") -> str:
        """The s3:// URI of the bucket (and prefix)."""
        return f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"

    def store(self, prefix: str = "", *, endpoint: str | None = None, **kwargs: Any) -> Any:
        """An S3Store on this bucket; kwargs go to S3Store (retry_seconds, timeout_s, part_size)."""
        from sailk8s.store.s3 import S3Store

        return S3Store(
            self.bucket,
            prefix,
            endpoint=endpoint or self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            **kwargs,
        )

    def make_bucket(self, name: str | None = None) -> str:
        """Create another bucket on the same server (a fresh random name by default)."""
        from minio import Minio

        name = name or f"sail-{uuid.uuid4().hex[:16]}"
        client = Minio(
            urlsplit(self.endpoint).netloc,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            region=self.region,
        )
        client.make_bucket(name)
        return name


@contextmanager
def s3_server(bucket: str | None = None) -> Iterator[S3Server]:
    """Start moto's ThreadedMotoServer on a free 127.0.0.1 port with a fresh bucket; stop it after.

        with s3_server() as s3:                      # moto's ThreadedMotoServer, a fresh bucket
            store = s3.store()                       # an S3Store on that bucket (real minio client)
            with FaultProxy(s3.endpoint) as proxy:   # the same server behind injectable faults
                proxy.inject("503", times=3)         # the next 3 requests get HTTP 503
                store = s3.store(endpoint=proxy.endpoint)

    moto is imported here, lazily: importing this module costs nothing when S3 is not used.
    """
    from moto.server import ThreadedMotoServer

    # werkzeug logs every request at INFO to stderr; tests only want to hear about errors.
    wz_log = logging.getLogger("werkzeug")
    old_level = wz_log.level
    wz_log.setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        info = S3Server(endpoint=f"http://{host}:{port}", bucket="")
        info.bucket = info.make_bucket(bucket)
        yield info
    finally:
        server.stop()
        wz_log.setLevel(old_level)


@dataclass
class _Fault:
    kind: FaultKind
    delay_s: float = 0.0
    match: str | None = None  # only requests whose "METHOD path" contains this


@dataclass
class FaultProxy:
    """An HTTP proxy in front of an S3 server that injects faults into the next matching requests.

    Faults: "503"/"500"/"429"/"403" answer with an S3 XML error (429 as SlowDown); "reset" reads
    the request and then resets the TCP connection; "reset-after" forwards the request and
    resets instead of answering (it took effect, the client cannot know); "slow" waits delay_s
    before forwarding. Everything else, conditional headers (If-Match, If-None-Match) included,
    is forwarded unchanged.
    """

    upstream: str
    endpoint: str = ""
    requests: int = 0
    faults_served: int = 0
    log: list[str] = field(default_factory=list)
    _faults: deque[_Fault] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def inject(
        self, kind: FaultKind, times: int = 1, *, delay_s: float = 0.0, match: str | None = None
    ) -> None:
        """Queue `times` faults of one kind for the next requests (matching `match`, if given)."""
        with self._lock:
            self._faults.extend(_Fault(kind, delay_s, match) for _ in range(times))

    def clear(self) -> None:
        """Drop faults not yet served."""
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> int:
        """Faults queued but not yet served."""
        with self._lock:
            return len(self._faults)

    def _take(self, request_line: str) -> _Fault | None:
        with self._lock:
            self.requests += 1
            self.log.append(request_line)
            for i, fault in enumerate(self._faults):
                if fault.match is None or fault.match in request_line:
                    del self._faults[i]
                    self.faults_served += 1
                    return fault
            return None

    def start(self) -> FaultProxy:
        """Listen on a free 127.0.0.1 port."""
        up = urlsplit(self.upstream)
        handler = _make_handler(self, up.hostname or "127.0.0.1", up.port or 80)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host!s}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
}


def _make_handler(proxy: FaultProxy, up_host: str, up_port: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _handle(self) -> None:
            body = self._body()
            fault = proxy._take(f"{self.command} {self.path}")
            if fault is not None:
                if fault.kind in ("reset", "reset-after"):
                    if fault.kind == "reset-after":
                        self._upstream(body)
                    # SO_LINGER 0 turns close() into a TCP RST: the client sees a connection reset.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault.kind == "slow":
                    time.sleep(fault.delay_s)
                else:
                    self._error(fault.kind)
                    return
            try:
                self._forward(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (e.g. a read timeout): fine

        def _error(self, kind: str) -> None:
            status, code, message = _ERROR_BODIES[kind]
            xml = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>{message}</Message><Resource>{xml_escape(self.path)}</Resource>"
                f"<RequestId>fault-proxy</RequestId></Error>"
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            if kind == "429":
                self.send_header("Retry-After", "1")
            if self.command == "HEAD":
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_header("Content-Length", str(len(xml)))
            self.end_headers()
            self.wfile.write(xml)

        def _upstream(self, body: bytes) -> tuple[http.client.HTTPResponse, bytes]:
            """Send the request upstream as it came (end-to-end headers unchanged); its response."""
            conn = http.client.HTTPConnection(up_host, up_port, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                conn.request(self.command, self.path, body=body if body else None, headers=headers)
                resp = conn.getresponse()
                return resp, resp.read()
            finally:
                conn.close()

        def _forward(self, body: bytes) -> None:
            resp, data = self._upstream(body)
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            if self.command == "HEAD":
                self.send_header("Content-Length", resp.getheader("Content-Length") or "0")
                self.end_headers()
            else:
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler
