"""Kubernetes API failures: which are transient (retried, bounded), and one clear message for each
that a user must fix (forbidden, namespace missing, CRD not installed...)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
import urllib3.exceptions
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_before_delay, wait_random_exponential

from sailk8s.errors import BackendError

T = TypeVar("T")
log = structlog.get_logger(__name__)

TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
CRD_MISSING = (
    "the PyTorchJob CRD (kubeflow.org/v1 pytorchjobs) is not installed in this cluster: "
    "install the Kubeflow Training Operator v1.9: kubectl apply --server-side -k "
    '"github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=v1.9.0"'
)
TRAINJOB_CRD_MISSING = (
    "the TrainJob CRD (trainer.kubeflow.org/v1alpha1 trainjobs) is not installed in this cluster: "
    "install Kubeflow Trainer v2.3: kubectl apply --server-side -k "
    '"https://github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=v2.3.0" '
    "(or set kubernetes.job_api: pytorchjob)"
)


def crd_missing(plural: str) -> str:
    """What to install when the job API (pytorchjobs or trainjobs) is not served."""
    return TRAINJOB_CRD_MISSING if plural == "trainjobs" else CRD_MISSING


class KubeApiError(Exception):
    """An answer other than success from the API server (the client's ApiException, translated)."""

    def __init__(self, status: int, reason: str | None = None, body: str | None = None) -> None:
        super().__init__(f"({status}) {reason or ''}".rstrip())
        self.status = status
        self.reason = reason
        self.body = body


@dataclass(frozen=True)
class Call:
    """What an API call does, for messages: `create pytorchjobs.kubeflow.org in namespace x`."""

    verb: str
    resource: str  # plural, e.g. "pytorchjobs", "pods", "pods/log", "leases"
    group: str = ""  # API group, "" for core
    namespace: str | None = None
    name: str | None = None

    def describe(self) -> str:
        res = f"{self.resource}.{self.group}" if self.group else self.resource
        obj = f" {self.name!r}" if self.name else ""
        where = f" in namespace {self.namespace!r}" if self.namespace else ""
        return f"{self.verb} {res}{obj}{where}"


def is_transient(err: BaseException) -> bool:
    """Retry 5xx/429 answers and connection-level failures; everything else is final."""
    if isinstance(err, KubeApiError):
        return err.status in TRANSIENT_STATUS or err.status == 0
    return isinstance(err, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


def status_body(err: KubeApiError) -> dict[str, Any]:
    """The API's Status object from an error body ({} when the body is not JSON)."""
    try:
        body = json.loads(err.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def server_message(err: KubeApiError) -> str:
    """The API's one-line message, or the HTTP reason."""
    return str(status_body(err).get("message") or err.reason or f"HTTP {err.status}")


def is_object_not_found(err: BaseException, resource: str) -> bool:
    """A 404 about a named object of `resource` (not a missing namespace or API)."""
    if not isinstance(err, KubeApiError) or err.status != 404:
        return False
    details = status_body(err).get("details") or {}
    return details.get("kind") == resource and bool(details.get("name"))


def namespace_missing(err: KubeApiError) -> str | None:
    """The namespace a 404 says is missing, if that is what it says."""
    details = status_body(err).get("details") or {}
    if details.get("kind") == "namespaces" and details.get("name"):
        return str(details["name"])
    return None


def namespace_missing_message(namespace: str) -> str:
    return (
        f"namespace {namespace!r} does not exist: create it (kubectl create namespace {namespace}) "
        "or set `namespace:` in the pipeline file or SAIL_NAMESPACE"
    )


def final_error(err: BaseException, call: Call, host: str) -> BackendError:
    """One readable BackendError for a non-transient failure (404s are the caller's to explain)."""
    if isinstance(err, KubeApiError):
        msg = server_message(err)
        if err.status == 401:
            return BackendError(
                f"the Kubernetes API at {host} rejected our credentials (401 Unauthorized) "
                f"on {call.describe()}: refresh your kubeconfig credentials"
            )
        if err.status == 403:
            return BackendError(
                f"forbidden: cannot {call.describe()} ({msg}); grant it with RBAC, e.g. a Role rule "
                f'apiGroups: ["{call.group}"], resources: ["{call.resource}"], verbs: ["{call.verb}"] '
                "bound to this user or service account (the Helm chart's controller Role has it)"
            )
        if err.status == 404:
            ns = namespace_missing(err)
            if ns:
                return BackendError(namespace_missing_message(ns))
            return BackendError(f"not found: {call.describe()}: {msg}")
        if err.status == 422:
            return BackendError(f"the Kubernetes API rejected {call.describe()}: {msg}")
        return BackendError(f"{call.describe()} failed: {err.status} {err.reason}: {msg}")
    return BackendError(f"{call.describe()} failed: {one_line(err)}")


def gave_up_error(err: BaseException, call: Call, host: str, attempts: int, elapsed: float) -> BackendError:
    """The message once transient failures outlast the retry budget."""
    tail = f"(gave up after {attempts} attempt(s) in {elapsed:.1f}s)"
    if isinstance(err, KubeApiError) and err.status:
        return BackendError(
            f"the Kubernetes API at {host} kept failing on {call.describe()}: "
            f"{err.status} {err.reason} {tail}"
        )
    return BackendError(
        f"cannot reach the Kubernetes API at {host}: {one_line(err)} {tail}; check that "
        "the cluster is up and that your kubeconfig's server address and network are right"
    )


def one_line(err: BaseException) -> str:
    """A short single-line description of an exception."""
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text[:300]}"


def call_api(fn: Callable[[], T], call: Call, *, host: str, deadline_s: float, translate: bool = True) -> T:
    """Run one API call, retrying transient failures for up to deadline_s seconds.

    With translate=False a final KubeApiError propagates unchanged (callers that handle 404
    or 409 themselves); transient failures that outlast the budget always become BackendError.
    """
    start = time.monotonic()
    attempts = 0

    def before_sleep(state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        log.warning(
            "kubernetes API call failed, retrying",
            call=call.describe(),
            attempt=state.attempt_number,
            wait_s=round(state.upcoming_sleep, 3),
            error=one_line(err) if err else None,
        )

    def counted() -> T:
        nonlocal attempts
        attempts += 1
        return fn()

    retrying = Retrying(
        stop=stop_before_delay(max(deadline_s, 0.0)),
        wait=wait_random_exponential(multiplier=0.2, max=5.0),
        retry=retry_if_exception(is_transient),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(counted)
    except BackendError:
        raise
    except Exception as err:
        if is_transient(err):
            raise gave_up_error(err, call, host, attempts, time.monotonic() - start) from err
        if not translate and isinstance(err, KubeApiError):
            raise
        raise final_error(err, call, host) from err
