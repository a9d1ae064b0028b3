"""Pure PyTorchJob builder: (pipeline, stage, attempt) -> a kubeflow.org/v1 manifest, as plain dicts
(no I/O, no client models) for `render`, the Kubernetes backend and tests."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from sailk8s.backends.base import attempt_name
from sailk8s.backends.kubernetes.jobkinds import LABEL_COMPLETION_INDEX, PYTORCHJOB
from sailk8s.envcontract import CREDENTIAL_VARS, launch_command, stage_env
from sailk8s.errors import ConfigError
from sailk8s.spec import Pipeline, Stage, Toleration

Obj = dict[str, Any]

API_VERSION = PYTORCHJOB.api_version
KIND = PYTORCHJOB.kind
GROUP = PYTORCHJOB.group
VERSION = PYTORCHJOB.version
PLURAL = PYTORCHJOB.plural
CONTAINER = "pytorch"  # the operator's webhook requires a container with this name

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_RUN = "sail.io/run"
LABEL_STAGE = "sail.io/stage"
LABEL_ATTEMPT = "sail.io/attempt"
LABEL_RUN_ID = "sail.io/run-id"  # this run's identity: a job of an earlier run of the name is not ours
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
# Set by the training operator on the pods it creates.
LABEL_REPLICA_TYPE = "training.kubeflow.org/replica-type"
LABEL_REPLICA_INDEX = "training.kubeflow.org/replica-index"
ANNOTATION_SPEC_HASH = "sail.io/spec-hash"
ANNOTATION_KIND = "sail.io/stage-kind"

APP_NAME = "sail-pipeline"
MANAGER = "sailk8s"
GPU_RESOURCE = "nvidia.com/gpu"
# Label published by NVIDIA GPU feature discovery on GPU nodes.
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
SHM_VOLUME = "dshm"
# In-place pod restarts on signal deaths before the operator fails the job; the controller
# then starts a fresh attempt (whole gang, resumed from the ledger) under its own budget.
IN_PLACE_RESTARTS = 3
# Time for a preempted pod to finish its checkpoint after SIGTERM.
TERMINATION_GRACE_SECONDS = 120


def selector_labels(run: str, stage: str | None = None, attempt: int | None = None) -> dict[str, str]:
    """The sail.io/* labels that select a run, a stage or one attempt."""
    labels = {LABEL_RUN: run}
    if stage is not None:
        labels[LABEL_STAGE] = stage
    if attempt is not None:
        labels[LABEL_ATTEMPT] = str(attempt)
    return labels


def label_selector(run: str, stage: str | None = None, attempt: int | None = None) -> str:
    """selector_labels as a `-l` string for the API and kubectl."""
    return ",".join(f"{k}={v}" for k, v in selector_labels(run, stage, attempt).items())


def job_labels(pipeline: Pipeline, stage: Stage, attempt: int, run_id: str = "") -> dict[str, str]:
    """Labels on the job and on its pod templates, so `kubectl logs -l` finds the pods."""
    labels = {
        **({LABEL_RUN_ID: run_id} if run_id else {}),
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: pipeline.run,
        LABEL_COMPONENT: stage.name,
        LABEL_MANAGED_BY: MANAGER,
        **selector_labels(pipeline.run, stage.name, attempt),
    }
    if stage.scheduling.kueue_queue:
        labels[LABEL_KUEUE_QUEUE] = stage.scheduling.kueue_queue
    return labels


def kubectl_commands(
    namespace: str, run: str, stages: list[str] | tuple[str, ...] = (), attempt: int | None = None,
    job_api: str = "pytorchjob",
) -> list[str]:
    """The kubectl lines that list a run's jobs and follow each stage's (or attempt's) rank 0."""
    plural, rank0 = PLURAL, f"{LABEL_REPLICA_TYPE}=master"
    if job_api == "trainjob":
        plural, rank0 = "trainjobs", "batch.kubernetes.io/job-completion-index=0"
    lines = [f"kubectl get {plural} -n {namespace} -l {label_selector(run)}"]
    for stage in stages:
        selector = f"{label_selector(run, stage, attempt)},{rank0}"
        lines.append(f"kubectl logs -f -n {namespace} -l {selector}")
    return lines


def is_elastic(stage: Stage) -> bool:
    """Whether the stage asks for an elastic (variable node count) job."""
    s = stage.scheduling
    return s.elastic_min_nodes is not None or s.elastic_max_nodes is not None


def elastic_bounds(stage: Stage) -> tuple[int, int]:
    """(min, max) worker nodes of an elastic stage; ConfigError if nodes lies outside them."""
    s, nodes = stage.scheduling, stage.resources.nodes
    lo = s.elastic_min_nodes if s.elastic_min_nodes is not None else 1
    hi = s.elastic_max_nodes if s.elastic_max_nodes is not None else nodes
    if not lo <= nodes <= hi:
        raise ConfigError(
            f"stages.{stage.name}.scheduling: elastic_min_nodes ({lo}) <= resources.nodes ({nodes}) "
            f"<= elastic_max_nodes ({hi}) must hold"
        )
    return lo, hi


def compact(**fields: Any) -> Obj:
    """An API object as the API client serializes one: camelCase keys, None fields left out."""
    return {key: value for key, value in fields.items() if value is not None}


def container_env(
    pipeline: Pipeline, stage: Stage, attempt: int, store_endpoint: str | None, store_region: str | None,
    run_id: str = "",
) -> list[Obj]:
    """The env contract; the store endpoint is literal, credentials only by secretKeyRef."""
    env: list[Obj] = [{"name": k, "value": v} for k, v in stage_env(pipeline, stage, attempt, run_id).items()]
    env.append({"name": "PYTHONUNBUFFERED", "value": "1"})
    if store_endpoint:
        env.append({"name": "SAIL_STORE_ENDPOINT", "value": store_endpoint})
    if store_region:
        env.append({"name": "SAIL_STORE_REGION", "value": store_region})
    if pipeline.store_secret:
        for var in CREDENTIAL_VARS:
            ref = {"key": var, "name": pipeline.store_secret, "optional": False}
            env.append({"name": var, "valueFrom": {"secretKeyRef": ref}})
    return env


def container_resources(stage: Stage) -> Obj:
    """Requests and limits of one node's container (memory request == limit, GPUs as limits)."""
    r = stage.resources
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if r.cpu:
        requests["cpu"] = r.cpu
    if r.memory:
        # Memory is incompressible: request == limit gives a predictable OOM boundary.
        requests["memory"] = limits["memory"] = r.memory
    if r.gpus_per_node:
        limits[GPU_RESOURCE] = str(r.gpus_per_node)
    return compact(limits=limits or None, requests=requests or None)


def pod_tolerations(stage: Stage) -> list[Obj] | None:
    """The stage's tolerations, plus the usual nvidia.com/gpu taint for GPU stages."""
    tols: list[Toleration] = list(stage.resources.tolerations)
    # GPU pools are commonly tainted nvidia.com/gpu:NoSchedule; tolerate it unless the user did.
    if stage.resources.gpus_per_node and not any(t.key == GPU_RESOURCE for t in tols):
        tols.append(Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule"))
    out = [
        compact(
            effect=t.effect,
            key=t.key,
            operator=t.operator,
            tolerationSeconds=t.toleration_seconds,
            value=t.value,
        )
        for t in tols
    ]
    return out or None


def gpu_affinity(stage: Stage) -> Obj | None:
    """GPU stages prefer nodes that GPU feature discovery marks as GPU nodes."""
    if not stage.resources.gpus_per_node:
        return None
    term = {"matchExpressions": [{"key": GPU_PRESENT_LABEL, "operator": "In", "values": ["true"]}]}
    # Preferred, not required: the nvidia.com/gpu limit already forces GPU nodes, and clusters
    # without feature discovery must still schedule.
    pref = {"preference": term, "weight": 100}
    return {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [pref]}}


def _pod_template(
    pipeline: Pipeline,
    stage: Stage,
    attempt: int,
    labels: dict[str, str],
    store_endpoint: str | None,
    store_region: str | None,
    run_id: str = "",
) -> Obj:
    r = stage.resources
    nnodes = None if is_elastic(stage) else r.nodes  # elastic: the operator sets PET_NNODES=min:max
    container = {
        "command": launch_command(stage, nnodes=nnodes),
        "env": container_env(pipeline, stage, attempt, store_endpoint, store_region, run_id),
        "image": r.image or pipeline.image,
        "name": CONTAINER,
        "resources": container_resources(stage),
        "volumeMounts": [{"mountPath": "/dev/shm", "name": SHM_VOLUME}],
    }
    shm = compact(medium="Memory", sizeLimit=r.shm_size)
    spec = compact(
        affinity=gpu_affinity(stage),
        containers=[compact(**container)],
        enableServiceLinks=False,
        nodeSelector=dict(r.node_selector) or None,
        priorityClassName=r.priority_class,
        terminationGracePeriodSeconds=TERMINATION_GRACE_SECONDS,
        tolerations=pod_tolerations(stage),
        volumes=[{"emptyDir": shm, "name": SHM_VOLUME}],
    )
    return {"metadata": {"annotations": {ANNOTATION_KIND: stage.kind}, "labels": dict(labels)}, "spec": spec}


def _run_policy(stage: Stage) -> Obj:
    s, r = stage.scheduling, stage.resources
    scheduling = None
    if s.gang or s.queue or s.min_available or s.priority_class:
        replicas = r.nodes
        scheduling = compact(
            # A gang starts all its pods or none: no half-started jobs holding GPUs.
            minAvailable=s.min_available or (elastic_bounds(stage)[0] if is_elastic(stage) else replicas),
            priorityClass=s.priority_class or r.priority_class,
            queue=s.queue,
        )
    return compact(
        activeDeadlineSeconds=s.active_deadline_seconds,
        backoffLimit=min(IN_PLACE_RESTARTS, stage.retry.max_infra_retries),
        cleanPodPolicy=s.clean_pod_policy,
        schedulingPolicy=scheduling,
        ttlSecondsAfterFinished=s.ttl_seconds_after_finished,
    )


def spec_hash(manifest: dict[str, Any]) -> str:
    """sha256 of what defines the job (spec + labels), ignoring server-set fields and the hash."""
    meta = manifest.get("metadata") or {}
    basis = {"spec": manifest.get("spec"), "labels": meta.get("labels") or {}}
    return hashlib.sha256(json.dumps(basis, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _replica_spec(replicas: int, template: Obj) -> Obj:
    """A replica type under restartPolicy ExitCode (see sailk8s.exitcodes).

    The operator restarts a pod in place when it dies by a signal (code >= 128: SIGKILL, SIGTERM
    on preemption) up to runPolicy.backoffLimit times, and fails the job at once for codes
    1-127, which the controller then classifies (1 app, 2-5 permanent, 75 infra). That needs the
    rank's own code: the container runs torchrun through `python -m jobs.launch`, as torchrun
    alone exits 1 whatever its ranks returned. Each replica type gets its own template copy.
    """
    return {"replicas": replicas, "restartPolicy": "ExitCode", "template": copy.deepcopy(template)}


def build_pytorchjob(
    pipeline: Pipeline,
    stage: Stage,
    attempt: int,
    *,
    namespace: str | None = None,
    store_endpoint: str | None = None,
    store_region: str | None = None,
    run_id: str = "",
) -> dict[str, Any]:
    """The PyTorchJob manifest (a JSON-ready dict) for one attempt of one stage (of run `run_id`).

    Elastic stages (scheduling.elastic_min_nodes / elastic_max_nodes) use Worker replicas only,
    as the operator's elastic examples do: c10d rendezvous runs on worker-0, every node is a peer.
    """
    if attempt < 1:
        raise ConfigError(f"attempt must be >= 1, got {attempt}")
    r = stage.resources
    labels = job_labels(pipeline, stage, attempt, run_id)
    # Kueue admits the job as a whole; its queue label on the pods too would make Kueue's
    # plain-pod integration try to manage them a second time.
    pod_labels = {k: v for k, v in labels.items() if k != LABEL_KUEUE_QUEUE}
    template = _pod_template(pipeline, stage, attempt, pod_labels, store_endpoint, store_region, run_id)
    elastic_policy = None
    if is_elastic(stage):
        lo, hi = elastic_bounds(stage)
        replica_specs = {"Worker": _replica_spec(r.nodes, template)}
        elastic_policy = {
            "maxReplicas": hi,
            "maxRestarts": min(IN_PLACE_RESTARTS, stage.retry.max_infra_retries),
            "minReplicas": lo,
            "rdzvBackend": "c10d",
        }
    else:
        replica_specs = {"Master": _replica_spec(1, template)}
        if r.nodes > 1:
            replica_specs["Worker"] = _replica_spec(r.nodes - 1, template)
    metadata = compact(
        annotations={ANNOTATION_KIND: stage.kind},
        labels=labels,
        name=attempt_name(pipeline.run, stage.name, attempt),
        namespace=namespace or pipeline.namespace,
    )
    spec = compact(
        elasticPolicy=elastic_policy,
        nprocPerNode=str(r.nproc_per_node),
        pytorchReplicaSpecs=replica_specs,
        runPolicy=_run_policy(stage),
    )
    manifest: Obj = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}
    manifest["metadata"]["annotations"][ANNOTATION_SPEC_HASH] = spec_hash(manifest)
    return manifest


def replica_rank(labels: dict[str, str], has_master: bool = True) -> int:
    """Node rank of an operator-created pod: master 0, worker-i i+1 (i in a worker-only job); a
    TrainJob's node pod: its Job completion index (what PET_NODE_RANK is set from)."""
    if LABEL_COMPLETION_INDEX in labels:
        try:
            return int(labels[LABEL_COMPLETION_INDEX])
        except ValueError:
            return 0
    rtype = labels.get(LABEL_REPLICA_TYPE, "").lower()
    try:
        index = int(labels.get(LABEL_REPLICA_INDEX, "0") or 0)
    except ValueError:
        index = 0
    if rtype == "master" or not has_master:
        return index
    return index + 1
