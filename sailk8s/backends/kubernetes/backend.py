"""KubernetesBackend: each stage attempt is a Kubeflow PyTorchJob (kubeflow.org/v1) or a Trainer v2
TrainJob (trainer.kubeflow.org/v1alpha1), as the pipeline's kubernetes.job_api says."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog

from sailk8s.backends.base import AttemptRef, AttemptStatus, Backend, Phase, RunLock
from sailk8s.backends.kubernetes import status as kube_status
from sailk8s.backends.kubernetes.client import Configuration, KubeClient
from sailk8s.backends.kubernetes.errors import KubeApiError
from sailk8s.backends.kubernetes.jobapi import job_api as job_api_named
from sailk8s.backends.kubernetes.jobkinds import CLUSTER_RUNTIME_KIND
from sailk8s.backends.kubernetes.lease import LeaseRunLock
from sailk8s.backends.kubernetes.logs import PodLogs, ranked_pods
from sailk8s.backends.kubernetes.manifest import (
    ANNOTATION_SPEC_HASH,
    LABEL_RUN_ID,
    label_selector,
)
from sailk8s.backends.kubernetes.trainvalidation import trainjob_webhook_errors
from sailk8s.backends.kubernetes.validation import ManifestInvalid
from sailk8s.backends.kubernetes.watch import ObjectWatch
from sailk8s.errors import BackendError, SailError
from sailk8s.settings import Settings
from sailk8s.spec import Pipeline, Stage
from sailk8s.store.base import ObjectStore

log = structlog.get_logger(__name__)
Obj = dict[str, Any]


class KubernetesBackend(Backend):
    """Runs stage attempts as PyTorchJobs or TrainJobs; see the Backend contract for each method.

    Which API is one JobApi (jobapi.py): manifests come from its pure builder, statuses from its
    pure status function, and every API request goes through one KubeClient; the rest (watches,
    adoption, cancel, logs and their archive) is the same for both.
    """

    name = "kubernetes"

    def __init__(
        self,
        *,
        namespace: str | None = None,
        settings: Settings | None = None,
        configuration: Configuration | None = None,
        store: ObjectStore | None = None,
        retry_seconds: float = 60.0,
        unschedulable_after: float = kube_status.DEFAULT_UNSCHEDULABLE_AFTER,
        node_lost_after: float = kube_status.DEFAULT_NODE_LOST_AFTER,
        watch_timeout: int = 3600,
        recheck_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
        job_api: str = "pytorchjob",
    ) -> None:
        self.settings = settings or Settings()
        self.namespace = namespace or self.settings.namespace
        self.api = job_api_named(job_api)
        self.kind = self.api.kind
        self.client = KubeClient(
            configuration, context=self.settings.kube_context, retry_seconds=retry_seconds,
            job=self.api.resource,
        )
        self.host = self.client.host
        self.store = store
        self.pod_logs = PodLogs(self.client, store, self.api.container)
        self.retry_seconds = retry_seconds
        self.unschedulable_after = unschedulable_after
        self.node_lost_after = node_lost_after
        self.replace_timeout = 300.0  # seconds for an earlier run's job to be deleted
        self.watch_timeout = watch_timeout
        # Local re-evaluation interval while waiting (no API request: only time-based verdicts).
        self.recheck_seconds = recheck_seconds
        self.clock = clock
        self._namespaces: dict[str, str] = {}
        self._cancelled: set[str] = set()
        self._runtimes_ok: set[tuple[str, str, str]] = set()  # (kind, namespace, name) found and accepting

    @classmethod
    def for_pipeline(
        cls, pipeline: Pipeline, settings: Settings | None = None, **kwargs: Any
    ) -> KubernetesBackend:
        """A backend in the pipeline's namespace (else SAIL_NAMESPACE), for its kubernetes.job_api."""
        settings = settings or Settings()
        kwargs.setdefault("job_api", pipeline.kubernetes.job_api)
        return cls(namespace=pipeline.namespace or settings.namespace, settings=settings, **kwargs)

    # -- helpers ---------------------------------------------------------------------------

    def _ns(self, ref: AttemptRef) -> str:
        return self._namespaces.get(ref.name, self.namespace)

    def _list_pods(self, ref: AttemptRef, namespace: str) -> list[Obj]:
        pods = self.client.list_pods(namespace, label_selector(ref.run, ref.stage, ref.attempt))
        return sorted(pods, key=kube_status.pod_order_key)

    def _derive(
        self, job: Obj | None, pods: list[Obj], seen: list[kube_status.PodVerdict] | None = None
    ) -> AttemptStatus:
        return self.api.derive_status(
            job,
            pods,
            now=self.clock(),
            unschedulable_after=self.unschedulable_after,
            node_lost_after=self.node_lost_after,
            seen=seen or (),
        )

    # -- Backend ---------------------------------------------------------------------------

    def manifest(self, pipeline: Pipeline, stage: Stage, attempt: int, run_id: str = "") -> Obj:
        """The exact job this backend submits for the attempt (pure, no API call)."""
        return self.api.build(
            pipeline,
            stage,
            attempt,
            namespace=pipeline.namespace or self.namespace,
            store_endpoint=self.settings.store_endpoint,
            store_region=self.settings.store_region,
            run_id=run_id,
        )

    def submit(self, pipeline: Pipeline, stage: Stage, attempt: int, run_id: str = "") -> AttemptRef:
        """Create the job; on 409 adopt the existing one if it is this run's and its spec hash
        matches, else (an earlier run of the same name) delete it and create ours."""
        manifest = self.manifest(pipeline, stage, attempt, run_id)
        self.api.check(manifest, pipeline)
        self._check_runtime(manifest)
        name, ns = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
        ref = AttemptRef(pipeline.run, stage.name, attempt, run_id)
        if self.client.create_job(ns, manifest):
            log.info("submitted job", kind=self.kind, job=name, namespace=ns)
        else:
            existing = self.client.get_job(ns, name)
            if existing is not None and run_id and _run_id_of(existing) != run_id:
                self._replace(manifest, existing, name, ns)
            else:
                self._adopt(manifest, name, ns)
        self._namespaces[ref.name] = ns
        self._cancelled.discard(ref.name)
        return ref

    def _check_runtime(self, manifest: Obj) -> None:
        """A TrainJob's runtime must exist and accept the job before the job is created: a message
        naming the fix now, instead of the trainer webhook's refusal (PyTorchJobs have none)."""
        ref = (manifest.get("spec") or {}).get("runtimeRef")
        if ref is None:
            return
        kind, name = str(ref.get("kind", CLUSTER_RUNTIME_KIND)), str(ref.get("name"))
        ns = "" if kind == CLUSTER_RUNTIME_KIND else manifest["metadata"]["namespace"]
        if (kind, ns, name) in self._runtimes_ok:
            return
        try:
            runtime = self.client.get_runtime(kind, ns, name)
        except KubeApiError as err:  # 403: no read grant (the platform's RBAC); the webhook still checks
            log.warning("cannot read the TrainJob's runtime; submitting unchecked", runtime=name, kind=kind,
                        status=err.status)
            return
        if runtime is None:
            where = f" in namespace {ns!r}" if ns else ""
            raise BackendError(
                f"{kind} {name!r} not found{where}: install it (helm: kubeflow.trainer.runtime.install=true) "
                "or set kubernetes.runtime in the pipeline file to an existing runtime"
            )
        problems = trainjob_webhook_errors(manifest, runtime)
        if problems:
            raise ManifestInvalid(manifest["metadata"]["name"], problems, self.kind)
        self._runtimes_ok.add((kind, ns, name))

    def _replace(self, manifest: Obj, existing: Obj, name: str, ns: str) -> None:
        """Delete another run's job of this name (never adopted), then create ours."""
        ours = manifest["metadata"]["labels"][LABEL_RUN_ID]
        log.warning("deleting a job of an earlier run with the same name", kind=self.kind, job=name,
                    namespace=ns, its_run_id=_run_id_of(existing) or "none", run_id=ours)
        self.client.delete_job(ns, name)
        deadline = time.monotonic() + self.replace_timeout
        while self.client.get_job(ns, name) is not None:  # foreground deletion: its pods go first
            if time.monotonic() > deadline:
                raise BackendError(f"{self.kind} {name!r} of an earlier run was not deleted within "
                                   f"{self.replace_timeout:g}s; delete it (kubectl delete "
                                   f"{self.kind.lower()} {name} -n {ns}) and run again")
            time.sleep(0.5)
        self.client.create_job(ns, manifest, exist_ok=False)
        log.info("submitted job", kind=self.kind, job=name, namespace=ns)

    def _adopt(self, manifest: Obj, name: str, ns: str) -> None:
        existing = self.client.get_job(ns, name)
        if existing is None:  # deleted between our create and get: a rare race, create again
            self.client.create_job(ns, manifest, exist_ok=False)
            return
        want = manifest["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
        have = ((existing.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_SPEC_HASH)
        if have != want:
            raise BackendError(
                f"{self.kind} {name!r} already exists in namespace {ns!r} with a different spec "
                f"(spec hash {have or 'none'} != {want}): it was not created from this pipeline file; "
                f"delete it (kubectl delete {self.kind.lower()} {name} -n {ns}) or use another run name"
            )
        log.info("adopted existing job", kind=self.kind, job=name, namespace=ns)

    def status(self, ref: AttemptRef) -> AttemptStatus:
        ns = self._ns(ref)
        job = self.client.get_job(ns, ref.name)
        if job is None:
            return self._missing(ref)
        if ref.run_id and _run_id_of(job) != ref.run_id:
            return AttemptStatus(Phase.UNKNOWN, reason="OtherRun",
                                 message=f"{self.kind} {ref.name!r} belongs to another run "
                                         f"(run id {_run_id_of(job) or 'none'}, not {ref.run_id})")
        return self._derive(job, self._list_pods(ref, ns))

    def _missing(self, ref: AttemptRef) -> AttemptStatus:
        if ref.name in self._cancelled:
            return AttemptStatus(Phase.CANCELLED, reason="Cancelled", message="cancelled")
        return AttemptStatus(
            Phase.UNKNOWN,
            reason="NotFound",
            message=f"no {self.kind} {ref.name!r} in namespace {self._ns(ref)!r}",
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
        job_watch = ObjectWatch(self.client.job_listing(ns, ref.name), **common)
        pod_watch = ObjectWatch(self.client.pod_listing(ns, sel), on_event=on_pod_event, **common)
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
        self.pod_logs.archive(ref, ns, pods)
        if job is not None and not kube_status.job_finished(job):
            log.warning("ending attempt failed on pod evidence", job=ref.name, reason=st.reason)
            self.client.delete_job(ns, ref.name)
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
            Phase.CANCELLED, reason="Deleted", message=f"{self.kind} {ref.name!r} was deleted"
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

    def cancel(self, ref: AttemptRef) -> None:
        """Archive the pods' logs, then delete the job with foreground propagation."""
        ns = self._ns(ref)
        self._cancelled.add(ref.name)
        self.pod_logs.archive(ref, ns)
        self.client.delete_job(ns, ref.name)
        log.info("cancelled job", kind=self.kind, job=ref.name, namespace=ns)

    def logs(self, ref: AttemptRef, *, follow: bool = False, rank: int | None = None) -> Iterator[str]:
        """Live pod logs (rank 0 first), else the archive; follow streams one rank (0 by default),
        waiting (by watch) for its pod to start."""
        ns = self._ns(ref)
        if follow:
            rank = 0 if rank is None else rank
            pod = self._started_pod(ref, ns, rank)
            if pod is not None:
                yield from self.pod_logs.follow(ref, ns, pod, rank)
            else:
                yield from self.pod_logs.archived(ref, rank)
            return
        chosen = [(r, p) for r, p in ranked_pods(self._list_pods(ref, ns)) if rank is None or r == rank]
        if chosen:
            for r, pod in chosen:
                prefix = f"[rank {r}] " if len(chosen) > 1 else ""
                for line in self.pod_logs.read(ns, pod):
                    yield prefix + line
            return
        yield from self.pod_logs.archived(ref, rank)

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
                    for r, name in ranked_pods(pods):
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

    def run_lock(self, run: str, holder: str, lease_seconds: float = 30.0) -> RunLock:
        """A Lease named after the run in this backend's namespace (see LeaseRunLock)."""
        return LeaseRunLock(self.client, self.namespace, run, holder, lease_seconds, clock=self.clock)


def _run_id_of(job: Obj) -> str:
    """The run id a job was made for ('' for one made before run ids)."""
    return str(((job.get("metadata") or {}).get("labels") or {}).get(LABEL_RUN_ID, ""))


def _both_listed(*watches: ObjectWatch) -> bool:
    """Whether every watch has its first list; a watch that failed raises its error here."""
    for w in watches:
        if w.error is not None:
            raise w.error
    return all(w.listed.is_set() for w in watches)
