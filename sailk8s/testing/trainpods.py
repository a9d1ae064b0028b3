"""What the fake Trainer v2 makes of a TrainJob and its runtime: the node pods JobSet would create,
with the runtime template, the job's runtime patches, spec.trainer and the torch plugin's PET_* env."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from sailk8s.backends.kubernetes.jobkinds import (
    ANCESTOR_TRAINER,
    LABEL_ANCESTOR,
    LABEL_COMPLETION_INDEX,
    LABEL_JOB_INDEX,
    LABEL_JOBSET_NAME,
    LABEL_REPLICATED_JOB,
    TRAINER_NODE,
    TRAINER_PORT,
    TRAINJOB,
)

Obj = dict[str, Any]

COMPLETION_INDEX_ANNOTATION = LABEL_COMPLETION_INDEX  # the Job controller sets both
MERGE_BY_NAME = ("containers", "initContainers", "volumes", "env", "volumeMounts")


def strategic_merge(base: Any, patch: Any, key: str = "") -> Any:
    """The parts of Kubernetes' strategic merge patch a runtime patch needs: maps merge, the
    lists keyed by name (containers, volumes, env, volumeMounts) merge per name, others replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = strategic_merge(base[k], v, k) if k in base else copy.deepcopy(v)
        return out
    if key in MERGE_BY_NAME and isinstance(base, list) and isinstance(patch, list):
        merged = [copy.deepcopy(item) for item in base]
        names = [item.get("name") for item in merged]
        for item in patch:
            if item.get("name") in names:
                i = names.index(item.get("name"))
                merged[i] = strategic_merge(merged[i], item)
            else:
                merged.append(copy.deepcopy(item))
        return merged
    return copy.deepcopy(patch)


def node_job(runtime: Obj) -> Obj | None:
    """The runtime's replicated job that runs the trainer (ancestor label `trainer`)."""
    for rjob in ((runtime.get("spec") or {}).get("template") or {}).get("spec", {}).get(
        "replicatedJobs"
    ) or []:
        if ((rjob.get("template") or {}).get("metadata") or {}).get("labels", {}).get(
            LABEL_ANCESTOR
        ) == ANCESTOR_TRAINER:
            return dict(rjob)
    return None


def patched_node_job(job: Obj, runtime: Obj) -> Obj | None:
    """The trainer's replicated job after every runtime patch of the job, in order."""
    rjob = node_job(runtime)
    if rjob is None:
        return None
    for patch in (job.get("spec") or {}).get("runtimePatches") or []:
        spec = ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}
        for rpatch in spec.get("replicatedJobs") or []:
            if rpatch.get("name") == rjob.get("name"):
                rjob = strategic_merge(rjob, rpatch)
    return rjob


def num_nodes(job: Obj, runtime: Obj) -> int:
    """spec.trainer.numNodes, else the runtime's mlPolicy.numNodes, else 1."""
    trainer = (job.get("spec") or {}).get("trainer") or {}
    ml = (runtime.get("spec") or {}).get("mlPolicy") or {}
    return int(trainer.get("numNodes") or ml.get("numNodes") or 1)


def pet_env(job: Obj, runtime: Obj) -> list[Obj]:
    """The torch plugin's env: PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK (from the completion
    index), PET_MASTER_ADDR (node 0 through the JobSet's headless Service), PET_MASTER_PORT."""
    name = job["metadata"]["name"]
    trainer = (job.get("spec") or {}).get("trainer") or {}
    nproc = trainer.get("numProcPerNode")
    index_ref = {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}
    return [
        {"name": "PET_NNODES", "value": str(num_nodes(job, runtime))},
        {"name": "PET_NPROC_PER_NODE", "value": str(nproc) if nproc is not None else "auto"},
        {"name": "PET_NODE_RANK", "valueFrom": index_ref},
        {"name": "PET_MASTER_ADDR", "value": f"{name}-{TRAINER_NODE}-0-0.{name}"},
        {"name": "PET_MASTER_PORT", "value": str(TRAINER_PORT)},
    ]


def _upsert(env: list[Obj], items: list[Obj]) -> list[Obj]:
    out = [e for e in env if e.get("name") not in {i["name"] for i in items}]
    return out + [copy.deepcopy(i) for i in items]


def owner_reference(job: Obj) -> Obj:
    """Owned by the TrainJob (the real chain is TrainJob > JobSet > Job > Pod; one hop is enough here)."""
    return {
        "apiVersion": TRAINJOB.api_version,
        "kind": TRAINJOB.kind,
        "name": job["metadata"]["name"],
        "uid": job["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def node_pod(job: Obj, runtime: Obj, index: int, incarnation: int = 0) -> Obj:
    """The pod of trainer node `index` (its incarnation-th try), as JobSet and the Job controller name
    and label it: `<job>-node-0-<index>-<5 chars>`."""
    rjob = patched_node_job(job, runtime) or {}
    meta = job["metadata"]
    ns, name = meta["namespace"], meta["name"]
    template = copy.deepcopy(((rjob.get("template") or {}).get("spec") or {}).get("template") or {})
    pod_meta = template.get("metadata") or {}
    labels = {
        **(pod_meta.get("labels") or {}),
        LABEL_JOBSET_NAME: name,
        LABEL_REPLICATED_JOB: str(rjob.get("name", TRAINER_NODE)),
        LABEL_JOB_INDEX: "0",
        LABEL_COMPLETION_INDEX: str(index),
        LABEL_ANCESTOR: ANCESTOR_TRAINER,
    }
    annotations = {**(pod_meta.get("annotations") or {}), COMPLETION_INDEX_ANNOTATION: str(index)}
    spec = template.get("spec") or {}
    trainer = (job.get("spec") or {}).get("trainer") or {}
    for container in spec.get("containers") or []:
        if container.get("name") != TRAINER_NODE:
            continue
        for key, field in (
            ("image", "image"),
            ("command", "command"),
            ("args", "args"),
            ("resources", "resourcesPerNode"),
        ):
            if trainer.get(field) is not None:
                container[key] = copy.deepcopy(trainer[field])
        env = _upsert(container.get("env") or [], list(trainer.get("env") or []))
        container["env"] = _upsert(env, pet_env(job, runtime))
        container.setdefault("ports", []).append({"containerPort": TRAINER_PORT})
    spec.setdefault("restartPolicy", "Never")
    spec.setdefault("subdomain", name)
    suffix = hashlib.sha256(f"{meta['uid']}/{index}/{incarnation}".encode()).hexdigest()[:5]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-{TRAINER_NODE}-0-{index}-{suffix}",
            "namespace": ns,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(job)],
        },
        "spec": spec,
    }
