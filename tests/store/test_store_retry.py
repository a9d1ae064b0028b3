"""The retry helper: retries transient errors with backoff, within a bounded total time."""

from __future__ import annotations

import time

import pytest
import urllib3.exceptions

from sailk8s.errors import StoreUnavailable
from sailk8s.store.retry import call_with_retry
from sailk8s.store.s3errors import is_transient


def test_returns_after_transient_failures() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionResetError("reset by peer")
        return "ok"

    assert call_with_retry(flaky, is_transient=is_transient, deadline_s=5, what="get x",
                           initial_wait=0.01) == "ok"
    assert len(calls) == 4


def test_permanent_error_propagates_at_once() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("bad argument")

    with pytest.raises(ValueError, match="bad argument"):
        call_with_retry(broken, is_transient=is_transient, deadline_s=5, what="put x")
    assert calls == [1]


def test_gives_up_at_the_deadline_with_a_clear_message() -> None:
    def down() -> None:
        raise urllib3.exceptions.ReadTimeoutError(None, "/k", "read timed out")  # type: ignore[arg-type]

    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        call_with_retry(down, is_transient=is_transient, deadline_s=0.6, what="get s3://b/k at http://h:9",
                        initial_wait=0.05, max_wait=0.2)
    elapsed = time.monotonic() - t0
    assert 0.55 <= elapsed < 3.0  # gave up at the deadline (0.6 s), with room for a busy machine's sleeps
    msg = str(info.value)
    assert msg.startswith("get s3://b/k at http://h:9: gave up after ") and "ReadTimeoutError" in msg


@pytest.mark.parametrize(("err", "transient"), [
    (ConnectionRefusedError(), True),
    (TimeoutError(), True),
    (urllib3.exceptions.ProtocolError("Connection aborted."), True),
    (urllib3.exceptions.NewConnectionError(None, "refused"), True),  # type: ignore[arg-type]
    (urllib3.exceptions.SSLError("bad cert"), False),
    (FileNotFoundError("/tmp/x"), False),
    (ValueError("x"), False),
])
def test_classification_of_network_errors(err: BaseException, transient: bool) -> None:
    assert is_transient(err) is transient
