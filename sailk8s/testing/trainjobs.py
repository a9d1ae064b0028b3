"""A simulated Kubeflow Trainer v2 controller (with the JobSet and Job controllers it relies on) for
TrainJobs on the fake API server; FakeTrainingOperator runs it beside its PyTorchJob reconciler."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
from typing import TYPE_CHECKING, Any

from sailk8s.backends.kubernetes.jobkinds import (
    CLUSTER_RUNTIME_KIND,
    LABEL_COMPLETION_INDEX,
    LABEL_JOBSET_NAME,
)
from sailk8s.testing.apierrors import ApiError
from sailk8s.testing.events import record_event
from sailk8s.testing.jobstatus import has_condition
from sailk8s.testing.trainpods import node_pod, num_nodes, patched_node_job

if TYPE_CHECKING:
    from sailk8s.testing.apiserver import FakeKubernetes
    from sailk8s.testing.kubelet import FakeKubelet

Obj = dict[str, Any]
TRAINER = "trainer.kubeflow.org"
# JobSet's condition the trainer copies onto the TrainJob.
COMPLETE = ("Complete", "AllJobsCompleted", "jobset completed successfully")
FAILED = ("Failed", "FailedJobs", "jobset failed due to one or more job failures")
DEADLINE = ("Failed", "DeadlineExceeded", "TrainJob exceeded its active deadline")


def set_trainjob_condition(
    status: Obj, kind: str, reason: str, message: str, now: str, value: bool = True
) -> None:
    """metav1.Condition semantics: one entry per type, lastTransitionTime moves on a status change."""
    conditions: list[Obj] = status.setdefault("conditions", [])
    new = {
        "type": kind,
        "status": "True" if value else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
    }
    for i, cond in enumerate(conditions):
        if cond.get("type") == kind:
            if cond.get("status") == new["status"]:
                new["lastTransitionTime"] = cond.get("lastTransitionTime", now)
            conditions[i] = new
            return
    conditions.append(new)


def _exit_code(pod: Obj) -> int:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated:
            return int(terminated.get("exitCode", 0))
    return 0


class FakeTrainJobController:
    """Turns each TrainJob plus its (Cluster)TrainingRuntime into node pods (trainpods), runs them on
    the kubelet, and writes Suspended / Complete / Failed and jobsStatus as Trainer v2.3 does.

    The runtime's Job podFailurePolicy is honoured the way sail-torch uses it: a pod killed by a
    signal (exit 129-159) is replaced until the Job's backoffLimit is spent; any other failure
    fails the JobSet and so the TrainJob (failurePolicy maxRestarts 0).
    """

    def __init__(self, kube: FakeKubernetes, kubelet: FakeKubelet) -> None:
        self.kube = kube
        self.clock = kube.clock
        self.kubelet = kubelet
        self._jobs = kube.type("trainjobs", TRAINER)
        self._pods = kube.type("pods")
        self._incarnations: dict[tuple[str, int], int] = {}  # (job uid, node index) -> pods made
        self._restarts: dict[str, int] = {}

    def restarts(self, job_uid: str) -> int:
        """How many node pods were replaced after a signal death."""
        return self._restarts.get(job_uid, 0)

    def runtime_for(self, job: Obj) -> Obj | None:
        """The runtime spec.runtimeRef names (a ClusterTrainingRuntime by default)."""
        ref = (job.get("spec") or {}).get("runtimeRef") or {}
        if ref.get("kind", CLUSTER_RUNTIME_KIND) == CLUSTER_RUNTIME_KIND:
            return self.kube.state.find(
                self.kube.type("clustertrainingruntimes", TRAINER), None, ref.get("name", "")
            )
        ns = job["metadata"]["namespace"]
        return self.kube.state.find(self.kube.type("trainingruntimes", TRAINER), ns, ref.get("name", ""))

    def pods(self, ns: str, name: str) -> dict[str, Obj]:
        """The TrainJob's pods by name (JobSet's jobset-name label)."""
        items, _ = self.kube.state.list(
            self._pods, ns, lambda o: (o["metadata"].get("labels") or {}).get(LABEL_JOBSET_NAME) == name
        )
        return {p["metadata"]["name"]: p for p in items}

    def reconcile_all(self, namespace: str | None) -> None:
        """One pass over every TrainJob."""
        jobs, _ = self.kube.state.list(self._jobs, namespace)
        for job in jobs:
            try:
                self.reconcile(job)
            except ApiError as err:
                if err.code != 404:
                    raise

    def reconcile(self, job: Obj) -> None:
        """One step of one TrainJob."""
        meta = job["metadata"]
        ns, name = meta["namespace"], meta["name"]
        status = copy.deepcopy(job.get("status") or {})
        conds = status.get("conditions") or []
        now = self.clock.timestamp()
        if has_condition(conds, "Complete") or has_condition(conds, "Failed"):
            self._after_finish(ns, name, has_condition(conds, "Complete"))
            return
        runtime = self.runtime_for(job)
        if runtime is None or patched_node_job(job, runtime) is None:
            set_trainjob_condition(
                status,
                "Failed",
                "TrainingRuntimeNotSupported",
                f"runtime {(job.get('spec') or {}).get('runtimeRef')} not found or has no trainer job",
                now,
            )
            self._write(job, status)
            return
        pods = self.pods(ns, name)
        if (job.get("spec") or {}).get("suspend"):
            set_trainjob_condition(status, "Suspended", "Suspended", "TrainJob is suspended", now)
            for pod in pods.values():  # JobSet deletes the pods of a suspended job
                with contextlib.suppress(ApiError):
                    self.kube.state.delete(self._pods, ns, pod["metadata"]["name"])
            status["jobsStatus"] = [self._jobs_status(runtime, [], suspended=True)]
            self._write(job, status)
            return
        if has_condition(conds, "Suspended"):
            set_trainjob_condition(status, "Suspended", "Resumed", "TrainJob is resumed", now, value=False)
            record_event(self.kube, job, "Normal", "Resumed", "TrainJob is resumed")
        by_index = {
            int((p["metadata"].get("labels") or {}).get(LABEL_COMPLETION_INDEX, "0")): p
            for p in pods.values()
        }
        for index in range(num_nodes(job, runtime)):
            if index not in by_index:
                by_index[index] = self._create_pod(job, runtime, index)
        master = by_index.get(0)
        for pod in by_index.values():
            self.kubelet.advance(pod, job, master)
        self._update(job, runtime, status, by_index, now)

    def _create_pod(self, job: Obj, runtime: Obj, index: int) -> Obj:
        key = (job["metadata"]["uid"], index)
        incarnation = self._incarnations.get(key, 0)
        self._incarnations[key] = incarnation + 1
        pod = node_pod(job, runtime, index, incarnation)
        created = self.kube.state.create(self._pods, job["metadata"]["namespace"], pod)
        record_event(
            self.kube, job, "Normal", "SuccessfulCreate", f"Created pod: {created['metadata']['name']}"
        )
        return created

    def _backoff_limit(self, runtime: Obj, job: Obj) -> int:
        rjob = patched_node_job(job, runtime) or {}
        return int(((rjob.get("template") or {}).get("spec") or {}).get("backoffLimit", 6))

    def _update(self, job: Obj, runtime: Obj, status: Obj, pods: dict[int, Obj], now: str) -> None:
        meta = job["metadata"]
        ns, uid = meta["namespace"], meta["uid"]
        phases = {i: (p.get("status") or {}).get("phase") for i, p in pods.items()}
        failed = [p for i, p in pods.items() if phases[i] == "Failed"]
        signal_deaths = [p for p in failed if 129 <= _exit_code(p) <= 159]
        deadline = (job.get("spec") or {}).get("activeDeadlineSeconds")
        created = meta.get("creationTimestamp")
        if failed and (
            len(signal_deaths) < len(failed)
            or self._restarts.get(uid, 0) + len(signal_deaths) > self._backoff_limit(runtime, job)
        ):
            set_trainjob_condition(status, *FAILED, now)
            record_event(self.kube, job, "Warning", FAILED[1], FAILED[2])
        elif deadline is not None and created and _seconds_since(created, self.clock.now()) > float(deadline):
            set_trainjob_condition(status, *DEADLINE, now)
            record_event(self.kube, job, "Warning", DEADLINE[1], DEADLINE[2])
        elif signal_deaths:
            self._restarts[uid] = self._restarts.get(uid, 0) + len(signal_deaths)
            for pod in signal_deaths:  # the Job controller replaces the pod (podFailurePolicy: Count)
                with contextlib.suppress(ApiError):
                    self.kube.state.delete(self._pods, ns, pod["metadata"]["name"])
        elif pods and all(ph == "Succeeded" for ph in phases.values()):
            set_trainjob_condition(status, *COMPLETE, now)
            record_event(self.kube, job, "Normal", COMPLETE[1], COMPLETE[2])
        status["jobsStatus"] = [self._jobs_status(runtime, list(pods.values()))]
        self._write(job, status)

    def _jobs_status(self, runtime: Obj, pods: list[Obj], suspended: bool = False) -> Obj:
        """JobSet's view of the node replicated job (one child Job)."""
        rjob = (runtime.get("spec") or {}).get("template", {}).get("spec", {}).get("replicatedJobs") or [{}]
        phases = [(p.get("status") or {}).get("phase") for p in pods]
        done = bool(pods) and all(ph == "Succeeded" for ph in phases)
        failed = "Failed" in phases
        return {
            "name": str(rjob[0].get("name", "node")),
            "active": int(bool(pods) and not done and not failed),
            "ready": int(bool(pods) and all(ph == "Running" for ph in phases)),
            "succeeded": int(done),
            "failed": int(failed),
            "suspended": int(suspended),
        }

    def _after_finish(self, ns: str, name: str, complete: bool) -> None:
        """Stop what still runs of a finished TrainJob (its JobSet deletes active Jobs' pods)."""
        for pod in self.pods(ns, name).values():
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            pod_run = self.kubelet.live_run(pod["metadata"]["uid"])
            if pod_run is not None and not pod_run.done:
                if pod_run.process is not None:
                    pod_run.process.kill(self.kubelet.kill_grace)
                code, reason = (0, "Completed") if complete else (143, "Error")
                self.kubelet.finish(pod, pod_run, code, reason)

    def _write(self, job: Obj, status: Obj) -> None:
        self.kube.state.mutate(
            self._jobs,
            job["metadata"]["namespace"],
            job["metadata"]["name"],
            lambda o: o.__setitem__("status", copy.deepcopy(status)),
        )


def _seconds_since(stamp: str, now: float) -> float:
    return now - dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
