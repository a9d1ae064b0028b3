"""The one module that talks to the Kubernetes API (kopf: only the clients talk to the API); the
rest of the backend works on JSON dicts and sees failures as KubeApiError or BackendError."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client import Configuration as Configuration  # the type callers may pass in
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.watch.watch import iter_resp_lines

from sailk8s.backends.kubernetes.errors import (
    Call,
    KubeApiError,
    call_api,
    crd_missing,
    final_error,
    is_object_not_found,
    namespace_missing,
    namespace_missing_message,
)
from sailk8s.backends.kubernetes.jobkinds import CLUSTER_RUNTIME_KIND, PYTORCHJOB, TRAINJOB, JobResource
from sailk8s.errors import BackendError

T = TypeVar("T")
Obj = dict[str, Any]
LEASE_GROUP = "coordination.k8s.io"


def load_configuration(context: str | None = None) -> Configuration:
    """Client configuration from the in-cluster service account or a kubeconfig (context)."""
    cfg = k8s.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not context:
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)
            return cfg
        except ConfigException:
            pass  # not a usable service account: fall back to a kubeconfig
    # Read $KUBECONFIG now: the client reads it once, at import time.
    path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        k8s_config.load_kube_config(config_file=path, context=context, client_configuration=cfg)
    except (ConfigException, OSError, TypeError, ValueError) as err:
        raise BackendError(
            f"no usable Kubernetes configuration (kubeconfig {path}"
            f"{', context ' + repr(context) if context else ''}): {' '.join(str(err).split())}; "
            "point KUBECONFIG at your cluster's config, pick a context with SAIL_KUBE_CONTEXT, "
            "or run inside the cluster"
        ) from None
    return cfg


def configuration_for(host: str, token: str | None = None) -> Configuration:
    """A configuration for a plain-HTTP server at `host` (the fake API server in tests)."""
    cfg = k8s.Configuration()
    cfg.host = host
    cfg.verify_ssl = False
    if token:
        cfg.api_key = {"authorization": f"Bearer {token}"}
    return cfg


def response_lines(resp: Any) -> Iterator[str]:
    """The lines of a streamed response body, as they arrive."""
    yield from iter_resp_lines(resp)


def _translated(fn: Callable[[], T]) -> Callable[[], T]:
    """fn, with the client's ApiException turned into our KubeApiError."""

    def run() -> T:
        try:
            return fn()
        except ApiException as err:
            raise KubeApiError(err.status, err.reason, err.body) from None

    return run


@dataclass(frozen=True)
class Listing:
    """One list call (jobs by name, pods by selector) that a watch repeats and streams."""

    fn: Callable[..., Any]
    call: Call

    def list_response(self) -> Any:
        """The raw list response (its body is read by the caller)."""
        return _translated(lambda: self.fn(_preload_content=False))()

    def watch_response(self, resource_version: str | None, timeout_s: int) -> Any:
        """A raw watch stream from resource_version, with bookmarks, ended by the server after timeout_s."""
        return _translated(
            lambda: self.fn(
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_s,
                _preload_content=False,
                _request_timeout=(10, timeout_s + 30),
            )
        )()


class KubeClient:
    """Jobs (PyTorchJobs or TrainJobs: `job`), pods, pod logs and Leases: each call retried for
    retry_seconds on transient failures."""

    def __init__(
        self,
        configuration: Configuration | None = None,
        *,
        context: str | None = None,
        retry_seconds: float = 60.0,
        job: JobResource = PYTORCHJOB,
    ) -> None:
        self.job = job
        cfg = configuration or load_configuration(context)
        self.host: str = cfg.host
        self.retry_seconds = retry_seconds
        self.api = k8s.ApiClient(cfg)
        self._custom = k8s.CustomObjectsApi(self.api)
        self._core = k8s.CoreV1Api(self.api)
        self._leases = k8s.CoordinationV1Api(self.api)

    def call(
        self, fn: Callable[[], T], call: Call, *, deadline_s: float | None = None, translate: bool = True
    ) -> T:
        """One API call with retries (see errors.call_api); KubeApiError when translate is False."""
        deadline = self.retry_seconds if deadline_s is None else deadline_s
        return call_api(_translated(fn), call, host=self.host, deadline_s=deadline, translate=translate)

    def explain_not_found(self, err: KubeApiError, call: Call) -> BackendError:
        """A 404 that is not about a named object: missing namespace or missing CRD."""
        ns = namespace_missing(err)
        if ns:
            return BackendError(namespace_missing_message(ns))
        try:
            discovery = self.call(
                lambda: self.api.call_api(
                    f"/apis/{self.job.group}/{self.job.version}",
                    "GET",
                    response_type="object",
                    auth_settings=["BearerToken"],
                    header_params={"Accept": "application/json"},
                    _return_http_data_only=True,
                ),
                Call("get", "discovery", self.job.group, call.namespace),
                translate=False,
            )
        except KubeApiError as probe:
            if probe.status == 404:
                return BackendError(crd_missing(self.job.plural))
            discovery = {}
        resources = {r.get("name") for r in (discovery or {}).get("resources") or [] if isinstance(r, dict)}
        if discovery and self.job.plural not in resources:
            return BackendError(crd_missing(self.job.plural))
        if call.namespace:
            namespace = call.namespace
            try:
                _translated(lambda: self._core.read_namespace(namespace))()
            except KubeApiError as probe:
                if probe.status == 404:
                    return BackendError(namespace_missing_message(namespace))
        return final_error(err, call, self.host)

    # -- jobs --------------------------------------------------------------------------------

    def _job_call(self, fn: Callable[[], Any], call: Call) -> Any | None:
        """A job call; None when the job is absent, a one-line error otherwise."""
        try:
            return self.call(fn, call, translate=False)
        except KubeApiError as err:
            if is_object_not_found(err, self.job.plural):
                return None
            if err.status == 404:  # not the job but the namespace or the CRD is missing
                raise self.explain_not_found(err, call) from None
            raise final_error(err, call, self.host) from None

    def create_job(self, namespace: str, manifest: Obj, *, exist_ok: bool = True) -> bool:
        """Create the job; False when one of that name exists already (exist_ok), else raise."""
        name = manifest["metadata"]["name"]
        call = Call("create", self.job.plural, self.job.group, namespace, name)
        try:
            self.call(
                lambda: self._custom.create_namespaced_custom_object(
                    self.job.group, self.job.version, namespace, self.job.plural, manifest
                ),
                call,
                translate=False,
            )
            return True
        except KubeApiError as err:
            if err.status == 404:
                raise self.explain_not_found(err, call) from None
            if err.status == 409 and exist_ok:
                return False
            raise final_error(err, call, self.host) from None

    def get_job(self, namespace: str, name: str) -> Obj | None:
        """The job as JSON; None when it does not exist."""
        job: Obj | None = self._job_call(
            lambda: self._custom.get_namespaced_custom_object(
                self.job.group, self.job.version, namespace, self.job.plural, name
            ),
            Call("get", self.job.plural, self.job.group, namespace, name),
        )
        return job

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete the job with foreground propagation; an absent job is already deleted."""
        body = k8s.V1DeleteOptions(propagation_policy="Foreground")
        self._job_call(
            lambda: self._custom.delete_namespaced_custom_object(
                self.job.group, self.job.version, namespace, self.job.plural, name, body=body
            ),
            Call("delete", self.job.plural, self.job.group, namespace, name),
        )

    def job_listing(self, namespace: str, name: str) -> Listing:
        """The list call a watch on one job repeats."""
        return Listing(
            lambda **kw: self._custom.list_namespaced_custom_object(
                self.job.group,
                self.job.version,
                namespace,
                self.job.plural,
                field_selector=f"metadata.name={name}",
                **kw,
            ),
            Call("watch", self.job.plural, self.job.group, namespace),
        )

    def get_runtime(self, kind: str, namespace: str, name: str) -> Obj | None:
        """A Trainer v2 runtime (ClusterTrainingRuntime or namespaced TrainingRuntime) as JSON; None
        when it does not exist. Forbidden (no read grant) raises KubeApiError 403 for the caller."""
        group, version, plural = TRAINJOB.group, TRAINJOB.version, kind.lower() + "s"
        cluster = kind == CLUSTER_RUNTIME_KIND
        call = Call("get", plural, group, None if cluster else namespace, name)

        def fn() -> Any:
            if cluster:
                return self._custom.get_cluster_custom_object(group, version, plural, name)
            return self._custom.get_namespaced_custom_object(group, version, namespace, plural, name)

        try:
            found: Obj = self.call(fn, call, translate=False)
            return found
        except KubeApiError as err:
            if is_object_not_found(err, plural):
                return None
            if err.status == 403:
                raise
            if err.status == 404:
                raise self.explain_not_found(err, call) from None
            raise final_error(err, call, self.host) from None

    # -- pods --------------------------------------------------------------------------------

    def list_pods(self, namespace: str, selector: str) -> list[Obj]:
        """The pods a label selector picks, as JSON."""
        pods = self.call(
            lambda: self._core.list_namespaced_pod(namespace, label_selector=selector),
            Call("list", "pods", "", namespace),
        )
        return [self.api.sanitize_for_serialization(p) for p in pods.items]

    def pod_listing(self, namespace: str, selector: str) -> Listing:
        """The list call a watch on the pods of a label selector repeats."""
        return Listing(
            lambda **kw: self._core.list_namespaced_pod(namespace, label_selector=selector, **kw),
            Call("watch", "pods", "", namespace),
        )

    def open_log(
        self,
        namespace: str,
        pod: str,
        container: str,
        *,
        follow: bool = False,
        since_time: str | None = None,
        deadline_s: float | None = None,
    ) -> tuple[Any | None, int]:
        """(the streaming response, 200), or (None, 400 or 404) when the pod has no log to read
        (its container is not running yet / any more, or the pod is gone)."""
        call = Call("get", "pods/log", "", namespace, pod)
        query: list[tuple[str, str]] = [("container", container)]
        if follow:
            # Follows ask for timestamps so a reconnect can resume at sinceTime and skip replays.
            query += [("follow", "true"), ("timestamps", "true")]
        if since_time:
            query.append(("sinceTime", since_time))
        try:
            # The generated read_namespaced_pod_log has no sinceTime parameter: call the path directly.
            resp = self.call(
                lambda: self.api.call_api(
                    "/api/v1/namespaces/{namespace}/pods/{name}/log",
                    "GET",
                    {"namespace": namespace, "name": pod},
                    query,
                    {"Accept": "text/plain"},
                    response_type="str",
                    auth_settings=["BearerToken"],
                    _return_http_data_only=True,
                    _preload_content=False,
                ),
                call,
                deadline_s=deadline_s,
                translate=False,
            )
        except KubeApiError as err:
            if err.status in (400, 404):
                return None, err.status
            raise final_error(err, call, self.host) from None
        return resp, 200

    # -- Leases ------------------------------------------------------------------------------

    def read_lease(self, namespace: str, name: str) -> Obj:
        """The Lease as JSON; KubeApiError (404 when absent) for the caller to judge."""
        lease: Obj = self.call(
            lambda: self.api.sanitize_for_serialization(self._leases.read_namespaced_lease(name, namespace)),
            Call("get", "leases", LEASE_GROUP, namespace, name),
            translate=False,
        )
        return lease

    def create_lease(self, namespace: str, body: Obj) -> None:
        """Create a Lease; KubeApiError (409 when it exists) for the caller to judge."""
        name = body["metadata"]["name"]
        self.call(
            lambda: self._leases.create_namespaced_lease(namespace, body),
            Call("create", "leases", LEASE_GROUP, namespace, name),
            translate=False,
        )

    def replace_lease(self, namespace: str, name: str, body: Obj) -> None:
        """Replace a Lease at the resourceVersion in body; KubeApiError (409 when it moved on)."""
        self.call(
            lambda: self._leases.replace_namespaced_lease(name, namespace, body),
            Call("update", "leases", LEASE_GROUP, namespace, name),
            translate=False,
        )
