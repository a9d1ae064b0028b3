"""S3Store: the object store on S3/MinIO through the minio client, every call retried via retry.py."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.error import S3Error
from minio.helpers import check_bucket_name

from sailk8s.errors import ConfigError, ObjectNotFound, StoreError, StoreUnavailable
from sailk8s.settings import Settings
from sailk8s.store import s3errors
from sailk8s.store.atomic import check_not_temp, write_atomic
from sailk8s.store.base import ObjectStore, check_condition, check_range, validate_key, validate_prefix
from sailk8s.store.retry import call_with_retry, one_line

T = TypeVar("T")

MiB = 1 << 20
# Objects up to PART_SIZE go up in one PUT; larger ones as a multipart upload of such parts
# (S3 allows at most 10,000 parts, so 8 MiB parts cover objects up to ~78 GiB).
DEFAULT_PART_SIZE = 8 * MiB
_READ_CHUNK = 1 * MiB


class _LocalFileError(Exception):
    """A local disk problem during a download: permanent, reported as such."""


def parse_endpoint(endpoint: str) -> tuple[str, bool]:
    """'http://host:9000' -> ('host:9000', False); a bare 'host' means https."""
    raw = endpoint.strip()
    parts = urlsplit(raw if "://" in raw else "https://" + raw)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"SAIL_STORE_ENDPOINT {endpoint!r}: the scheme must be http or https")
    if parts.username is not None or parts.password is not None:
        # Never echo the value: it holds a credential.
        raise ConfigError("SAIL_STORE_ENDPOINT must not contain credentials; use "
                          "SAIL_STORE_ACCESS_KEY and SAIL_STORE_SECRET_KEY")
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"SAIL_STORE_ENDPOINT {endpoint!r}: expected scheme://host[:port] with no path")
    return parts.netloc, parts.scheme == "https"


class S3Store(ObjectStore):
    """Objects live in `bucket` under `prefix`; atomic by single PUT or completed multipart upload."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = None,
        retry_seconds: float = 60.0,
        first_contact_seconds: float = 10.0,
        timeout_s: float | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        parallel_uploads: int = 3,
    ) -> None:
        """Credentials are used only to sign requests: they are kept inside the minio client."""
        prefix = prefix.strip("/")
        if prefix:
            try:
                validate_key(prefix)
            except StoreError as err:
                raise ConfigError(f"s3://{bucket}/{prefix}: bad prefix: {err}") from None
        if (access_key is None) != (secret_key is None):
            raise ConfigError("set both SAIL_STORE_ACCESS_KEY and SAIL_STORE_SECRET_KEY, or neither")
        try:
            check_bucket_name(bucket, strict=True)
        except ValueError as err:
            raise ConfigError(f"s3://{bucket}: {err}") from None
        host, secure = parse_endpoint(endpoint)
        self.bucket = bucket
        self.prefix = prefix
        self.uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.endpoint = ("https://" if secure else "http://") + host
        self.retry_seconds = retry_seconds
        # Until the endpoint has answered once, a connection that never opens (refused, unknown
        # host, connect timeout) is a wrong endpoint far more often than an outage: say so in
        # seconds. Once it has answered, outages get the whole retry_seconds.
        self.first_contact_seconds = min(first_contact_seconds, retry_seconds)
        self._answered = False
        self.part_size = part_size
        self.parallel_uploads = parallel_uploads
        # One timeout per socket operation, so a hung server cannot hold a call past the bound
        # for long; retries are ours alone (retries=False), so retry_seconds is the real bound.
        timeout = timeout_s if timeout_s is not None else min(30.0, max(1.0, retry_seconds))
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout),
            retries=False,
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        )
        self._client = Minio(host, access_key=access_key, secret_key=secret_key, secure=secure,
                             region=region, http_client=http)
        self._bucket_known = False

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r}, endpoint={self.endpoint!r})"

    # -- plumbing ---------------------------------------------------------------------------
    def _name(self, key: str) -> str:
        validate_key(key)
        check_not_temp(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        """Run one store call with retries; permanent failures become one-line sailk8s errors."""
        location = self.describe(key)

        def attempt() -> T:
            try:
                result = fn()
            except Exception as err:
                self._answered = self._answered or not s3errors.never_answered(err)
                raise
            self._answered = True
            return result

        def give_up(err: BaseException, elapsed: float) -> str | None:
            if self._answered or not s3errors.never_answered(err) or elapsed < self.first_contact_seconds:
                return None
            return "the endpoint never answered: check SAIL_STORE_ENDPOINT and that the store is running"

        try:
            return call_with_retry(attempt, is_transient=s3errors.is_transient, deadline_s=self.retry_seconds,
                                   what=f"{op} {location} at {self.endpoint}", describe=s3errors.describe,
                                   give_up=give_up)
        except StoreError:
            raise
        except _LocalFileError as err:
            raise StoreError(str(err)) from err.__cause__
        except Exception as err:
            raise s3errors.translate(err, endpoint=self.endpoint, bucket=self.bucket,
                                     location=location, op=op) from err

    def check(self) -> None:
        """Verify the endpoint answers, the credentials work and the bucket exists."""
        if not self._call("check", "", lambda: self._client.bucket_exists(self.bucket)):
            raise StoreUnavailable(f"bucket {self.bucket!r} does not exist at {self.endpoint}")
        self._bucket_known = True

    # -- writes -----------------------------------------------------------------------------
    def put(self, key: str, data: bytes) -> None:
        """Upload bytes: one PUT up to part_size, else a multipart upload (visible only when complete)."""
        name = self._name(key)
        self._call("put", key, lambda: self._client.put_object(
            self.bucket, name, io.BytesIO(data), len(data), part_size=self.part_size,
            num_parallel_uploads=self.parallel_uploads))

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Upload a local file; a retry re-reads it from the start."""
        name = self._name(key)
        try:
            size = os.stat(path).st_size
        except OSError as err:
            raise StoreError(f"cannot read local file {os.fspath(path)!r} for {self.describe(key)}: "
                             f"{err.strerror or err}") from err

        def upload() -> Any:
            with open(path, "rb") as f:
                return self._client.put_object(self.bucket, name, f, size, part_size=self.part_size,
                                               num_parallel_uploads=self.parallel_uploads)

        self._call("put", key, upload)

    # -- conditional writes -----------------------------------------------------------------
    # S3 conditional writes: If-None-Match: * creates only, If-Match: <etag> replaces only that
    # version. The version is the ETag. minio's public put_object turns extra headers into
    # x-amz-meta-* metadata, so these go through its _put_object / _execute (single requests).
    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """Read a whole object and its ETag."""
        name = self._name(key)

        def fetch() -> tuple[bytes, str]:
            resp = self._client.get_object(self.bucket, name)
            try:
                return bytes(resp.read()), _etag(resp.headers.get("ETag"))
            finally:
                resp.close()
                resp.release_conn()

        return self._call("get", key, fetch)

    def put_if(self, key: str, data: bytes, *, if_absent: bool = False,
               if_version: str | None = None) -> str | None:
        """One conditional PUT (up to 5 GiB); a precondition failure after a lost answer is checked."""
        check_condition(if_absent, if_version)
        name = self._name(key)
        headers: dict[str, str | list[str] | tuple[str]] = {"Content-Type": "application/octet-stream"}
        headers.update({"If-None-Match": "*"} if if_absent else {"If-Match": f'"{if_version}"'})
        tries = 0

        def upload() -> str | None:
            nonlocal tries
            tries += 1
            try:
                return _etag(self._client._put_object(self.bucket, name, data, headers=headers).etag)
            except S3Error as err:
                if s3errors.precondition_failed(err):
                    return None
                raise

        version = self._call("put", key, upload)
        if version is None and tries > 1:
            # An earlier try may have written before its answer was lost (a reset): then the
            # retry fails its precondition against our own write. Our bytes there mean we won.
            return self._version_if_ours(key, data)
        return version

    def _version_if_ours(self, key: str, data: bytes) -> str | None:
        try:
            current, version = self.get_versioned(key)
        except ObjectNotFound:
            return None
        return version if current == data else None

    def delete_if(self, key: str, version: str) -> bool:
        """DELETE with If-Match; False if the object changed or is gone (a retried delete included)."""
        name = self._name(key)

        def remove() -> bool:
            try:
                self._client._execute("DELETE", self.bucket, name, headers={"If-Match": f'"{version}"'})
            except S3Error as err:
                if s3errors.precondition_failed(err):
                    return False
                raise
            return True

        return self._call("delete", key, remove)

    def delete(self, key: str) -> None:
        """Remove an object; S3 answers a missing key with success too."""
        name = self._name(key)
        self._call("delete", key, lambda: self._client.remove_object(self.bucket, name))

    # -- reads ------------------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        """Read a whole object; a truncated body raises inside urllib3 and is retried."""
        name = self._name(key)
        return self._call("get", key, lambda: _body(self._client.get_object(self.bucket, name)))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """A ranged GET (Range: bytes=start-end); empty when nothing is asked."""
        check_range(start, length)
        if not length:
            return b""
        name = self._name(key)
        return self._call("get", key, lambda: _body(self._client.get_object(
            self.bucket, name, offset=start, length=length)))

    def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Stream an object into a temp file beside path, then rename it into place."""
        name = self._name(key)

        def fetch() -> None:
            resp = self._client.get_object(self.bucket, name)
            try:
                write_atomic(path, lambda f: _stream_to(resp, f))
            except OSError as err:
                if isinstance(err, (ConnectionError, TimeoutError)):
                    raise
                raise _LocalFileError(f"cannot write local file {os.fspath(path)!r} from "
                                      f"{self.describe(key)}: {err.strerror or one_line(err)}") from err
            finally:
                resp.close()
                resp.release_conn()

        self._call("get", key, fetch)

    def exists(self, key: str) -> bool:
        """HEAD the object; a 404 HEAD has no body, so the bucket is checked once to tell them apart."""
        name = self._name(key)

        def head() -> bool:
            try:
                self._client.stat_object(self.bucket, name)
                return True
            except S3Error as err:
                if err.code == "NoSuchKey":
                    return False
                raise

        found = self._call("exists", key, head)
        if not found and not self._bucket_known:
            self.check()
        return found

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under prefix in S3's (sorted) order; a failed page resumes after the last key seen."""
        validate_prefix(prefix)
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        names: list[str] = []

        def fetch() -> None:
            start_after = names[-1] if names else None
            for obj in self._client.list_objects(self.bucket, prefix=full, recursive=True,
                                                 start_after=start_after):
                names.append(obj.object_name)

        self._call("list", prefix, fetch)
        self._bucket_known = True
        return iter([n[strip:] for n in names])


def _etag(value: str | None) -> str:
    """An ETag without its quotes (servers differ in quoting it); '' if the server sent none."""
    return (value or "").strip('"')


def _body(resp: Any) -> bytes:
    """A GET response's whole body; the connection goes back to the pool."""
    try:
        return bytes(resp.read())
    finally:
        resp.close()
        resp.release_conn()


def _stream_to(resp: Any, f: IO[bytes]) -> None:
    for chunk in resp.stream(_READ_CHUNK):
        f.write(chunk)


def s3_store_from_uri(uri: str, settings: Settings) -> S3Store:
    """Build an S3Store for 's3://bucket/prefix' from SAIL_STORE_* settings."""
    rest = uri[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ConfigError(f"store URI {uri!r}: no bucket (expected s3://bucket/prefix)")
    if not settings.store_endpoint:
        raise ConfigError(f"store {uri} needs SAIL_STORE_ENDPOINT (e.g. http://minio.sail.svc:9000 "
                          "or https://s3.amazonaws.com)")
    access = settings.store_access_key.get_secret_value() if settings.store_access_key else None
    secret = settings.store_secret_key.get_secret_value() if settings.store_secret_key else None
    return S3Store(bucket, prefix, endpoint=settings.store_endpoint, access_key=access, secret_key=secret,
                   region=settings.store_region, retry_seconds=settings.store_retry_seconds)
