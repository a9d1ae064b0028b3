"""What the fake operator creates for a PyTorchJob replica (the pod with its labels, env and owner,
its headless Service) and the container env a kubelet resolves from Secrets and ConfigMaps."""

from __future__ import annotations

import base64
import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sailk8s.testing.apiserver import FakeKubernetes

Obj = dict[str, Any]

JOB_NAME = "training.kubeflow.org/job-name"
REPLICA_TYPE = "training.kubeflow.org/replica-type"
REPLICA_INDEX = "training.kubeflow.org/replica-index"
OPERATOR_NAME = "training.kubeflow.org/operator-name"
JOB_ROLE = "training.kubeflow.org/job-role"
DEFAULT_PORT = 23456
# Labels of a TrainJob's pods (JobSet, Job controller): see sailk8s.testing.trainpods.
JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
REPLICA_ORDER = ("Master", "Worker")


def owner_reference(job: Obj) -> Obj:
    """The controller ownerReference the operator sets on what it creates for `job`."""
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "name": job["metadata"]["name"],
        "uid": job["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def replica_pod(job: Obj, replica: str, index: int, spec: Obj) -> Obj:
    """The pod of one replica: the template plus operator labels, restart policy and env."""
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
    inject_env(job, pod_spec, replica, index)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-{replica.lower()}-{index}",
            "namespace": ns,
            "labels": labels,
            "annotations": dict(pod_meta.get("annotations") or {}),
            "ownerReferences": [owner_reference(job)],
        },
        "spec": pod_spec,
    }


def headless_service(job: Obj, pod: Obj) -> Obj:
    """The headless Service per replica the operator creates (MASTER_ADDR resolves to it)."""
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    labels = pod["metadata"]["labels"]
    selector = {k: labels[k] for k in (JOB_NAME, OPERATOR_NAME, REPLICA_TYPE, REPLICA_INDEX)}
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": selector,
            "ownerReferences": [owner_reference(job)],
        },
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "ports": [{"name": "pytorchjob-port", "port": master_port(job)}],
        },
    }


def master_port(job: Obj) -> int:
    """The master's pytorchjob-port, or the operator's default."""
    master = (job["spec"].get("pytorchReplicaSpecs") or {}).get("Master") or {}
    for container in ((master.get("template") or {}).get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == "pytorchjob-port":
                return int(port.get("containerPort", DEFAULT_PORT))
    return DEFAULT_PORT


def inject_env(job: Obj, pod_spec: Obj, replica: str, index: int) -> None:
    """The env the real operator appends: master address, world size, ranks, PET_* for torchrun."""
    spec = job["spec"]
    replicas = spec.get("pytorchReplicaSpecs") or {}
    total = sum(int(r.get("replicas", 1)) for r in replicas.values())
    nproc_raw = str(spec.get("nprocPerNode") or "1")
    nproc = int(nproc_raw) if nproc_raw.isdigit() else 1
    rank = index + 1 if replica == "Worker" and "Master" in replicas else index
    port = str(master_port(job))
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


def container_name(pod: Obj) -> str:
    """The name of the pod's first container (the one whose log and state the fake keeps)."""
    containers = pod.get("spec", {}).get("containers") or [{}]
    return str(containers[0].get("name", ""))


def container_env(kube: FakeKubernetes, pod: Obj) -> tuple[dict[str, str], str | None]:
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
            data = _data(kube, kind, ns, ref.get("name", ""))
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
            data = _data(kube, kind, ns, ref.get("name", ""))
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
            env[name] = field_value(pod, field_ref.get("fieldPath", ""))
    return env, None


def field_value(pod: Obj, path: str) -> str:
    """A downward-API fieldPath: metadata.name/namespace, metadata.labels['k'], metadata.annotations['k']."""
    meta = pod["metadata"]
    for where in ("labels", "annotations"):
        prefix = f"metadata.{where}['"
        if path.startswith(prefix) and path.endswith("']"):
            return str((meta.get(where) or {}).get(path[len(prefix):-2], ""))
    return str({"metadata.name": meta["name"], "metadata.namespace": meta["namespace"]}.get(path, ""))


def pod_identity(labels: dict[str, str]) -> tuple[str, str, int]:
    """(job name, replica Master|Worker, index) of an operator's pod: a PyTorchJob replica, or a
    TrainJob node (node 0 plays the master, as its rank is 0)."""
    if JOB_NAME not in labels and COMPLETION_INDEX in labels:
        index = int(labels.get(COMPLETION_INDEX, "0") or 0)
        return labels.get(JOBSET_NAME, ""), "Master" if index == 0 else "Worker", index
    replica = "Master" if labels.get(REPLICA_TYPE) == "master" else "Worker"
    return labels.get(JOB_NAME, ""), replica, int(labels.get(REPLICA_INDEX, "0"))


def _data(kube: FakeKubernetes, kind: str, ns: str, name: str) -> dict[str, str] | None:
    obj = kube.state.find(kube.type(kind), ns, name)
    if obj is None:
        return None
    data = {
        k: base64.b64decode(v).decode() if kind == "secrets" else str(v)
        for k, v in (obj.get("data") or {}).items()
    }
    data.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
    return data
