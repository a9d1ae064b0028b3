"""Test helpers: drive PyTorchJob conditions and operator-style pods on the fake API server directly.

Each test decides exactly which state the cluster shows, so every failure mapping is pinned
through the real kubernetes client and real HTTP without timing races.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sailk8s.testing.apiserver import FakeKubernetes

Obj = dict[str, Any]


class ClusterDriver:
    """Plays the training operator and kubelet for one namespace of a FakeKubernetes."""

    def __init__(self, kube: FakeKubernetes, namespace: str = "sail") -> None:
        self.kube = kube
        self.ns = namespace
        self.jobs = kube.type("pytorchjobs", "kubeflow.org")
        self.pods = kube.type("pods")

    def now(self) -> str:
        return self.kube.clock.timestamp()

    def job(self, name: str) -> Obj | None:
        return self.kube.state.find(self.jobs, self.ns, name)

    def set_conditions(self, name: str, *conds: str, message: str = "") -> None:
        """Set the job's conditions (each True), as the operator writes status."""
        now = self.now()

        def change(obj: Obj) -> None:
            status = obj.setdefault("status", {})
            status.setdefault("startTime", now)
            status["conditions"] = [
                {
                    "type": c,
                    "status": "True",
                    "reason": f"PyTorchJob{c}",
                    "message": message or f"PyTorchJob {name} is {c.lower()}.",
                    "lastUpdateTime": now,
                    "lastTransitionTime": now,
                }
                for c in conds
            ]
            if conds and conds[-1] in ("Succeeded", "Failed"):
                status["completionTime"] = now

        self.kube.state.mutate(self.jobs, self.ns, name, change)

    def add_pod(
        self, job_name: str, rtype: str = "master", index: int = 0, status: Callable[[Obj], Obj] | None = None
    ) -> str:
        """Create the pod the operator would create for one replica (labels from the template)."""
        job = self.kube.state.get(self.jobs, self.ns, job_name)
        spec_key = "Master" if rtype == "master" else "Worker"
        template = job["spec"]["pytorchReplicaSpecs"][spec_key]["template"]
        name = f"{job_name}-{rtype}-{index}"
        labels = {
            **template["metadata"]["labels"],
            "training.kubeflow.org/job-name": job_name,
            "training.kubeflow.org/replica-type": rtype,
            "training.kubeflow.org/replica-index": str(index),
        }
        if rtype == "master":
            labels["training.kubeflow.org/job-role"] = "master"
        pod = {
            "metadata": {
                "name": name,
                "namespace": self.ns,
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "kubeflow.org/v1",
                        "kind": "PyTorchJob",
                        "name": job_name,
                        "uid": job["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": {**template["spec"], "nodeName": f"gpu-node-{index}"},
        }
        created = self.kube.state.create(self.pods, self.ns, pod)
        if status is not None:
            self.set_pod_status(name, status(created))
        return name

    def set_pod_status(self, name: str, status: Obj) -> None:
        def change(obj: Obj) -> None:
            obj["status"] = status

        self.kube.state.mutate(self.pods, self.ns, name, change)

    def pod(self, name: str) -> Obj:
        return self.kube.state.get(self.pods, self.ns, name)

    def write_log(self, pod: str, text: str, *, close: bool = True) -> None:
        self.kube.logs.start(self.ns, pod, "pytorch")
        self.kube.logs.append(self.ns, pod, "pytorch", text.encode(), self.now())
        if close:
            self.kube.logs.close(self.ns, pod, "pytorch")
