"""KubernetesBackend: each stage attempt is a Kubeflow PyTorchJob (kubeflow.org/v1).

Only this module (with kube_watch and kube_lease) talks to the API; manifests come from the
pure builder in manifest.py and statuses from the pure kube_status.derive_status.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog
import urllib3.exceptions
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.watch.watch import iter_resp_lines

from sailk8s.backends import kube_status
from sailk8s.backends.base import AttemptRef, AttemptStatus, Backend, Phase, RunLock
from sailk8s.backends.kube_errors import (
    CRD_MISSING,
    Call,
    call_api,
    final_error,
    is_object_not_found,
    namespace_missing,
    namespace_missing_message,
    one_line,
)
from sailk8s.backends.kube_logfollow import HEALTHY_STREAM_S, Backoff, LogCursor, StreamBroke
from sailk8s.backends.kube_watch import ObjectWatch
from sailk8s.backends.manifest import (
    ANNOTATION_SPEC_HASH,
    CONTAINER,
    GROUP,
    LABEL_REPLICA_TYPE,
    PLURAL,
    VERSION,
    build_pytorchjob,
    label_selector,
    replica_rank,
)
from sailk8s.backends.validation import ManifestInvalid, webhook_errors
from sailk8s.errors import BackendError, SailError
from sailk8s.runstate import attempt_logs_prefix, rank_log_key
from sailk8s.settings import Settings
from sailk8s.spec import Pipeline, Stage
from sailk8s.store.base import ObjectStore

log = structlog.get_logger(__name__)
Obj = dict[str, Any]


def load_configuration(context: str | None = None) -> k8s.Configuration:
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


class KubernetesBackend(Backend):
    """Runs stage attempts as PyTorchJobs; see the Backend contract for each method."""

    name = "kubernetes"

    def __init__(
        self,
        *,
        namespace: str | None = None,
        settings: Settings | None = None,
        configuration: k8s.Configuration | None = None,
        store: ObjectStore | None = None,
        retry_seconds: float = 60.0,
        unschedulable_after: float = kube_status.DEFAULT_UNSCHEDULABLE_AFTER,
        node_lost_after: float = kube_status.DEFAULT_NODE_LOST_AFTER,
        watch_timeout: int = 3600,
        recheck_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or Settings()
        self.namespace = namespace or self.settings.namespace
        cfg = configuration or load_configuration(self.settings.kube_context)
        self.host: str = cfg.host
        self.api = k8s.ApiClient(cfg)
        self.custom = k8s.CustomObjectsApi(self.api)
        self.core = k8s.CoreV1Api(self.api)
        self.store = store
        self.retry_seconds = retry_seconds
        self.unschedulable_after = unschedulable_after
        self.node_lost_after = node_lost_after
        self.watch_timeout = watch_timeout
        # Local re-evaluation interval while waiting (no API request: only time-based verdicts).
        self.recheck_seconds = recheck_seconds
        self.clock = clock
        self._namespaces: dict[str, str] = {}
        self._cancelled: set[str] = set()

    @classmethod
    def for_pipeline(
        cls, pipeline: Pipeline, settings: Settings | None = None, **kwargs: Any
    ) -> KubernetesBackend:
        """A backend in the pipeline's namespace (else SAIL_NAMESPACE)."""
        settings = settings or Settings()
        return cls(namespace=pipeline.namespace or settings.namespace, settings=settings, **kwargs)

    # -- helpers ---------------------------------------------------------------------------

    def _ns(self, ref: AttemptRef) -> str:
        return self._namespaces.get(ref.name, self.namespace)

    def _call(
        self,
        fn: Callable[[], Any],
        verb: str,
        resource: str = PLURAL,
        *,
        group: str = GROUP,
        namespace: str | None = None,
        name: str | None = None,
        translate: bool = True,
    ) -> Any:
        call = Call(verb, resource, group, namespace or self.namespace, name)
        return call_api(fn, call, host=self.host, deadline_s=self.retry_seconds, translate=translate)

    def _explain_404(self, err: ApiException, call: Call) -> BackendError:
        """A 404 that is not about a named object: missing namespace or missing CRD."""
        ns = namespace_missing(err)
        if ns:
            return BackendError(namespace_missing_message(ns))
        try:
            discovery = self._call(
                lambda: self.api.call_api(
                    f"/apis/{GROUP}/{VERSION}",
                    "GET",
                    response_type="object",
                    auth_settings=["BearerToken"],
                    header_params={"Accept": "application/json"},
                    _return_http_data_only=True,
                ),
                "get",
                "discovery",
                translate=False,
            )
        except ApiException as probe:
            if probe.status == 404:
                return BackendError(CRD_MISSING)
            discovery = {}
        resources = {r.get("name") for r in (discovery or {}).get("resources") or [] if isinstance(r, dict)}
        if discovery and PLURAL not in resources:
            return BackendError(CRD_MISSING)
        if call.namespace:
            try:
                self.core.read_namespace(call.namespace)
            except ApiException as probe:
                if probe.status == 404:
                    return BackendError(namespace_missing_message(call.namespace))
        return final_error(err, call, self.host)

    def _job_call(self, fn: Callable[[], Any], call: Call) -> Any | None:
        """A PyTorchJob API call; None when the job is absent, a one-line error otherwise."""
        try:
            return call_api(fn, call, host=self.host, deadline_s=self.retry_seconds, translate=False)
        except ApiException as err:
            if is_object_not_found(err, PLURAL):
                return None
            if err.status == 404:  # not the job but the namespace or the CRD is missing
                raise self._explain_404(err, call) from None
            raise final_error(err, call, self.host) from None

    def _get_job(self, name: str, namespace: str) -> Obj | None:
        job: Obj | None = self._job_call(
            lambda: self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name),
            Call("get", PLURAL, GROUP, namespace, name),
        )
        return job

    def _list_pods(self, ref: AttemptRef, namespace: str) -> list[Obj]:
        sel = label_selector(ref.run, ref.stage, ref.attempt)
        pods = self._call(
            lambda: self.core.list_namespaced_pod(namespace, label_selector=sel),
            "list",
            "pods",
            group="",
            namespace=namespace,
        )
        items: list[Obj] = [self.api.sanitize_for_serialization(p) for p in pods.items]
        return sorted(items, key=kube_status.pod_order_key)

    def _derive(
        self, job: Obj | None, pods: list[Obj], seen: list[kube_status.PodVerdict] | None = None
    ) -> AttemptStatus:
        return kube_status.derive_status(
            job,
            pods,
            now=self.clock(),
            unschedulable_after=self.unschedulable_after,
            node_lost_after=self.node_lost_after,
            seen=seen or (),
        )

    # -- Backend ---------------------------------------------------------------------------

    def manifest(self, pipeline: Pipeline, stage: Stage, attempt: int) -> Obj:
        """The exact PyTorchJob this backend submits for the attempt (pure, no API call)."""
        return build_pytorchjob(
            pipeline,
            stage,
            attempt,
            namespace=pipeline.namespace or self.namespace,
            store_endpoint=self.settings.store_endpoint,
            store_region=self.settings.store_region,
        )

    def submit(self, pipeline: Pipeline, stage: Stage, attempt: int) -> AttemptRef:
        """Create the PyTorchJob; on 409 adopt the existing one if its spec hash matches."""
        manifest = self.manifest(pipeline, stage, attempt)
        problems = webhook_errors(manifest)
        if problems:
            raise ManifestInvalid(manifest["metadata"]["name"], problems)
        name, ns = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
        ref = AttemptRef(pipeline.run, stage.name, attempt)
        call = Call("create", PLURAL, GROUP, ns, name)
        try:
            call_api(
                lambda: self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, manifest),
                call,
                host=self.host,
                deadline_s=self.retry_seconds,
                translate=False,
            )
            log.info("submitted PyTorchJob", job=name, namespace=ns)
        except ApiException as err:
            if err.status == 404:
                raise self._explain_404(err, call) from None
            if err.status != 409:
                raise final_error(err, call, self.host) from None
            self._adopt(manifest, name, ns)
        self._namespaces[ref.name] = ns
        self._cancelled.discard(ref.name)
        return ref

    def _adopt(self, manifest: Obj, name: str, ns: str) -> None:
        existing = self._get_job(name, ns)
        if existing is None:  # deleted between our create and get: a rare race, create again
            self._call(
                lambda: self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, manifest),
                "create",
                namespace=ns,
                name=name,
            )
            return
        want = manifest["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
        have = ((existing.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_SPEC_HASH)
        if have != want:
            raise BackendError(
                f"PyTorchJob {name!r} already exists in namespace {ns!r} with a different spec "
                f"(spec hash {have or 'none'} != {want}): it was not created from this pipeline file; "
                f"delete it (kubectl delete pytorchjob {name} -n {ns}) or use another run name"
            )
        log.info("adopted existing PyTorchJob", job=name, namespace=ns)

    def status(self, ref: AttemptRef) -> AttemptStatus:
        ns = self._ns(ref)
        job = self._get_job(ref.name, ns)
        if job is None:
            return self._missing(ref)
        return self._derive(job, self._list_pods(ref, ns))

    def _missing(self, ref: AttemptRef) -> AttemptStatus:
        if ref.name in self._cancelled:
            return AttemptStatus(Phase.CANCELLED, reason="Cancelled", message="cancelled")
        return AttemptStatus(
            Phase.UNKNOWN,
            reason="NotFound",
            message=f"no PyTorchJob {ref.name!r} in namespace {self._ns(ref)!r}",
        )

    def _watches(
        self, ref: AttemptRef, ns: str, changed: threading.Event, seen: list[kube_status.PodVerdict]
    ) -> tuple[ObjectWatch, ObjectWatch]:
        """A watch on the attempt's job and one on its pods; fatal pod states are kept in `seen`."""

        def on_pod_event(kind: str, pod: Obj) -> None:
            verdict = kube_status.pod_verdict(
                pod,
                self.clock(),
                unschedulable_after=self.unschedulable_after,
                node_lost_after=self.node_lost_after,
            )
            if kind != "DELETED" and verdict is not None and verdict.fatal:
                seen.append(verdict)

        common: dict[str, Any] = {
            "host": self.host,
            "deadline_s": self.retry_seconds,
            "on_change": changed.set,
            "watch_timeout": self.watch_timeout,
        }
        sel = label_selector(ref.run, ref.stage, ref.attempt)
        job_watch = ObjectWatch(
            lambda **kw: self.custom.list_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, field_selector=f"metadata.name={ref.name}", **kw
            ),
            Call("watch", PLURAL, GROUP, ns),
            **common,
        )
        pod_watch = ObjectWatch(
            lambda **kw: self.core.list_namespaced_pod(ns, label_selector=sel, **kw),
            Call("watch", "pods", "", ns),
            on_event=on_pod_event,
            **common,
        )
        return job_watch, pod_watch

    def wait(self, ref: AttemptRef, timeout: float | None = None) -> AttemptStatus:
        """Follow the job and its pods through watches until the attempt finishes.

        A failure decided from pod evidence while the job still runs (lost node, image that
        cannot be pulled, gang unschedulable too long) ends the job here, so no half-started
        gang keeps holding GPUs; its pod logs are archived to the store first.
        """
        ns = self._ns(ref)
        changed = threading.Event()
        seen: list[kube_status.PodVerdict] = []
        job_watch, pod_watch = self._watches(ref, ns, changed, seen)
        deadline = None if timeout is None else time.monotonic() + timeout
        job: Obj | None = None
        st = AttemptStatus(Phase.PENDING, reason="Listing")
        try:
            job_watch.start()
            pod_watch.start()
            while True:
                if _both_listed(job_watch, pod_watch):
                    jobs = job_watch.objects()
                    if not jobs:
                        return self._vanished(ref)
                    job = jobs[0]
                    st = self._derive(job, pod_watch.objects(), list(seen))
                    if st.phase.finished:
                        break
                if deadline is not None and time.monotonic() >= deadline:
                    return st
                changed.wait(self._wake_in(deadline, pod_watch.objects()))
                changed.clear()
        finally:
            job_watch.stop()
            pod_watch.stop()
        # The job's watch can run ahead of the pods' watch (a Succeeded or Failed job whose pods,
        # or their exit codes, the pod watch has not delivered yet): one fresh list settles it.
        pods = self._settled_pods(ref, ns, pod_watch.objects())
        if st.phase == Phase.FAILED and st.exit_code is None and job is not None and not seen:
            st = self._derive(job, pods)
        self.archive_logs(ref, pods)
        if job is not None and not kube_status.job_finished(job):
            log.warning("ending attempt failed on pod evidence", job=ref.name, reason=st.reason)
            self._delete(ref, ns)
        return st

    def _settled_pods(self, ref: AttemptRef, ns: str, cached: list[Obj]) -> list[Obj]:
        """The attempt's pods from a fresh list; the watch's cache when the list fails."""
        try:
            return self._list_pods(ref, ns)
        except SailError as err:
            log.warning("could not list pods; using the watch's view", job=ref.name, error=str(err))
            return cached

    def _vanished(self, ref: AttemptRef) -> AttemptStatus:
        """The job is gone while we wait: cancelled by us, or deleted by someone else."""
        st = self._missing(ref)
        if st.phase == Phase.CANCELLED:
            return st
        return AttemptStatus(
            Phase.CANCELLED, reason="Deleted", message=f"PyTorchJob {ref.name!r} was deleted"
        )

    def _wake_in(self, deadline: float | None, pods: list[Obj]) -> float:
        wake = self.recheck_seconds
        if deadline is not None:
            wake = min(wake, max(0.0, deadline - time.monotonic()))
        due = kube_status.next_deadline(
            pods, unschedulable_after=self.unschedulable_after, node_lost_after=self.node_lost_after
        )
        if due is not None:
            wake = min(wake, max(0.05, due - self.clock()))
        return max(wake, 0.01)

    def _delete(self, ref: AttemptRef, ns: str) -> None:
        body = k8s.V1DeleteOptions(propagation_policy="Foreground")
        self._job_call(  # an absent job is already deleted
            lambda: self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, ref.name, body=body
            ),
            Call("delete", PLURAL, GROUP, ns, ref.name),
        )

    def cancel(self, ref: AttemptRef) -> None:
        """Archive the pods' logs, then delete the job with foreground propagation."""
        ns = self._ns(ref)
        self._cancelled.add(ref.name)
        self.archive_logs(ref)
        self._delete(ref, ns)
        log.info("cancelled PyTorchJob", job=ref.name, namespace=ns)

    # -- logs ------------------------------------------------------------------------------

    def _open_log(
        self,
        pod: str,
        ns: str,
        *,
        follow: bool = False,
        since_time: str | None = None,
        deadline_s: float | None = None,
    ) -> tuple[Any | None, int]:
        """(the streaming urllib3 response, 200), or (None, 400 or 404) when the pod has no log to read
        (its container is not running yet / any more, or the pod is gone)."""
        call = Call("get", "pods/log", "", ns, pod)
        query: list[tuple[str, str]] = [("container", CONTAINER)]
        if follow:
            # Follows ask for timestamps so a reconnect can resume at sinceTime and skip replays.
            query += [("follow", "true"), ("timestamps", "true")]
        if since_time:
            query.append(("sinceTime", since_time))
        try:
            # The generated read_namespaced_pod_log has no sinceTime parameter: call the path directly.
            resp = call_api(
                lambda: self.api.call_api(
                    "/api/v1/namespaces/{namespace}/pods/{name}/log",
                    "GET",
                    {"namespace": ns, "name": pod},
                    query,
                    {"Accept": "text/plain"},
                    response_type="str",
                    auth_settings=["BearerToken"],
                    _return_http_data_only=True,
                    _preload_content=False,
                ),
                call,
                host=self.host,
                deadline_s=self.retry_seconds if deadline_s is None else deadline_s,
                translate=False,
            )
        except ApiException as err:
            if err.status in (400, 404):
                return None, err.status
            raise final_error(err, call, self.host) from None
        return resp, 200

    def _read_log(self, pod: str, ns: str) -> Iterator[str]:
        """The pod's whole current log, line by line."""
        resp, _ = self._open_log(pod, ns)
        if resp is not None:
            yield from _stream_lines(resp, pod)

    def _follow_log(self, ref: AttemptRef, pod: str, ns: str, rank: int) -> Iterator[str]:
        """Follow a pod log across dropped streams, each line once, until the container ends.

        A broken stream is re-opened at sinceTime (the last second printed) and the replayed
        lines are skipped; reconnects back off and give up after retry_seconds without a new
        line. A pod deleted meanwhile ends in the archived log (the lines not printed yet).
        """
        cursor = LogCursor()
        backoff = Backoff(self.retry_seconds)
        first = True
        while True:
            opened = time.monotonic()
            try:
                resp, status = self._open_log(
                    pod, ns, follow=True, since_time=cursor.since_time(), deadline_s=backoff.remaining()
                )
            except BackendError as err:
                if first:
                    raise
                raise BackendError(
                    f"lost the log stream of pod {pod!r} after {cursor.printed} line(s) "
                    f"and could not reconnect: {err}"
                ) from None
            if resp is None:
                if not first and cursor.clean_end:
                    return  # the last stream ended cleanly: nothing was missed
                if status == 404:  # the pod is gone: the rest is in the archive
                    yield from cursor.skip_printed(self._archived_logs(ref, rank))
                else:
                    log.warning("pod log unavailable: its container is not running", pod=pod)
                return
            first = False
            cursor.reconnect()
            new = 0
            broke: StreamBroke | None = None
            try:
                for raw in _stream_lines(resp, pod):
                    line = cursor.accept(raw)
                    if line is not None:
                        new += 1
                        yield line
            except StreamBroke as err:
                broke = err
            cursor.clean_end = broke is None
            lasted = time.monotonic() - opened
            if new or lasted >= HEALTHY_STREAM_S:
                backoff.reset()
            if broke is None:
                # A follow ends cleanly when the container exits. A quick clean end that brought
                # nothing new is a re-read of a finished log (its status may lag): done. A longer
                # one is a server-side timeout on a running container: follow again.
                if new == 0 and lasted < HEALTHY_STREAM_S and cursor.reconnects > 1:
                    return
                continue
            wait_s = backoff.next_wait()
            if wait_s is None:
                raise BackendError(
                    f"the log stream of pod {pod!r} kept breaking ({broke.cause}): no new line "
                    f"after {backoff.failures} reconnect(s) in {backoff.elapsed():.1f}s"
                )
            log.warning(
                "pod log stream broke, reconnecting", pod=pod, wait_s=round(wait_s, 3), error=broke.cause
            )
            time.sleep(wait_s)

    def _ranked_pods(self, ref: AttemptRef, ns: str, pods: list[Obj] | None = None) -> list[tuple[int, str]]:
        """(node rank, pod name) of the attempt's pods, rank 0 first."""
        if pods is None:
            pods = self._list_pods(ref, ns)
        labels = [(p.get("metadata") or {}).get("labels") or {} for p in pods]
        has_master = any(str(lb.get(LABEL_REPLICA_TYPE, "")).lower() == "master" for lb in labels)
        return sorted(
            (replica_rank(lb, has_master), str(p["metadata"]["name"]))
            for lb, p in zip(labels, pods, strict=True)
        )

    def logs(self, ref: AttemptRef, *, follow: bool = False, rank: int | None = None) -> Iterator[str]:
        """Live pod logs (rank 0 first), else the archive; follow streams one rank (0 by default),
        waiting (by watch) for its pod to start."""
        ns = self._ns(ref)
        if follow:
            rank = 0 if rank is None else rank
            pod = self._started_pod(ref, ns, rank)
            if pod is not None:
                yield from self._follow_log(ref, pod, ns, rank)
            else:
                yield from self._archived_logs(ref, rank)
            return
        chosen = [(r, p) for r, p in self._ranked_pods(ref, ns) if rank is None or r == rank]
        if chosen:
            for r, pod in chosen:
                prefix = f"[rank {r}] " if len(chosen) > 1 else ""
                for line in self._read_log(pod, ns):
                    yield prefix + line
            return
        yield from self._archived_logs(ref, rank)

    def _started_pod(self, ref: AttemptRef, ns: str, rank: int) -> str | None:
        """The rank's pod once its container has started; None when the job is gone without it.

        An attempt that fails before that (image pull, unschedulable...) raises BackendError.
        """
        changed = threading.Event()
        seen: list[kube_status.PodVerdict] = []
        job_watch, pod_watch = self._watches(ref, ns, changed, seen)
        try:
            job_watch.start()
            pod_watch.start()
            while True:
                listed = _both_listed(job_watch, pod_watch)
                pods = pod_watch.objects()
                if listed:
                    jobs = job_watch.objects()
                    if not jobs:
                        return None
                    by_name = {p["metadata"]["name"]: p for p in pods}
                    for r, name in self._ranked_pods(ref, ns, pods):
                        phase = (by_name[name].get("status") or {}).get("phase")
                        if r == rank and phase in ("Running", "Succeeded", "Failed"):
                            return name
                    st = self._derive(jobs[0], pods, list(seen))
                    if st.phase == Phase.FAILED:
                        raise BackendError(f"{ref.name} failed before rank {rank} started: {st.message}")
                    if st.phase.finished:
                        return None
                changed.wait(self._wake_in(None, pods))
                changed.clear()
        finally:
            job_watch.stop()
            pod_watch.stop()

    def _archived_logs(self, ref: AttemptRef, rank: int | None) -> Iterator[str]:
        if self.store is None:
            raise BackendError(f"no pods left for {ref.name!r} and no store configured to read archived logs")
        prefix = attempt_logs_prefix(ref.run, ref.stage, ref.attempt)
        keys = sorted(self.store.list(prefix), key=_rank_of)
        if rank is not None:
            keys = [k for k in keys if _rank_of(k) == rank]
        if not keys:
            which = f" rank {rank}" if rank is not None else ""
            raise BackendError(
                f"no{which} logs for {ref.name!r}: its pods are gone and nothing is archived "
                f"under {self.store.describe(prefix)}"
            )
        for key in keys:
            prefix_line = f"[rank {_rank_of(key)}] " if len(keys) > 1 else ""
            for line in self.store.get(key).decode("utf-8", errors="replace").splitlines():
                yield prefix_line + line

    def archive_logs(self, ref: AttemptRef, pods: list[Obj] | None = None) -> list[str]:
        """Copy each pod's log to runs/<run>/<stage>/attempts/<k>/logs/rank-<r>.log (best effort).

        `pods`: the attempt's pods when the caller has them already (saves a list request).
        """
        if self.store is None:
            return []
        written = []
        try:
            for r, pod in self._ranked_pods(ref, self._ns(ref), pods):
                text = "".join(line + "\n" for line in self._read_log(pod, self._ns(ref)))
                if text:
                    key = rank_log_key(ref.run, ref.stage, ref.attempt, r)
                    self.store.put(key, text.encode("utf-8"))
                    written.append(key)
        except SailError as err:  # archiving must never turn a finished attempt into an error
            log.warning("could not archive pod logs", job=ref.name, error=str(err))
        return written

    # -- extras ----------------------------------------------------------------------------

    def kubectl_hints(self, ref: AttemptRef) -> list[str]:
        ns = self._ns(ref)
        sel = label_selector(ref.run, ref.stage, ref.attempt)
        return [
            f"kubectl get pytorchjobs -n {ns} -l {label_selector(ref.run)}",
            f"kubectl logs -n {ns} -f -l {sel},{LABEL_REPLICA_TYPE}=master",
        ]

    def run_lock(self, run: str, holder: str, lease_seconds: float = 30.0) -> RunLock:
        from sailk8s.backends.kube_lease import LeaseRunLock

        return LeaseRunLock(self, run, holder, lease_seconds)


def _both_listed(*watches: ObjectWatch) -> bool:
    """Whether every watch has its first list; a watch that failed raises its error here."""
    for w in watches:
        if w.error is not None:
            raise w.error
    return all(w.listed.is_set() for w in watches)


def _stream_lines(resp: Any, pod: str) -> Iterator[str]:
    """Lines of a log response; a broken stream raises BackendError, and its socket is closed."""
    done = False
    try:
        yield from iter_resp_lines(resp)
        done = True
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise StreamBroke(pod, one_line(err)) from None
    finally:
        # An unfinished body must not go back to the connection pool: close the socket.
        if done:
            resp.release_conn()
        else:
            resp.close()


def _rank_of(key: str) -> int:
    stem = key.rsplit("/", 1)[-1].removeprefix("rank-").removesuffix(".log")
    return int(stem) if stem.isdigit() else 1 << 30
