"""The fake operator's PyTorchJob status: conditions, replica counts, restarts, failure and cleanup,
written the way the Training Operator v1 writes them."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import threading
from typing import TYPE_CHECKING, Any

from sailk8s.testing.apierrors import ApiError
from sailk8s.testing.events import record_event
from sailk8s.testing.podspecs import JOB_NAME, OPERATOR_NAME, REPLICA_TYPE

if TYPE_CHECKING:
    from sailk8s.testing.apiserver import FakeKubernetes
    from sailk8s.testing.kubelet import FakeKubelet

Obj = dict[str, Any]


def has_condition(conditions: list[Obj], kind: str) -> bool:
    """Whether `kind` is among the conditions with status True."""
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


def job_pods(kube: FakeKubernetes, ns: str, job: str) -> dict[str, Obj]:
    """The job's pods by name (the operator's job-name label)."""
    items, _ = kube.state.list(
        kube.type("pods"), ns, lambda o: (o["metadata"].get("labels") or {}).get(JOB_NAME) == job
    )
    return {p["metadata"]["name"]: p for p in items}


class JobStatusWriter:
    """Writes each PyTorchJob's status from its pods, and cleans up after it finishes."""

    def __init__(self, kube: FakeKubernetes, kubelet: FakeKubelet) -> None:
        self.kube = kube
        self.clock = kube.clock
        self.kubelet = kubelet
        self._restarts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._jobs = kube.type("pytorchjobs", "kubeflow.org")
        self._pods = kube.type("pods")

    def restarts(self, job_uid: str) -> int:
        """How many times the operator recreated pods of a job (restartPolicy ExitCode)."""
        with self._lock:
            return self._restarts.get(job_uid, 0)

    def update(self, job: Obj, status: Obj, specs: Obj) -> None:
        """Replica counts and the next condition from the pods: failed, restarting, succeeded, running."""
        meta = job["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        label = f"PyTorchJob {ns}/{name}"
        now = self.clock.timestamp()
        run_policy = job["spec"].get("runPolicy") or {}
        backoff = run_policy.get("backoffLimit")
        pods = job_pods(self.kube, ns, name)
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
            self.write(job, status)
            record_event(self.kube, job, "Warning", "PyTorchJobRestarting", message)
            for pod in retry:
                with contextlib.suppress(ApiError):
                    self.kube.state.delete(self._pods, ns, pod["metadata"]["name"])
            return
        elif counts.get("Master", {}).get("succeeded"):
            set_condition(status, "Succeeded", "PyTorchJobSucceeded", f"{label} successfully completed.", now)
            status["completionTime"] = now
            record_event(self.kube, job, "Normal", "PyTorchJobSucceeded", f"{label} successfully completed.")
        elif (
            pods
            and all(
                p.get("status", {}).get("phase") == "Running" and not _not_ready(p) for p in pods.values()
            )
            and len(pods) == sum(int(s.get("replicas", 1)) for s in specs.values())
        ):
            set_condition(status, "Running", "PyTorchJobRunning", f"{label} is running.", now)
        self.write(job, status)

    def _fail(self, job: Obj, status: Obj, reason: str, message: str, now: str) -> None:
        set_condition(status, "Failed", reason, message, now)
        status["completionTime"] = now
        record_event(self.kube, job, "Warning", reason, message)

    def after_finish(self, job: Obj) -> None:
        """cleanPodPolicy, mirrored workers and ttlSecondsAfterFinished once the job is finished."""
        meta = job["metadata"]
        ns, name = meta["namespace"], meta["name"]
        run_policy = job["spec"].get("runPolicy") or {}
        clean = run_policy.get("cleanPodPolicy") or "None"
        succeeded = has_condition(job.get("status", {}).get("conditions") or [], "Succeeded")
        for pod in job_pods(self.kube, ns, name).values():
            phase = pod.get("status", {}).get("phase")
            active = phase not in ("Succeeded", "Failed")
            if clean == "All" or (clean == "Running" and active):
                with contextlib.suppress(ApiError):
                    self.kube.state.delete(self._pods, ns, pod["metadata"]["name"])
                continue
            pod_run = self.kubelet.live_run(pod["metadata"]["uid"])
            if active and pod_run is not None and not pod_run.done:
                if pod_run.process is not None:
                    pod_run.process.kill(self.kubelet.kill_grace)
                code, reason = (0, "Completed") if succeeded else (143, "Error")
                self.kubelet.finish(pod, pod_run, code, reason)
        ttl = run_policy.get("ttlSecondsAfterFinished")
        finished = job.get("status", {}).get("completionTime")
        if ttl is not None and finished and _seconds_since(finished, self.clock.now()) >= float(ttl):
            with contextlib.suppress(ApiError):
                self.kube.state.delete(self._jobs, ns, name)

    def write(self, job: Obj, status: Obj) -> None:
        """Store `status` as the job's status."""
        self.kube.state.mutate(
            self._jobs,
            job["metadata"]["namespace"],
            job["metadata"]["name"],
            lambda o: o.__setitem__("status", copy.deepcopy(status)),
        )


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
    moment = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return now - moment.timestamp()
