"""A simulated Kubeflow Training Operator v1 for PyTorchJobs on the fake API server."""

from __future__ import annotations

import contextlib
import copy
import threading
from typing import TYPE_CHECKING, Any

from sailk8s.testing.apierrors import ApiError
from sailk8s.testing.behaviors import PodBehavior, ScriptEntry
from sailk8s.testing.events import record_event
from sailk8s.testing.executor import Rewriter, default_rewrite
from sailk8s.testing.history import WatchEvent
from sailk8s.testing.jobstatus import JobStatusWriter, has_condition, job_pods, set_condition
from sailk8s.testing.kubelet import FakeKubelet
from sailk8s.testing.podspecs import REPLICA_ORDER, headless_service, replica_pod
from sailk8s.testing.trainjobs import FakeTrainJobController

if TYPE_CHECKING:
    from sailk8s.testing.apiserver import FakeKubernetes

Obj = dict[str, Any]


class FakeTrainingOperator:
    """Reconciles PyTorchJobs, and TrainJobs (trainjobs.FakeTrainJobController: Kubeflow Trainer v2),
    in a FakeKubernetes from a background thread (in-process, no HTTP).

        with FakeKubernetes(clock=SimulatedClock(speed=600)) as kube, \\
                FakeTrainingOperator(kube, mode="simulate", duration=600):   # 10 simulated minutes
            ...  # create a PyTorchJob: pods <job>-master-0, <job>-worker-N appear, run, succeed

    It creates the pods (operator labels, template labels, MASTER_ADDR/PORT, WORLD_SIZE, RANK,
    PET_* env, owner references: podspecs), moves the job Created -> Running -> Succeeded/Failed
    with the real operator's reasons and messages, honours restartPolicy ExitCode (exit >= 128:
    recreate the pod; 1-127: fail the job), OnFailure/Always (restart in place),
    runPolicy.backoffLimit, activeDeadlineSeconds, cleanPodPolicy and ttlSecondsAfterFinished
    (jobstatus). Its pods run on a FakeKubelet, which holds the modes ("simulate", "execute", and
    "container": each pod in a podman container of its own image, see containers.py).

    Pod faults: `operator.script(behaviors.oom_killed(after=5), job="r1-*", replica="master")`
    arms a behaviour for future pods; `operator.inject("j-master-0", behaviors.evicted())` acts
    on a live pod. See `sailk8s.testing.behaviors` for evicted, preempted, node_lost, oom_killed,
    image_pull_failure, crash_loop, unschedulable, hang, fail, succeed.
    """

    def __init__(
        self,
        kube: FakeKubernetes,
        *,
        mode: str = "simulate",
        duration: float = 1.0,
        startup: float = 0.0,
        tick: float = 0.02,
        namespace: str | None = None,
        cwd: str | None = None,
        extra_env: dict[str, str] | None = None,
        execute_replicas: str = "master",
        rewrite: Rewriter = default_rewrite,
        kill_grace: float = 2.0,
        podman: str = "podman",
    ) -> None:
        self.kube = kube
        self.clock = kube.clock
        self.tick = tick
        self.namespace = namespace
        self.kubelet = FakeKubelet(
            kube,
            mode=mode,
            duration=duration,
            startup=startup,
            cwd=cwd,
            extra_env=extra_env,
            execute_replicas=execute_replicas,
            rewrite=rewrite,
            kill_grace=kill_grace,
            podman=podman,
        )
        self.job_status = JobStatusWriter(kube, self.kubelet)
        self.trainjobs = FakeTrainJobController(kube, self.kubelet)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._jobs = kube.type("pytorchjobs", "kubeflow.org")
        self._pods = kube.type("pods")
        self._services = kube.type("services")
        self.errors: list[str] = []  # unexpected reconcile errors, for tests to assert empty

    @property
    def scripts(self) -> list[ScriptEntry]:
        """The behaviours armed for future pods."""
        return self.kubelet.scripts

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> FakeTrainingOperator:
        """Start reconciling in a daemon thread."""
        self.kube.state.subscribe(self._on_change)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="fake-training-operator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop reconciling and kill every process still running."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.kube.state.unsubscribe(self._on_change)
        self.kubelet.stop()

    def __enter__(self) -> FakeTrainingOperator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- fault injection ----------------------------------------------------------------------
    def script(
        self,
        behavior: PodBehavior,
        *,
        job: str = "*",
        replica: str | None = None,
        index: int | None = None,
        times: int | None = 1,
        namespace: str | None = None,
    ) -> ScriptEntry:
        """Play `behavior` on the next `times` new pods matching job (glob), replica and index."""
        return self.kubelet.script(ScriptEntry(behavior, job, replica, index, times, namespace=namespace))

    def inject(self, pod: str, behavior: PodBehavior, namespace: str = "default") -> None:
        """Switch a live pod to a fault `behavior` now (its `after` counts from this moment)."""
        self.kubelet.inject(pod, behavior, namespace)

    # -- helpers for tests --------------------------------------------------------------------
    def pause(self, pod: str, namespace: str = "default", paused: bool = True) -> bool:
        """Freeze (paused=False: thaw) a live pod's processes; it stays Running (a test's gate).
        False when the pod has no live process."""
        return self.kubelet.pause(pod, namespace, paused)

    def wait_for_job(
        self, name: str, condition: str = "Succeeded", namespace: str = "default", timeout: float = 30.0
    ) -> Obj:
        """Block until the job has `condition` True; TimeoutError names the conditions it has."""
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while not deadline.is_set():
                job = self.kube.state.find(self._jobs, namespace, name)
                conditions = (job or {}).get("status", {}).get("conditions") or []
                if job is not None and has_condition(conditions, condition):
                    return job
                deadline.wait(0.02)
        finally:
            timer.cancel()
        seen = [c.get("type") for c in conditions if c.get("status") == "True"]
        raise TimeoutError(
            f"PyTorchJob {namespace}/{name} has no {condition} condition after {timeout}s "
            f"(conditions: {seen})"
        )

    def restarts(self, job_uid: str) -> int:
        """How many times the operator recreated pods of a job (restartPolicy ExitCode; a TrainJob's
        signal deaths under its runtime's podFailurePolicy)."""
        return self.job_status.restarts(job_uid) + self.trainjobs.restarts(job_uid)

    # -- reconcile loop -----------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile_once()
            except Exception as exc:  # keep reconciling, like a controller would; tests read .errors
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.tick)

    def reconcile_once(self) -> None:
        """One pass over every PyTorchJob and TrainJob (public so tests can step deterministically)."""
        if self.kube.registry.trainer_installed:
            self.trainjobs.reconcile_all(self.namespace)
        if not self.kube.crd_installed:
            return
        jobs, _ = self.kube.state.list(self._jobs, self.namespace)
        for job in jobs:
            try:
                self._reconcile_job(job)
            except ApiError as err:
                if err.code != 404:  # the job or pod went away under us: next pass sees it
                    raise

    def _on_change(self, event: WatchEvent) -> None:
        """A pod deleted by anyone (user, GC, eviction) has its process killed."""
        if event.type == "DELETED" and event.rtype.kind == "Pod":
            self.kubelet.forget(event.obj["metadata"]["uid"])

    def _reconcile_job(self, job: Obj) -> None:
        meta = job["metadata"]
        ns, name = meta["namespace"], meta["name"]
        status = copy.deepcopy(job.get("status") or {})
        conditions = status.get("conditions") or []
        now = self.clock.timestamp()
        label = f"PyTorchJob {ns}/{name}"
        if has_condition(conditions, "Succeeded") or has_condition(conditions, "Failed"):
            self.job_status.after_finish(job)
            return
        specs: Obj = (job.get("spec") or {}).get("pytorchReplicaSpecs") or {}
        if "Master" not in specs:
            set_condition(
                status,
                "Failed",
                "PyTorchJobFailed",
                f"{label} is invalid: spec.pytorchReplicaSpecs.Master is required",
                now,
            )
            self.job_status.write(job, status)
            return
        if not has_condition(conditions, "Created"):
            set_condition(status, "Created", "PyTorchJobCreated", f"{label} is created.", now)
            status.setdefault("startTime", now)
            status.setdefault("replicaStatuses", {})
            self.job_status.write(job, status)
            record_event(self.kube, job, "Normal", "PyTorchJobCreated", f"{label} is created.")
        pods = job_pods(self.kube, ns, name)
        for replica in REPLICA_ORDER:
            spec = specs.get(replica)
            if not spec:
                continue
            for index in range(int(spec.get("replicas", 1))):
                pod_name = f"{name}-{replica.lower()}-{index}"
                if pod_name not in pods:
                    pods[pod_name] = self._create_pod(job, replica, index, spec)
        master = pods.get(f"{name}-master-0")
        for pod in pods.values():
            self.kubelet.advance(pod, job, master)
        self.job_status.update(job, status, specs)

    def _create_pod(self, job: Obj, replica: str, index: int, spec: Obj) -> Obj:
        """Create the replica's pod and its headless Service, with the operator's Event."""
        pod = replica_pod(job, replica, index, spec)
        created = self.kube.state.create(self._pods, job["metadata"]["namespace"], pod)
        ns, name = created["metadata"]["namespace"], created["metadata"]["name"]
        if self.kube.state.find(self._services, ns, name) is None:
            with contextlib.suppress(ApiError):
                self.kube.state.create(self._services, ns, headless_service(job, created))
        record_event(self.kube, job, "Normal", "SuccessfulCreatePod", f"Created pod: {name}")
        return created
