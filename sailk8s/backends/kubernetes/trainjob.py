"""Pure TrainJob builder: (pipeline, stage, attempt) -> a trainer.kubeflow.org/v1alpha1 manifest, as
plain dicts (no I/O), the Kubeflow Trainer v2 counterpart of manifest.build_pytorchjob."""

from __future__ import annotations

from typing import Any

from sailk8s.backends.base import attempt_name
from sailk8s.backends.kubernetes.jobkinds import TRAINER_GROUP, TRAINER_NODE, TRAINJOB
from sailk8s.backends.kubernetes.manifest import (
    ANNOTATION_KIND,
    ANNOTATION_SPEC_HASH,
    LABEL_KUEUE_QUEUE,
    SHM_VOLUME,
    TERMINATION_GRACE_SECONDS,
    compact,
    container_env,
    container_resources,
    gpu_affinity,
    is_elastic,
    job_labels,
    pod_tolerations,
    spec_hash,
)
from sailk8s.envcontract import launch_command
from sailk8s.errors import ConfigError
from sailk8s.spec import Pipeline, Stage

Obj = dict[str, Any]

# The runtime patch we own (a domain-prefixed path, as the trainer's webhook requires).
PATCH_MANAGER = "sail.io/sailk8s"
# Volcano reads the queue from the JobSet's annotations, which runtime patches propagate.
VOLCANO_QUEUE_ANNOTATION = "scheduling.volcano.sh/queue-name"


def trainjob_notes(stage: Stage) -> list[str]:
    """Stage fields a v2.3 TrainJob cannot carry per job (they belong to its runtime), one line each."""
    notes = []
    r, s = stage.resources, stage.scheduling
    if r.priority_class or s.priority_class:
        notes.append(
            f"stages.{stage.name}.resources.priority_class: a TrainJob cannot set a pod priority class; "
            "set priorityClassName in the runtime's pod template"
        )
    if s.min_available is not None:
        notes.append(
            f"stages.{stage.name}.scheduling.min_available: a TrainJob gang is the whole job "
            "(the runtime's podGroupPolicy)"
        )
    if s.gang:
        notes.append(
            f"stages.{stage.name}.scheduling.gang: gang scheduling comes from the runtime's "
            "podGroupPolicy (the chart sets it on sail-torch from kubeflow.trainer.gangScheduler)"
        )
    return notes


def _runtime_patch(stage: Stage, pod_labels: dict[str, str]) -> Obj:
    """Our labels on the JobSet and the node pods, and this stage's placement and /dev/shm size."""
    r = stage.resources
    pod_spec = compact(
        affinity=gpu_affinity(stage),
        nodeSelector=dict(r.node_selector) or None,
        terminationGracePeriodSeconds=TERMINATION_GRACE_SECONDS,
        tolerations=pod_tolerations(stage),
        # Merged by name into the runtime's /dev/shm emptyDir (strategic merge): the stage's size.
        volumes=[{"emptyDir": compact(medium="Memory", sizeLimit=r.shm_size), "name": SHM_VOLUME}],
    )
    pod_template = {
        "metadata": {"annotations": {ANNOTATION_KIND: stage.kind}, "labels": dict(pod_labels)},
        "spec": pod_spec,
    }
    node_job = {
        "name": TRAINER_NODE,
        "template": {"metadata": {"labels": dict(pod_labels)}, "spec": {"template": pod_template}},
    }
    annotations = {VOLCANO_QUEUE_ANNOTATION: stage.scheduling.queue} if stage.scheduling.queue else None
    meta = compact(annotations=annotations, labels=dict(pod_labels))
    template = {"metadata": meta, "spec": {"replicatedJobs": [node_job]}}
    return {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": template}}


def build_trainjob(
    pipeline: Pipeline,
    stage: Stage,
    attempt: int,
    *,
    namespace: str | None = None,
    store_endpoint: str | None = None,
    store_region: str | None = None,
    run_id: str = "",
) -> dict[str, Any]:
    """The TrainJob manifest (a JSON-ready dict) for one attempt of one stage (of run `run_id`).

    The runtime (pipeline.kubernetes.runtime) holds the pod defaults; the job names it and sets
    the trainer (image, command, env, nodes, resources) and, through one runtime patch, our
    labels on the pods (so `kubectl logs -l sail.io/run=...` works) and the stage's placement.
    """
    if attempt < 1:
        raise ConfigError(f"attempt must be >= 1, got {attempt}")
    if is_elastic(stage):
        raise ConfigError(
            f"stages.{stage.name}.scheduling.elastic_min_nodes/elastic_max_nodes: Kubeflow Trainer v2 has "
            "no elastic TrainJobs; remove them or use kubernetes.job_api: pytorchjob"
        )
    r = stage.resources
    labels = job_labels(pipeline, stage, attempt, run_id)
    # Kueue admits the TrainJob as a whole: its queue label stays off the pods.
    pod_labels = {k: v for k, v in labels.items() if k != LABEL_KUEUE_QUEUE}
    runtime = pipeline.kubernetes.runtime
    trainer = compact(
        command=launch_command(stage, nnodes=r.nodes),
        env=container_env(pipeline, stage, attempt, store_endpoint, store_region, run_id),
        image=r.image or pipeline.image,
        numNodes=r.nodes,
        numProcPerNode=r.nproc_per_node,
        resourcesPerNode=container_resources(stage),
    )
    metadata = compact(
        annotations={ANNOTATION_KIND: stage.kind},
        labels=labels,
        name=attempt_name(pipeline.run, stage.name, attempt),
        namespace=namespace or pipeline.namespace,
    )
    spec = compact(
        activeDeadlineSeconds=stage.scheduling.active_deadline_seconds,
        runtimePatches=[_runtime_patch(stage, pod_labels)],
        runtimeRef={"apiGroup": TRAINER_GROUP, "kind": runtime.kind, "name": runtime.name},
        trainer=trainer,
    )
    manifest: Obj = {
        "apiVersion": TRAINJOB.api_version,
        "kind": TRAINJOB.kind,
        "metadata": metadata,
        "spec": spec,
    }
    manifest["metadata"]["annotations"][ANNOTATION_SPEC_HASH] = spec_hash(manifest)
    return manifest
