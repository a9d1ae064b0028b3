"""The ObjectStore contract every store implements, and key validation shared by all."""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator

from sailk8s.errors import StoreKeyError


def validate_key(key: str) -> str:
    """Return key unchanged if safe; raise StoreKeyError naming the problem otherwise.

    Keys are '/'-separated relative paths: no leading '/', no '.' or '..' segments, no empty
    segments, no control characters, no backslashes.
    """
    if not isinstance(key, str) or not key:
        raise StoreKeyError(f"invalid store key {key!r}: empty")
    if key.startswith("/"):
        raise StoreKeyError(f"invalid store key {key!r}: absolute paths are not allowed")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise StoreKeyError(f"invalid store key {key!r}: control characters are not allowed")
    if "\\" in key:
        raise StoreKeyError(f"invalid store key {key!r}: backslashes are not allowed")
    for seg in key.split("/"):
        if seg == "":
            raise StoreKeyError(f"invalid store key {key!r}: empty path segment")
        if seg in (".", ".."):
            raise StoreKeyError(f"invalid store key {key!r}: '{seg}' segments are not allowed")
    return key


def validate_prefix(prefix: str) -> str:
    """Like validate_key, but '' (everything) and a trailing '/' are allowed."""
    if prefix == "":
        return prefix
    # Only ONE trailing '/' is allowed: 'a//' has an empty segment like the key 'a//b'.
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def check_condition(if_absent: bool, if_version: str | None) -> None:
    """Refuse a put_if without exactly one condition: a typo must not become an unconditional write."""
    if if_absent == (if_version is not None):
        raise ValueError("put_if needs exactly one of if_absent=True or if_version=...")


def check_range(start: int, length: int) -> None:
    """Refuse a negative offset or length (a bug, never a read of the whole object)."""
    if start < 0 or length < 0:
        raise ValueError(f"get_range needs start >= 0 and length >= 0, got {start} and {length}")


class ObjectStore(abc.ABC):
    """A flat key/value object store with atomic writes.

    Keys are relative to the store's root (the path of file:// or the prefix of s3://).
    A reader never sees a partially written object.
    """

    uri: str

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write (or replace) an object atomically."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Read a whole object; ObjectNotFound if absent."""

    @abc.abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes of an object from offset `start` (fewer at its end); ObjectNotFound if absent."""

    @abc.abstractmethod
    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """A whole object and its version (opaque, for put_if/delete_if); ObjectNotFound if absent."""

    @abc.abstractmethod
    def put_if(self, key: str, data: bytes, *, if_absent: bool = False,
               if_version: str | None = None) -> str | None:
        """Write only if key is absent (if_absent) or still at if_version: the new version, else None.

        Exactly one condition must be given. Conditional writes are atomic against each other
        and delete_if, not against a plain put of the same key. Stores that retry may find an
        interrupted earlier try of this very write: data should carry a token unique to the
        writer, so that reading back our own bytes tells that the write went through.
        """

    @abc.abstractmethod
    def delete_if(self, key: str, version: str) -> bool:
        """Remove an object only if it is still at version; False if it changed or is gone."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object exists at key."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under prefix (a plain string prefix), sorted, recursively."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; deleting a missing key is not an error."""

    @abc.abstractmethod
    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Upload a local file atomically (multipart for large files on S3)."""

    @abc.abstractmethod
    def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Download to a local path atomically (temp file + rename)."""

    def check(self) -> None:
        """Verify the store is reachable and usable; StoreUnavailable naming the cause if not.

        Optional: operations report the same problems when they happen. The default does nothing.
        """
        return None

    def describe(self, key: str = "") -> str:
        """A human-readable location for messages, e.g. 's3://bucket/prefix/key'."""
        return self.uri.rstrip("/") + ("/" + key if key else "")
