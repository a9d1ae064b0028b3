"""Pure builder of the `sail-torch` (Cluster)TrainingRuntime: our pod defaults for every TrainJob."""

from __future__ import annotations

from typing import Any, Literal

from sailk8s.backends.kubernetes.jobkinds import (
    ANCESTOR_TRAINER,
    CLUSTER_RUNTIME_KIND,
    LABEL_ANCESTOR,
    RUNTIME_KIND,
    TRAINER_NODE,
    TRAINJOB,
)
from sailk8s.backends.kubernetes.manifest import (
    APP_NAME,
    IN_PLACE_RESTARTS,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGER,
    SHM_VOLUME,
    TERMINATION_GRACE_SECONDS,
)
from sailk8s.errors import ConfigError

Obj = dict[str, Any]
GangScheduler = Literal["coscheduling", "volcano"]

DEFAULT_RUNTIME = "sail-torch"
RUN_AS = 10001  # the workload images' user (images/workload/Dockerfile)
# Signal deaths (128 + signal 1..31: SIGKILL, SIGTERM on preemption) restart the pod in place,
# as restartPolicy ExitCode does for PyTorchJobs; codes 1-127 fail the job at once, so the
# controller classifies them (sailk8s.exitcodes) and decides on a new attempt itself.
SIGNAL_EXIT_CODES = list(range(129, 160))


def _node_job(image: str, store_secret: str | None, restarts: int) -> Obj:
    container: Obj = {
        "name": TRAINER_NODE,
        "image": image,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
        },
        "volumeMounts": [{"mountPath": "/dev/shm", "name": SHM_VOLUME}],
    }
    if store_secret:
        # Credentials by reference only; the TrainJob's env names the same keys (env wins).
        container["envFrom"] = [{"secretRef": {"name": store_secret, "optional": False}}]
    pod_spec = {
        "containers": [container],
        "enableServiceLinks": False,
        "restartPolicy": "Never",  # a Job podFailurePolicy requires it
        "securityContext": {
            "fsGroup": RUN_AS,
            "runAsGroup": RUN_AS,
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "volumes": [{"emptyDir": {"medium": "Memory"}, "name": SHM_VOLUME}],
    }
    fail_fast = {
        "action": "FailJob",
        "onExitCodes": {"containerName": TRAINER_NODE, "operator": "NotIn", "values": SIGNAL_EXIT_CODES},
    }
    job_spec = {
        "backoffLimit": restarts,
        "podFailurePolicy": {"rules": [fail_fast]},
        "template": {"spec": pod_spec},
    }
    return {
        "name": TRAINER_NODE,
        "replicas": 1,
        "template": {"metadata": {"labels": {LABEL_ANCESTOR: ANCESTOR_TRAINER}}, "spec": job_spec},
    }


def build_training_runtime(
    name: str = DEFAULT_RUNTIME,
    *,
    image: str,
    namespace: str | None = None,
    store_secret: str | None = "sail-store-credentials",
    gang: GangScheduler | None = None,
    schedule_timeout_seconds: int = 300,
    in_place_restarts: int = IN_PLACE_RESTARTS,
) -> dict[str, Any]:
    """A ClusterTrainingRuntime (no namespace) or TrainingRuntime (in `namespace`) for torchrun jobs.

    `gang` adds a podGroupPolicy: the scheduler-plugins coscheduling PodGroup or a Volcano one,
    so a TrainJob's nodes start all together or not at all.
    """
    if in_place_restarts < 0:
        raise ConfigError(f"in_place_restarts must be >= 0, got {in_place_restarts}")
    kind = RUNTIME_KIND if namespace else CLUSTER_RUNTIME_KIND
    metadata: Obj = {
        "labels": {
            LABEL_MANAGED_BY: MANAGER,
            LABEL_NAME: APP_NAME,
            "trainer.kubeflow.org/framework": "torch",
        },
        "name": name,
    }
    if namespace:
        metadata["namespace"] = namespace
    spec: Obj = {
        "mlPolicy": {"numNodes": 1, "torch": {}},
        "template": {
            "spec": {
                # One failed node fails the JobSet: the controller's next attempt is the restart.
                "failurePolicy": {"maxRestarts": 0},
                "replicatedJobs": [_node_job(image, store_secret, in_place_restarts)],
            }
        },
    }
    if gang == "coscheduling":
        spec["podGroupPolicy"] = {"coscheduling": {"scheduleTimeoutSeconds": schedule_timeout_seconds}}
    elif gang == "volcano":
        spec["podGroupPolicy"] = {"volcano": {}}
    elif gang is not None:
        raise ConfigError(f"gang must be coscheduling or volcano, got {gang!r}")
    return {"apiVersion": TRAINJOB.api_version, "kind": kind, "metadata": metadata, "spec": spec}
