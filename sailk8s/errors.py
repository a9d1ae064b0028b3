"""Error types shared by every layer; the CLI turns them into one-line messages."""

from __future__ import annotations


class SailError(Exception):
    """Base class for errors a user can cause or fix; str(err) is the one-line message."""


class ConfigError(SailError):
    """A pipeline file or setting is invalid. Permanent: retrying cannot help."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = problems or [message]


class StoreError(SailError):
    """An object-store operation failed (after retries, where retrying made sense)."""


class StoreKeyError(StoreError, ValueError):
    """A key is malformed or forbidden (absolute, '..', empty segment, control character)."""


class ObjectNotFound(StoreError, KeyError):
    """The key does not exist in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it a readable line
        return str(self.args[0]) if self.args else "object not found"


class StoreUnavailable(StoreError):
    """The store cannot be reached, the bucket is missing or access is denied."""


class InputError(SailError):
    """A stage's input is missing or unusable (exit code 4). Permanent: retrying cannot help."""


class QualityError(SailError):
    """A stage's output failed a quality gate (e.g. collapsed captions). Permanent: retrying repeats it."""


class BackendError(SailError):
    """A backend (local processes or Kubernetes) could not carry out a request."""
