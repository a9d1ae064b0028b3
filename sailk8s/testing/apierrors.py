"""The fake API server's failures, carried as the Kubernetes Status objects a real server sends."""

from __future__ import annotations

from sailk8s.testing.resources import Obj, ResourceType


class ApiError(Exception):
    """An API answer other than success, carried as a Kubernetes Status object."""

    def __init__(
        self, code: int, reason: str, message: str, details: Obj | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}
        self.retry_after = retry_after

    def status(self) -> Obj:
        """The metav1.Status body the real API server sends."""
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def not_found(rtype: ResourceType, name: str) -> ApiError:
    """404 NotFound as the server words it: `pods "x" not found`."""
    return ApiError(
        404,
        "NotFound",
        f'{rtype.qualified} "{name}" not found',
        {"name": name, "group": rtype.group, "kind": rtype.plural},
    )
