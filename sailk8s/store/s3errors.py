"""Which minio/urllib3 failures are transient, and how permanent ones become sailk8s errors."""

from __future__ import annotations

import http.client
import ssl

import urllib3.exceptions
from minio.error import InvalidResponseError, S3Error, ServerError

from sailk8s.errors import ObjectNotFound, StoreError, StoreUnavailable
from sailk8s.store.retry import one_line

# S3 error codes that mean "try again later" (AWS, MinIO and Ceph spell throttling differently).
TRANSIENT_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "SlowDown", "SlowDownRead", "SlowDownWrite",
    "RequestTimeout", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    "TooManyRequests", "RequestThrottled", "XMinioServerNotInitialized",
})
ACCESS_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
    "InvalidToken", "ExpiredToken", "AccountProblem",
})

# A conditional request whose condition did not hold: 412, 409 when a concurrent conditional
# write to the key won, and NoSuchKey for If-Match on a key that is gone.
PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"})


def precondition_failed(err: S3Error) -> bool:
    """Whether a conditional PUT or DELETE failed its condition (not the request itself)."""
    return err.code in PRECONDITION_CODES


def _status_transient(status: int | None) -> bool:
    return status is not None and (status >= 500 or status in (408, 429))


def is_transient(err: BaseException) -> bool:
    """True for failures worth retrying: 5xx, 429/SlowDown, timeouts, resets, refused connections."""
    if isinstance(err, S3Error):
        if err.code in TRANSIENT_CODES:
            return True
        if err.code in ACCESS_CODES or err.code in ("NoSuchBucket", "NoSuchKey"):
            return False
        return _status_transient(getattr(err.response, "status", None))
    if isinstance(err, ServerError):
        return _status_transient(err.status_code)
    if isinstance(err, InvalidResponseError):
        return _status_transient(getattr(err, "_code", None))
    if isinstance(err, urllib3.exceptions.MaxRetryError):
        return err.reason is None or is_transient(err.reason)
    if isinstance(err, (urllib3.exceptions.SSLError, ssl.SSLError)):
        return False  # a certificate problem does not heal by waiting
    if isinstance(err, urllib3.exceptions.LocationParseError):
        return False
    # Timeouts, resets, refused connections, truncated bodies (urllib3 and the stdlib).
    return isinstance(err, (urllib3.exceptions.HTTPError, http.client.HTTPException,
                            ConnectionError, TimeoutError))


def never_answered(err: BaseException) -> bool:
    """Whether the request never reached a server: refused, unknown host, connect timeout."""
    if isinstance(err, urllib3.exceptions.MaxRetryError) and err.reason is not None:
        return never_answered(err.reason)
    return isinstance(err, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError,
                            urllib3.exceptions.NameResolutionError, ConnectionRefusedError))


def describe(err: BaseException | None) -> str:
    """A short line for an S3 failure: the S3 code and message instead of minio's long dump."""
    if isinstance(err, S3Error):
        status = getattr(err.response, "status", None)
        return f"{err.code} (HTTP {status}): {err.message}" if status else f"{err.code}: {err.message}"
    if isinstance(err, ServerError):
        return f"HTTP {err.status_code} from the server"
    if isinstance(err, InvalidResponseError):
        return f"HTTP {getattr(err, '_code', '?')} with a non-XML body"
    if isinstance(err, urllib3.exceptions.MaxRetryError) and err.reason is not None:
        return describe(err.reason)
    return one_line(err)


def translate(err: BaseException, *, endpoint: str, bucket: str, location: str,
              op: str) -> StoreError:
    """Turn a permanent minio failure into a one-line StoreError naming the endpoint and key."""
    if isinstance(err, S3Error):
        if err.code == "NoSuchKey":
            return ObjectNotFound(f"object not found: {location}")
        if err.code == "NoSuchBucket":
            return StoreUnavailable(f"bucket {bucket!r} does not exist at {endpoint} ({op} {location})")
        if err.code in ACCESS_CODES:
            return StoreUnavailable(
                f"access denied to bucket {bucket!r} at {endpoint} ({err.code}; check "
                f"SAIL_STORE_ACCESS_KEY/SAIL_STORE_SECRET_KEY) ({op} {location})")
        return StoreError(f"{op} {location} at {endpoint} failed: {describe(err)}")
    if isinstance(err, (urllib3.exceptions.SSLError, ssl.SSLError)):
        return StoreUnavailable(f"TLS error talking to {endpoint} ({op} {location}): {one_line(err)}")
    return StoreError(f"{op} {location} at {endpoint} failed: {describe(err)}")
