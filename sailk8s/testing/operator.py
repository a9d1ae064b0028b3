"""A simulated Kubeflow Training Operator v1 for PyTorchJobs on the fake API server.

    with FakeKubernetes(clock=SimulatedClock(speed=600)) as kube, \\
            FakeTrainingOperator(kube, mode="simulate", duration=600):   # 10 simulated minutes
        ...  # create a PyTorchJob: pods <job>-master-0, <job>-worker-N appear, run, succeed

It creates the pods (operator labels, template labels, MASTER_ADDR/PORT, WORLD_SIZE, RANK,
PET_* env, owner references), moves the job Created -> Running -> Succeeded/Failed with the
real operator's reasons and messages, honours restartPolicy ExitCode (exit >= 128: recreate
the pod; 1-127: fail the job), OnFailure/Always (restart in place), runPolicy.backoffLimit,
activeDeadlineSeconds, cleanPodPolicy and ttlSecondsAfterFinished.

Modes: "simulate" (pods succeed after `duration` clock seconds, or follow a script) and
"execute" (each pod's container command runs as a local process with the container env,
secrets resolved, plus `extra_env`; its output is the pod log). In execute mode only the
master runs, as a one-node world (`--nnodes` rewritten to 1) unless `execute_replicas="all"`;
non-executed workers mirror the master. Deleting a job or pod kills its processes.

Pod faults: `operator.script(behaviors.oom_killed(after=5), job="r1-*", replica="master")`
arms a behaviour for future pods; `operator.inject("j-master-0", behaviors.evicted())` acts
on a live pod. See `sailk8s.testing.behaviors` for evicted, preempted, node_lost, oom_killed,
image_pull_failure, crash_loop, unschedulable, hang, fail, succeed.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sailk8s.testing import podstatus
from sailk8s.testing.behaviors import Action, PodBehavior, ScriptEntry, run
from sailk8s.testing.executor import PodProcess, Rewriter, default_rewrite, single_node
from sailk8s.testing.state import ApiError, WatchEvent

if TYPE_CHECKING:
    from sailk8s.testing.apiserver import FakeKubernetes

Obj = dict[str, Any]

JOB_NAME = "training.kubeflow.org/job-name"
REPLICA_TYPE = "training.kubeflow.org/replica-type"
REPLICA_INDEX = "training.kubeflow.org/replica-index"
OPERATOR_NAME = "training.kubeflow.org/operator-name"
JOB_ROLE = "training.kubeflow.org/job-role"
DEFAULT_PORT = 23456
REPLICA_ORDER = ("Master", "Worker")


@dataclass
class _PodRun:
    """What the operator (and the 'kubelet' it plays) remembers about one pod incarnation."""

    namespace: str
    name: str
    uid: str
    job: str
    replica: str
    index: int
    behavior: PodBehavior
    created_at: float
    started_at: float | None = None
    started_stamp: str = ""
    node: str = ""
    ip: str = ""
    process: PodProcess | None = None
    executes: bool = False
    restarts: int = 0
    marked: bool = False  # one-shot states (node lost, unschedulable) already written
    done: bool = False


def _has(conditions: list[Obj], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


def set_condition(status: Obj, kind: str, reason: str, message: str, now: str) -> None:
    """Set a job condition the way the operator does (Running and Restarting exclude each other)."""
    conditions: list[Obj] = status.setdefault("conditions", [])
    for cond in conditions:
        if cond.get("type") == kind and cond.get("status") == "True" and cond.get("reason") == reason:
            return
    exclusive = {"Running": {"Restarting"}, "Restarting": {"Running"}}.get(kind, set())
    kept = [c for c in conditions if c.get("type") != kind and c.get("type") not in exclusive]
    if kind in ("Succeeded", "Failed"):
        for cond in kept:
            if cond.get("type") == "Running":
                cond["status"] = "False"
    kept.append(
        {
            "type": kind,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastUpdateTime": now,
            "lastTransitionTime": now,
        }
    )
    status["conditions"] = kept


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeTrainingOperator:
    """Reconciles PyTorchJobs in a FakeKubernetes from a background thread (in-process, no HTTP)."""

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
    ) -> None:
        if mode not in ("simulate", "execute"):
            raise ValueError("mode must be 'simulate' or 'execute'")
        if execute_replicas not in ("master", "all"):
            raise ValueError("execute_replicas must be 'master' or 'all'")
        self.kube = kube
        self.clock = kube.clock
        self.mode = mode
        self.duration = duration
        self.startup = startup
        self.tick = tick
        self.namespace = namespace
        self.cwd = cwd
        self.extra_env = dict(extra_env or {})
        self.execute_replicas = execute_replicas
        self.rewrite = rewrite
        self.kill_grace = kill_grace
        self.scripts: list[ScriptEntry] = []
        self._runs: dict[str, _PodRun] = {}
        self._restarts: dict[str, int] = {}
        self._ports: dict[str, int] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._jobs = kube.type("pytorchjobs", "kubeflow.org")
        self._pods = kube.type("pods")
        self._events = kube.type("events")
        self._services = kube.type("services")
        self._nodes = kube.type("nodes")
        self.errors: list[str] = []  # unexpected reconcile errors, for tests to assert empty

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
        with self._lock:
            runs = list(self._runs.values())
        for pod_run in runs:
            if pod_run.process is not None:
                pod_run.process.kill(self.kill_grace)

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
        entry = ScriptEntry(behavior, job, replica, index, times, namespace=namespace)
        with self._lock:
            self.scripts.append(entry)
        return entry

    def inject(self, pod: str, behavior: PodBehavior, namespace: str = "default") -> None:
        """Switch a live pod to a fault `behavior` now (its `after` counts from this moment)."""
        if behavior.action == Action.RUN:
            raise ValueError("inject() takes a fault behaviour (evicted, oom_killed, hang...), not run()")
        process: PodProcess | None = None
        with self._lock:
            for pod_run in self._runs.values():
                if (pod_run.namespace, pod_run.name) == (namespace, pod) and not pod_run.done:
                    process, pod_run.process, pod_run.executes = pod_run.process, None, False
                    elapsed = 0.0 if pod_run.started_at is None else self.clock.now() - pod_run.started_at
                    pod_run.behavior = dataclasses.replace(behavior, after=elapsed + (behavior.after or 0.0))
                    break
            else:
                raise KeyError(f"no live pod {namespace}/{pod}")
        if process is not None:  # outside the lock: killing waits up to kill_grace
            process.kill(self.kill_grace)

    # -- helpers for tests --------------------------------------------------------------------
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
                if job is not None and _has(conditions, condition):
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
        """How many times the operator recreated pods of a job (restartPolicy ExitCode)."""
        with self._lock:
            return self._restarts.get(job_uid, 0)

    # -- reconcile loop -----------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile_once()
            except Exception as exc:  # keep reconciling, like a controller would; tests read .errors
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.tick)

    def reconcile_once(self) -> None:
        """One pass over every PyTorchJob (public so tests can step deterministically)."""
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
        if event.type != "DELETED" or event.rtype.kind != "Pod":
            return
        with self._lock:
            pod_run = self._runs.pop(event.obj["metadata"]["uid"], None)
        if pod_run is not None and pod_run.process is not None:
            threading.Thread(target=pod_run.process.kill, args=(self.kill_grace,), daemon=True).start()

    def _reconcile_job(self, job: Obj) -> None:
        meta = job["metadata"]
        ns, name = meta["namespace"], meta["name"]
        status = copy.deepcopy(job.get("status") or {})
        conditions = status.get("conditions") or []
        now = self.clock.timestamp()
        label = f"PyTorchJob {ns}/{name}"
        if _has(conditions, "Succeeded") or _has(conditions, "Failed"):
            self._after_finish(job)
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
            self._write_status(job, status)
            return
        if not _has(conditions, "Created"):
            set_condition(status, "Created", "PyTorchJobCreated", f"{label} is created.", now)
            status.setdefault("startTime", now)
            status.setdefault("replicaStatuses", {})
            self._write_status(job, status)
            self._event(job, "Normal", "PyTorchJobCreated", f"{label} is created.")
        pods = self._job_pods(ns, name)
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
            self._advance_pod(pod, job, specs, master)
        self._update_job_status(job, status, specs)

    def _job_pods(self, ns: str, job: str) -> dict[str, Obj]:
        items, _ = self.kube.state.list(
            self._pods, ns, lambda o: (o["metadata"].get("labels") or {}).get(JOB_NAME) == job
        )
        return {p["metadata"]["name"]: p for p in items}

    # -- pod creation -------------------------------------------------------------------------
    def _create_pod(self, job: Obj, replica: str, index: int, spec: Obj) -> Obj:
        meta = job["metadata"]
        ns, name = meta["namespace"], meta["name"]
        template = copy.deepcopy(spec.get("template") or {})
        pod_meta = template.get("metadata") or {}
        labels = dict(pod_meta.get("labels") or {})
        labels.update(
            {
                JOB_NAME: name,
                OPERATOR_NAME: "pytorchjob",
                REPLICA_TYPE: replica.lower(),
                REPLICA_INDEX: str(index),
            }
        )
        if replica == "Master":
            labels[JOB_ROLE] = "master"
        pod_spec = template.get("spec") or {}
        policy = spec.get("restartPolicy") or "OnFailure"
        pod_spec["restartPolicy"] = "Never" if policy == "ExitCode" else policy
        self._inject_env(job, pod_spec, replica, index)
        owner = {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "name": name,
            "uid": meta["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-{replica.lower()}-{index}",
                "namespace": ns,
                "labels": labels,
                "annotations": dict(pod_meta.get("annotations") or {}),
                "ownerReferences": [owner],
            },
            "spec": pod_spec,
        }
        created = self.kube.state.create(self._pods, ns, pod)
        self._ensure_service(job, created, owner)
        self._event(job, "Normal", "SuccessfulCreatePod", f"Created pod: {created['metadata']['name']}")
        return created

    def _ensure_service(self, job: Obj, pod: Obj, owner: Obj) -> None:
        """The headless Service per replica the operator creates (MASTER_ADDR resolves to it)."""
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        if self.kube.state.find(self._services, ns, name) is not None:
            return
        labels = pod["metadata"]["labels"]
        selector = {k: labels[k] for k in (JOB_NAME, OPERATOR_NAME, REPLICA_TYPE, REPLICA_INDEX)}
        service = {
            "metadata": {"name": name, "namespace": ns, "labels": selector, "ownerReferences": [owner]},
            "spec": {
                "clusterIP": "None",
                "selector": selector,
                "ports": [{"name": "pytorchjob-port", "port": self._master_port(job)}],
            },
        }
        with contextlib.suppress(ApiError):
            self.kube.state.create(self._services, ns, service)

    def _master_port(self, job: Obj) -> int:
        master = (job["spec"].get("pytorchReplicaSpecs") or {}).get("Master") or {}
        for container in ((master.get("template") or {}).get("spec") or {}).get("containers") or []:
            for port in container.get("ports") or []:
                if port.get("name") == "pytorchjob-port":
                    return int(port.get("containerPort", DEFAULT_PORT))
        return DEFAULT_PORT

    def _inject_env(self, job: Obj, pod_spec: Obj, replica: str, index: int) -> None:
        """The env the real operator appends: master address, world size, ranks, PET_* for torchrun."""
        spec = job["spec"]
        replicas = spec.get("pytorchReplicaSpecs") or {}
        total = sum(int(r.get("replicas", 1)) for r in replicas.values())
        nproc_raw = str(spec.get("nprocPerNode") or "1")
        nproc = int(nproc_raw) if nproc_raw.isdigit() else 1
        rank = index + 1 if replica == "Worker" and "Master" in replicas else index
        port = str(self._master_port(job))
        master_addr = f"{job['metadata']['name']}-master-0"
        added = [
            ("PYTHONUNBUFFERED", "1"),
            ("MASTER_PORT", port),
            ("MASTER_ADDR", master_addr),
            ("PET_MASTER_PORT", port),
            ("PET_MASTER_ADDR", master_addr),
            ("WORLD_SIZE", str(total * nproc)),
            ("RANK", str(rank)),
            ("PET_NPROC_PER_NODE", nproc_raw),
            ("PET_NODE_RANK", str(rank)),
            ("PET_NNODES", str(total)),
        ]
        for container in pod_spec.get("containers") or []:
            env = container.setdefault("env", [])
            present = {e.get("name") for e in env}
            env.extend({"name": k, "value": v} for k, v in added if k not in present)

    # -- the 'kubelet' ------------------------------------------------------------------------
    def _run_for(self, pod: Obj) -> _PodRun:
        meta = pod["metadata"]
        with self._lock:
            pod_run = self._runs.get(meta["uid"])
            if pod_run is None:
                labels = meta.get("labels") or {}
                replica = "Master" if labels.get(REPLICA_TYPE) == "master" else "Worker"
                index = int(labels.get(REPLICA_INDEX, "0"))
                behavior = self._take_script(
                    meta["namespace"], labels.get(JOB_NAME, ""), replica, index, meta["name"]
                )
                pod_run = _PodRun(
                    meta["namespace"],
                    meta["name"],
                    meta["uid"],
                    labels.get(JOB_NAME, ""),
                    replica,
                    index,
                    behavior,
                    self.clock.now(),
                )
                self._runs[meta["uid"]] = pod_run
            return pod_run

    def _take_script(self, ns: str, job: str, replica: str, index: int, pod: str) -> PodBehavior:
        with self._lock:
            for entry in self.scripts:
                if entry.take(ns, job, replica, index, pod):
                    return entry.behavior
        return run()

    def _advance_pod(self, pod: Obj, job: Obj, specs: Obj, master: Obj | None) -> None:
        phase = pod.get("status", {}).get("phase")
        pod_run = self._run_for(pod)
        if phase in ("Succeeded", "Failed") or pod_run.done:
            return
        now = self.clock.now()
        stamp = self.clock.timestamp()
        behavior = pod_run.behavior
        if pod_run.started_at is None:
            self._start_pod(pod, pod_run, job, now, stamp)
            return
        elapsed = now - pod_run.started_at
        action = behavior.action
        after = behavior.after if behavior.after is not None else self.duration
        if action == Action.HANG:
            return
        if action == Action.NODE_LOST:
            if elapsed >= after and not pod_run.marked:
                pod_run.marked = True
                self._set_pod_status(
                    pod, podstatus.node_lost(pod["status"], stamp, pod_run.node, pod_run.name)
                )
                self._event(pod, "Warning", "NodeNotReady", f"Node is not ready: {pod_run.node}")
                self._lose_node(pod_run.node, stamp)
            return
        if action == Action.CRASH_LOOP:
            if elapsed >= after * (pod_run.restarts + 1):
                pod_run.restarts += 1
                self.kube.logs.start(pod_run.namespace, pod_run.name, self._container(pod))
                self._log(pod, pod_run, f"fatal: crashed with exit code {behavior.exit_code}")
                self._set_pod_status(
                    pod,
                    podstatus.crash_loop(
                        pod, stamp, pod_run.started_stamp, pod_run.ip, pod_run.restarts, behavior.exit_code
                    ),
                )
                self._event(pod, "Warning", "BackOff", "Back-off restarting failed container")
            return
        if action == Action.RUN and self.mode == "execute":
            if pod_run.executes:
                code = pod_run.process.returncode() if pod_run.process is not None else 127
                if code is not None:
                    self._finish(pod, pod_run, specs, code, "Completed" if code == 0 else "Error")
            elif master is not None and master.get("status", {}).get("phase") == "Succeeded":
                self._finish(pod, pod_run, specs, 0, "Completed")  # a mirrored worker ends with its master
            return
        if elapsed < after:
            return
        if action in (Action.RUN, Action.SUCCEED):
            self._finish(pod, pod_run, specs, 0, "Completed")
        elif action == Action.FAIL:
            self._finish(pod, pod_run, specs, behavior.exit_code, "Error")
        elif action == Action.OOM_KILLED:
            self._finish(pod, pod_run, specs, 137, "OOMKilled")
        elif action == Action.EVICTED:
            self._event(pod, "Warning", "Evicted", behavior.message or "Evicted")
            self._finish(
                pod, pod_run, specs, 137, "Error", pod_reason="Evicted", pod_message=behavior.message
            )
        elif action == Action.PREEMPTED:
            self._event(pod, "Normal", "Preempted", behavior.message or "Preempted")
            self._finish(
                pod,
                pod_run,
                specs,
                143,
                "Error",
                disruption=("PreemptionByScheduler", behavior.message or "Preempted"),
            )

    def _start_pod(self, pod: Obj, pod_run: _PodRun, job: Obj, now: float, stamp: str) -> None:
        """Schedule, pull and start: or stop at the step the behaviour says fails."""
        behavior = pod_run.behavior
        if behavior.action == Action.UNSCHEDULABLE:
            if not pod_run.marked:
                pod_run.marked = True
                message = behavior.message or "0/1 nodes are available"
                self._set_pod_status(pod, podstatus.unschedulable(pod, stamp, message))
                self._event(pod, "Warning", "FailedScheduling", message, component="default-scheduler")
            return
        if now - pod_run.created_at < self.startup:
            return
        node = f"fake-node-{pod_run.index % 4}"
        self._ensure_node(node, stamp)
        image = ((pod.get("spec", {}).get("containers") or [{}])[0]).get("image", "")
        if behavior.action == Action.IMAGE_PULL:
            if not pod_run.marked:
                pod_run.marked = True
                message = f'Back-off pulling image "{image}"'
                reason = behavior.reason or "ImagePullBackOff"
                self._set_pod_status(pod, podstatus.waiting(pod, stamp, node, reason, message))
                self._event(
                    pod,
                    "Warning",
                    "Failed",
                    f'Failed to pull image "{image}": rpc error: code = '
                    "NotFound desc = failed to pull and unpack image",
                )
            return
        env, missing = self._container_env(pod)
        if missing is not None:
            self._set_pod_status(
                pod, podstatus.waiting(pod, stamp, node, "CreateContainerConfigError", missing)
            )
            return
        pod_run.started_at = now
        pod_run.started_stamp = stamp
        pod_run.node = node
        pod_run.ip = f"10.244.{pod_run.index % 250}.{abs(hash(pod_run.uid)) % 250 + 2}"
        container = self._container(pod)
        self.kube.logs.start(pod_run.namespace, pod_run.name, container)
        self.kube.state.mutate(
            self._pods, pod_run.namespace, pod_run.name, lambda o: o["spec"].__setitem__("nodeName", node)
        )
        self._set_pod_status(pod, podstatus.running(pod, stamp, stamp, pod_run.ip))
        self._event(
            pod,
            "Normal",
            "Scheduled",
            f"Successfully assigned {pod_run.namespace}/{pod_run.name} to {node}",
            component="default-scheduler",
        )
        self._event(pod, "Normal", "Started", f"Started container {container}", component="kubelet")
        if behavior.action == Action.RUN and self.mode == "execute":
            pod_run.executes = pod_run.replica == "Master" or self.execute_replicas == "all"
            if pod_run.executes:
                self._spawn(pod, pod_run, job, env)
            return
        if behavior.action != Action.HANG:
            lines = behavior.logs or (f"simulated {pod_run.replica.lower()} {pod_run.index} started",)
            for line in lines:
                self._log(pod, pod_run, line)

    def _spawn(self, pod: Obj, pod_run: _PodRun, job: Obj, env: dict[str, str]) -> None:
        """Run the container command locally, as a one-node world unless all replicas run."""
        container = (pod.get("spec", {}).get("containers") or [{}])[0]
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        full_env = {**os.environ, **env}
        with self._lock:
            port = self._ports.setdefault(job["metadata"]["uid"], _free_port())
        full_env.update(
            {
                "MASTER_ADDR": "127.0.0.1",
                "PET_MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "PET_MASTER_PORT": str(port),
            }
        )
        if self.execute_replicas == "master":
            nproc = full_env.get("PET_NPROC_PER_NODE", "1")
            full_env.update(
                {
                    "WORLD_SIZE": nproc if nproc.isdigit() else "1",
                    "PET_NNODES": "1",
                    "RANK": "0",
                    "PET_NODE_RANK": "0",
                }
            )
            argv = single_node(argv)
        full_env.update(self.extra_env)
        name = container.get("name", "")
        if not argv:
            self._log(pod, pod_run, "error: the container has no command to execute")
            return
        try:
            pod_run.process = PodProcess(
                self.rewrite(argv),
                full_env,
                self.cwd,
                lambda data: self.kube.logs.append(
                    pod_run.namespace, pod_run.name, name, data, self.clock.timestamp()
                ),
            )
        except OSError as exc:
            self._log(pod, pod_run, f"exec {argv[0]!r} failed: {exc}")

    def _finish(
        self,
        pod: Obj,
        pod_run: _PodRun,
        specs: Obj,
        exit_code: int,
        reason: str,
        *,
        pod_reason: str | None = None,
        pod_message: str | None = None,
        disruption: tuple[str, str] | None = None,
    ) -> None:
        """The container ended: restart it in place (OnFailure/Always) or terminate the pod."""
        stamp = self.clock.timestamp()
        policy = pod.get("spec", {}).get("restartPolicy", "Never")
        container = self._container(pod)
        in_place = (
            exit_code != 0 and pod_reason is None and disruption is None and policy in ("OnFailure", "Always")
        )
        if in_place:
            pod_run.restarts += 1
            last = podstatus.terminated_state(exit_code, reason, pod_run.started_stamp, stamp)
            self._log(pod, pod_run, f"container exited with code {exit_code}; restarting")
            self.kube.logs.close(pod_run.namespace, pod_run.name, container)
            self.kube.logs.start(pod_run.namespace, pod_run.name, container)
            pod_run.behavior = self._take_script(
                pod_run.namespace, pod_run.job, pod_run.replica, pod_run.index, pod_run.name
            )
            pod_run.started_at = self.clock.now()
            pod_run.started_stamp = stamp
            self._set_pod_status(
                pod, podstatus.running(pod, stamp, stamp, pod_run.ip, pod_run.restarts, last)
            )
            if pod_run.executes:
                job = self.kube.state.find(self._jobs, pod_run.namespace, pod_run.job)
                env, _ = self._container_env(pod)
                if job is not None:
                    self._spawn(pod, pod_run, job, env)
            return
        pod_run.done = True
        if self.mode == "simulate" and pod_run.behavior.action in (Action.RUN, Action.SUCCEED, Action.FAIL):
            self._log(pod, pod_run, f"simulated {pod_run.replica.lower()} {pod_run.index} exited {exit_code}")
        self.kube.logs.close(pod_run.namespace, pod_run.name, container)
        self._set_pod_status(
            pod,
            podstatus.terminated(
                pod,
                stamp,
                pod_run.started_stamp or stamp,
                exit_code,
                reason,
                pod_run.restarts,
                pod_reason,
                pod_message,
                disruption,
            ),
        )

    # -- job status ---------------------------------------------------------------------------
    def _update_job_status(self, job: Obj, status: Obj, specs: Obj) -> None:
        meta = job["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        label = f"PyTorchJob {ns}/{name}"
        now = self.clock.timestamp()
        run_policy = job["spec"].get("runPolicy") or {}
        backoff = run_policy.get("backoffLimit")
        pods = self._job_pods(ns, name)
        counts: dict[str, dict[str, int]] = {r: {"active": 0, "succeeded": 0, "failed": 0} for r in specs}
        failed: dict[str, int] = {}
        retry: list[Obj] = []
        in_place_restarts = 0
        for pod in pods.values():
            labels = pod["metadata"].get("labels") or {}
            replica = "Master" if labels.get(REPLICA_TYPE) == "master" else "Worker"
            phase = pod.get("status", {}).get("phase")
            bucket = counts.setdefault(replica, {"active": 0, "succeeded": 0, "failed": 0})
            for cs in pod.get("status", {}).get("containerStatuses") or []:
                in_place_restarts += int(cs.get("restartCount", 0))
            if phase == "Succeeded":
                bucket["succeeded"] += 1
            elif phase == "Failed":
                bucket["failed"] += 1
                policy = (specs.get(replica) or {}).get("restartPolicy") or "OnFailure"
                if policy == "ExitCode" and _exit_code(pod) >= 128:
                    retry.append(pod)
                else:
                    failed[replica] = failed.get(replica, 0) + 1
            else:
                bucket["active"] += 1
        status["replicaStatuses"] = {
            r: {
                **{k: v for k, v in c.items() if v},
                "selector": f"{JOB_NAME}={name},{OPERATOR_NAME}=pytorchjob,{REPLICA_TYPE}={r.lower()}",
            }
            for r, c in counts.items()
        }
        with self._lock:
            restarts = self._restarts.get(uid, 0) + len(retry)
            self._restarts[uid] = restarts
        deadline = run_policy.get("activeDeadlineSeconds")
        started = status.get("startTime")
        if failed:
            replica, count = next(iter(failed.items()))
            self._fail(
                job,
                status,
                "PyTorchJobFailed",
                f"{label} is failed because {count} {replica} replica(s) failed.",
                now,
            )
        elif backoff is not None and (restarts + in_place_restarts) > int(backoff):
            self._fail(
                job,
                status,
                "BackoffLimitExceeded",
                f"{label} has failed because it has reached the specified backoff limit",
                now,
            )
        elif deadline is not None and started and _seconds_since(started, self.clock.now()) > float(deadline):
            self._fail(
                job,
                status,
                "DeadlineExceeded",
                f"{label} has failed because it was active longer than specified deadline",
                now,
            )
        elif retry:
            replica = "Master" if any(_replica(p) == "Master" for p in retry) else "Worker"
            message = f"{label} is restarting because {len(retry)} {replica} replica(s) failed."
            set_condition(status, "Restarting", "PyTorchJobRestarting", message, now)
            self._write_status(job, status)
            self._event(job, "Warning", "PyTorchJobRestarting", message)
            for pod in retry:
                with contextlib.suppress(ApiError):
                    self.kube.state.delete(self._pods, ns, pod["metadata"]["name"])
            return
        elif counts.get("Master", {}).get("succeeded"):
            set_condition(status, "Succeeded", "PyTorchJobSucceeded", f"{label} successfully completed.", now)
            status["completionTime"] = now
            self._event(job, "Normal", "PyTorchJobSucceeded", f"{label} successfully completed.")
        elif (
            pods
            and all(
                p.get("status", {}).get("phase") == "Running" and not _not_ready(p) for p in pods.values()
            )
            and len(pods) == sum(int(s.get("replicas", 1)) for s in specs.values())
        ):
            set_condition(status, "Running", "PyTorchJobRunning", f"{label} is running.", now)
        self._write_status(job, status)

    def _fail(self, job: Obj, status: Obj, reason: str, message: str, now: str) -> None:
        set_condition(status, "Failed", reason, message, now)
        status["completionTime"] = now
        self._event(job, "Warning", reason if reason != "PyTorchJobFailed" else "PyTorchJobFailed", message)

    def _after_finish(self, job: Obj) -> None:
        """cleanPodPolicy, mirrored workers and ttlSecondsAfterFinished once the job is finished."""
        meta = job["metadata"]
        ns, name = meta["namespace"], meta["name"]
        run_policy = job["spec"].get("runPolicy") or {}
        clean = run_policy.get("cleanPodPolicy") or "None"
        succeeded = _has(job.get("status", {}).get("conditions") or [], "Succeeded")
        for pod in self._job_pods(ns, name).values():
            phase = pod.get("status", {}).get("phase")
            active = phase not in ("Succeeded", "Failed")
            if clean == "All" or (clean == "Running" and active):
                with contextlib.suppress(ApiError):
                    self.kube.state.delete(self._pods, ns, pod["metadata"]["name"])
                continue
            with self._lock:
                pod_run = self._runs.get(pod["metadata"]["uid"])
            if active and pod_run is not None and not pod_run.done:
                if pod_run.process is not None:
                    pod_run.process.kill(self.kill_grace)
                self._finish(pod, pod_run, {}, 0 if succeeded else 143, "Completed" if succeeded else "Error")
        ttl = run_policy.get("ttlSecondsAfterFinished")
        finished = job.get("status", {}).get("completionTime")
        if ttl is not None and finished and _seconds_since(finished, self.clock.now()) >= float(ttl):
            with contextlib.suppress(ApiError):
                self.kube.state.delete(self._jobs, ns, name)

    # -- nodes --------------------------------------------------------------------------------
    def _ensure_node(self, name: str, stamp: str) -> None:
        """A Ready GPU node for pods to land on (created the first time it is used)."""
        if self.kube.state.find(self._nodes, None, name) is not None:
            return
        capacity = {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "8", "pods": "110"}
        node = {
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, "nvidia.com/gpu.present": "true"},
            },
            "spec": {},
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "conditions": [
                    podstatus.condition(
                        "Ready", True, stamp, "KubeletReady", "kubelet is posting ready status"
                    )
                ],
            },
        }
        with contextlib.suppress(ApiError):
            self.kube.state.create(self._nodes, None, node)

    def _lose_node(self, name: str, stamp: str) -> None:
        """The node stops reporting: Ready Unknown and the unreachable NoExecute taint."""

        def change(node: Obj) -> None:
            node["spec"]["taints"] = [
                {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": stamp}
            ]
            node["status"]["conditions"] = [
                {
                    **podstatus.condition(
                        "Ready", False, stamp, "NodeStatusUnknown", "Kubelet stopped posting node status."
                    ),
                    "status": "Unknown",
                }
            ]

        with contextlib.suppress(ApiError):
            self.kube.state.mutate(self._nodes, None, name, change)

    # -- small writes -------------------------------------------------------------------------
    def _write_status(self, job: Obj, status: Obj) -> None:
        self.kube.state.mutate(
            self._jobs,
            job["metadata"]["namespace"],
            job["metadata"]["name"],
            lambda o: o.__setitem__("status", copy.deepcopy(status)),
        )

    def _set_pod_status(self, pod: Obj, status: Obj) -> None:
        meta = pod["metadata"]
        updated = self.kube.state.mutate(
            self._pods,
            meta["namespace"],
            meta["name"],
            lambda o: o.__setitem__("status", copy.deepcopy(status)),
        )
        pod["status"] = updated.get("status", {})

    def _container(self, pod: Obj) -> str:
        containers = pod.get("spec", {}).get("containers") or [{}]
        return str(containers[0].get("name", ""))

    def _log(self, pod: Obj, pod_run: _PodRun, line: str) -> None:
        self.kube.logs.append(
            pod_run.namespace,
            pod_run.name,
            self._container(pod),
            line.encode() + b"\n",
            self.clock.timestamp(),
        )

    def _event(
        self, obj: Obj, kind: str, reason: str, message: str, component: str = "pytorchjob-controller"
    ) -> None:
        """Record a core/v1 Event about `obj`, as kubectl describe shows them."""
        meta = obj["metadata"]
        stamp = self.clock.timestamp()
        event = {
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "kind": obj.get("kind"),
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta.get("uid"),
                "apiVersion": obj.get("apiVersion"),
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "count": 1,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "source": {"component": component},
            "reportingComponent": component,
        }
        with contextlib.suppress(ApiError):
            self.kube.state.create(self._events, meta["namespace"], event)

    def _container_env(self, pod: Obj) -> tuple[dict[str, str], str | None]:
        """Resolve the first container's env (values, secrets, config maps, fields); or what is missing."""
        ns = pod["metadata"]["namespace"]
        container = (pod.get("spec", {}).get("containers") or [{}])[0]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, ref in (
                ("secrets", source.get("secretRef")),
                ("configmaps", source.get("configMapRef")),
            ):
                if not ref:
                    continue
                data = self._data(kind, ns, ref.get("name", ""))
                if data is None:
                    if ref.get("optional"):
                        continue
                    return env, f'{kind[:-1].replace("configmap", "configmap")} "{ref.get("name")}" not found'
                env.update({prefix + k: v for k, v in data.items()})
        for item in container.get("env") or []:
            name = item.get("name", "")
            if "value" in item:
                env[name] = str(item["value"])
                continue
            source = item.get("valueFrom") or {}
            for kind, key in (("secrets", "secretKeyRef"), ("configmaps", "configMapKeyRef")):
                ref = source.get(key)
                if not ref:
                    continue
                data = self._data(kind, ns, ref.get("name", ""))
                if data is None or ref.get("key") not in data:
                    if ref.get("optional"):
                        break
                    what = "secret" if kind == "secrets" else "configmap"
                    if data is None:
                        return env, f'{what} "{ref.get("name")}" not found'
                    return env, f"couldn't find key {ref.get('key')} in {what} {ns}/{ref.get('name')}"
                env[name] = data[ref["key"]]
            field_ref = source.get("fieldRef")
            if field_ref:
                path = field_ref.get("fieldPath", "")
                values = {"metadata.name": pod["metadata"]["name"], "metadata.namespace": ns}
                env[name] = values.get(path, "")
        return env, None

    def _data(self, kind: str, ns: str, name: str) -> dict[str, str] | None:
        obj = self.kube.state.find(self.kube.type(kind), ns, name)
        if obj is None:
            return None
        data = {
            k: base64.b64decode(v).decode() if kind == "secrets" else str(v)
            for k, v in (obj.get("data") or {}).items()
        }
        data.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
        return data


def _exit_code(pod: Obj) -> int:
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated:
            return int(terminated.get("exitCode", 0))
    return 0


def _replica(pod: Obj) -> str:
    return "Master" if (pod["metadata"].get("labels") or {}).get(REPLICA_TYPE) == "master" else "Worker"


def _not_ready(pod: Obj) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") != "True"
        for c in pod.get("status", {}).get("conditions") or []
    )


def _seconds_since(stamp: str, now: float) -> float:
    import datetime as dt

    moment = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return now - moment.timestamp()
