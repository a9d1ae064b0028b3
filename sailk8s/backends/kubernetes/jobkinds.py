"""The two job APIs a stage attempt can run as, and the names their controllers put on pods."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JobResource:
    """A namespaced custom resource the backend creates: where the API serves it, and its kind."""

    group: str
    version: str
    plural: str
    kind: str
    operator: str  # what a user installs to get it served, for messages

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


PYTORCHJOB = JobResource(
    "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob", "the Kubeflow Training Operator v1"
)
TRAINJOB = JobResource(
    "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob", "Kubeflow Trainer v2 (v2.3 or later)"
)
JOB_RESOURCES = {"pytorchjob": PYTORCHJOB, "trainjob": TRAINJOB}

# Trainer v2: runtimes, and the replicated job / container that runs the trainer.
TRAINER_GROUP = TRAINJOB.group
CLUSTER_RUNTIME_KIND = "ClusterTrainingRuntime"
RUNTIME_KIND = "TrainingRuntime"
RUNTIME_KINDS = (CLUSTER_RUNTIME_KIND, RUNTIME_KIND)
TRAINER_NODE = "node"  # the replicated job and its container that run the trainer
LABEL_ANCESTOR = "trainer.kubeflow.org/trainjob-ancestor-step"
ANCESTOR_TRAINER = "trainer"
# Set by JobSet and the Job controller on the pods of a TrainJob.
LABEL_JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
LABEL_REPLICATED_JOB = "jobset.sigs.k8s.io/replicatedjob-name"
LABEL_JOB_INDEX = "jobset.sigs.k8s.io/job-index"
LABEL_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
# torchrun's environment, which the trainer's torch plugin sets on the node container.
PET_VARS = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
TRAINER_PORT = 29500
