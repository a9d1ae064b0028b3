"""S3Store through a fault-injecting proxy: retries, bounded give-up, clear non-retried errors."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sailk8s.errors import ConfigError, ObjectNotFound, StoreError, StoreUnavailable
from sailk8s.store import open_store
from sailk8s.store.s3 import S3Store
from sailk8s.testing.s3 import ACCESS_KEY, SECRET_KEY, FaultProxy, S3Server

MiB = 1 << 20


def via(s3: S3Server, proxy: FaultProxy, **kwargs: object) -> S3Store:
    opts: dict[str, object] = {"retry_seconds": 8.0}
    opts.update(kwargs)
    return s3.store("p", endpoint=proxy.endpoint, **opts)  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["503", "500", "429", "reset"])
def test_recovers_from_a_burst_of_transient_errors(s3: S3Server, proxy: FaultProxy, kind: str) -> None:
    store = via(s3, proxy)
    store.put("k", b"v1")
    proxy.inject(kind, times=3)
    with capture_logs() as logs:
        assert store.get("k") == b"v1"
        store.put("k", b"v2")
    assert proxy.pending_faults == 0 and proxy.faults_served == 3
    assert store.get("k") == b"v2"
    retries = [e for e in logs if e["event"] == "store call failed, retrying"]
    assert len(retries) == 3
    assert all("s3://" in e["what"] and proxy.endpoint in e["what"] for e in retries)


def test_recovers_from_slow_responses_via_timeout(s3: S3Server, proxy: FaultProxy) -> None:
    # A request timeout (1 s) a busy machine does not reach on a good answer, against answers that
    # would take 10 s: recovered in well under the 20 s that waiting them out would take.
    store = via(s3, proxy, timeout_s=1.0)
    store.put("k", b"v")
    proxy.inject("slow", times=2, delay_s=10.0)
    t0 = time.monotonic()
    assert store.get("k") == b"v"
    assert time.monotonic() - t0 < 15


def test_multipart_upload_survives_a_failed_part(s3: S3Server, proxy: FaultProxy, tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.write_bytes(os.urandom(11 * MiB))
    store = via(s3, proxy, part_size=5 * MiB)
    proxy.inject("503", times=1, match="partNumber=2")
    store.put_file("big", src)
    assert store.get("big") == src.read_bytes()
    assert proxy.faults_served == 1


def test_gives_up_in_bounded_time_naming_endpoint_and_key(s3: S3Server, proxy: FaultProxy) -> None:
    store = via(s3, proxy, retry_seconds=1.5)
    proxy.inject("503", times=10_000)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.get("runs/r/x.json")
    elapsed = time.monotonic() - t0
    assert 1.4 <= elapsed < 10.0  # bounded by retry_seconds (1.5 s), with room for a busy machine
    msg = str(info.value)
    assert proxy.endpoint in msg and f"s3://{s3.bucket}/p/runs/r/x.json" in msg
    assert "gave up after" in msg and "ServiceUnavailable" in msg and "\n" not in msg
    assert proxy.requests >= 3


def test_failed_upload_leaves_old_object_and_no_partial(s3: S3Server, proxy: FaultProxy,
                                                        tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.write_bytes(os.urandom(11 * MiB))
    store = via(s3, proxy, retry_seconds=1.0, part_size=5 * MiB)
    store.put("obj", b"old")
    proxy.inject("reset", times=10_000, match="partNumber=2")
    with pytest.raises(StoreUnavailable, match="put"):
        store.put_file("obj", src)
    proxy.clear()
    assert store.get("obj") == b"old"
    assert list(store.list("")) == ["obj"]


def test_access_denied_is_not_retried(s3: S3Server, proxy: FaultProxy) -> None:
    store = via(s3, proxy)
    proxy.inject("403", times=1)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match="access denied") as info:
        store.get("k")
    assert proxy.requests == 1 and time.monotonic() - t0 < 5.0  # not retried (retry_seconds is 8)
    assert SECRET_KEY not in str(info.value)


def test_unreachable_endpoint_is_clear_and_bounded() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = S3Store("bucket-x", endpoint=f"http://127.0.0.1:{port}", access_key="a", secret_key="b",
                    region="us-east-1", retry_seconds=1.0)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.put("k", b"v")
    assert time.monotonic() - t0 < 10.0  # bounded by retry_seconds (1 s), with room for a busy machine
    msg = str(info.value)
    assert f"http://127.0.0.1:{port}" in msg and "s3://bucket-x/k" in msg and "refused" in msg


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_endpoint_that_never_answered_fails_fast_at_first_contact() -> None:
    """A wrong host or port at start-up says so within first_contact_seconds, not retry_seconds."""
    store = S3Store("bucket-x", endpoint=f"http://127.0.0.1:{_free_port()}", access_key="a", secret_key="b",
                    region="us-east-1", retry_seconds=120.0, first_contact_seconds=0.5)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match="the endpoint never answered: check SAIL_STORE_ENDPOINT"):
        store.get("k")
    assert time.monotonic() - t0 < 60.0  # far below retry_seconds, even on a busy machine
    unknown = S3Store("bucket-x", endpoint="http://no-such-host.invalid:9000", access_key="a", secret_key="b",
                      region="us-east-1", retry_seconds=120.0, first_contact_seconds=0.5)
    with pytest.raises(StoreUnavailable, match=r"never answered.*no-such-host\.invalid"):
        unknown.exists("k")


def test_an_outage_after_the_store_answered_gets_the_whole_retry_budget() -> None:
    """Once the endpoint has answered, refused connections are an outage: retried for retry_seconds."""
    import http.server
    import threading

    class Busy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    store = S3Store("bucket-x", endpoint=f"http://127.0.0.1:{port}", access_key="a", secret_key="b",
                    region="us-east-1", retry_seconds=2.5, first_contact_seconds=0.2)
    answered = threading.Event()
    real = store._client._url_open  # type: ignore[attr-defined]

    def then_down(*args: object, **kwargs: object) -> object:
        if not answered.is_set():
            answered.set()
            try:
                return real(*args, **kwargs)  # the 503: the endpoint answered
            finally:
                server.shutdown()
                server.server_close()  # from now on: connection refused
        return real(*args, **kwargs)

    store._client._url_open = then_down  # type: ignore[attr-defined]
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.exists("k")
    assert time.monotonic() - t0 >= 2.5 and "never answered" not in str(info.value)


@pytest.mark.parametrize("op", ["get", "put", "exists", "list", "delete", "check"])
def test_missing_bucket_is_clear_for_every_operation(s3: S3Server, op: str) -> None:
    store = S3Store("no-such-bucket", endpoint=s3.endpoint, access_key="a", secret_key="b",
                    region="us-east-1", retry_seconds=30.0)
    calls = {"get": lambda: store.get("k"), "put": lambda: store.put("k", b"v"),
             "exists": lambda: store.exists("k"), "list": lambda: list(store.list("")),
             "delete": lambda: store.delete("k"), "check": store.check}
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match=re.escape("bucket 'no-such-bucket' does not exist at http://127.0.0.1")):
        calls[op]()
    assert time.monotonic() - t0 < 10.0  # not retried: a retry would take retry_seconds (30 s)


def test_exists_and_get_on_missing_key_in_existing_bucket(s3: S3Server) -> None:
    store = s3.store()
    assert store.exists("nope") is False
    with pytest.raises(ObjectNotFound, match=f"s3://{s3.bucket}/nope"):
        store.get("nope")


def test_credentials_never_show(s3: S3Server, proxy: FaultProxy, capsys: pytest.CaptureFixture[str]) -> None:
    settings = s3.settings(endpoint=proxy.endpoint, retry_seconds=0.5)
    store = open_store(s3.uri("p"), settings)
    proxy.inject("503", times=10_000)
    with capture_logs() as logs, pytest.raises(StoreError) as info:
        store.put("k", b"v")
    seen = " ".join([repr(store), str(store.__dict__), repr(settings), str(info.value), repr(logs),
                     *capsys.readouterr()])
    assert SECRET_KEY not in seen and ACCESS_KEY not in seen


def test_open_store_builds_s3_from_settings_and_checks(s3: S3Server) -> None:
    store = open_store(s3.uri("some/prefix"), s3.settings(), check=True)
    assert isinstance(store, S3Store) and store.prefix == "some/prefix"
    store.put("k", b"v")
    assert s3.store().get("some/prefix/k") == b"v"
    missing = S3Server(endpoint=s3.endpoint, bucket="not-there").uri()
    with pytest.raises(StoreUnavailable, match="does not exist"):
        open_store(missing, s3.settings(), check=True)


@pytest.mark.parametrize(("endpoint", "match"), [
    ("ftp://host:21", "scheme must be http or https"),
    ("http://host:9000/some/path", "no path"),
    ("http://user:hunter2@host:9000", "must not contain credentials"),
])
def test_bad_endpoint_settings(s3: S3Server, endpoint: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        open_store(s3.uri(), s3.settings(endpoint=endpoint))
    assert "hunter2" not in str(info.value)


def test_s3_config_errors() -> None:
    from sailk8s.settings import Settings

    with pytest.raises(ConfigError, match="SAIL_STORE_ENDPOINT"):
        open_store("s3://bucket/x", Settings(store_endpoint=None))
    with pytest.raises(ConfigError, match="both"):
        open_store("s3://bucket/x", Settings(store_endpoint="http://h:1", store_access_key="a"))
    with pytest.raises(ConfigError, match="bucket"):
        open_store("s3://B_ad/x", Settings(store_endpoint="http://h:1"))
    with pytest.raises(ConfigError, match="bad prefix"):
        open_store("s3://bucket/a/../b", Settings(store_endpoint="http://h:1"))


@pytest.mark.slow
def test_list_resumes_after_a_failed_page(s3: S3Server, proxy: FaultProxy) -> None:
    """A listing longer than one page (1000 keys) survives a failed second page without restarting."""
    from concurrent.futures import ThreadPoolExecutor

    direct = s3.store("p")
    keys = [f"done/s{i:05d}.json" for i in range(1010)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda k: direct.put(k, b""), keys))
    store = via(s3, proxy)
    proxy.inject("503", times=1, match="continuation-token")
    assert list(store.list("done/")) == keys
    assert proxy.faults_served == 1
    lists = [line for line in proxy.log if "list-type=2" in line]
    assert len(lists) == 3  # page 1, failed page 2, then page 2 again via start-after
    assert "start-after=p%2Fdone%2Fs00999.json" in lists[-1] or "start-after=p/done/s00999.json" in lists[-1]
