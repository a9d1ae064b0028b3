"""One interface over the two job APIs (PyTorchJob, TrainJob): build, check and name an attempt's
job, so render, dry runs and the backend do not know which API runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sailk8s.backends.base import AttemptStatus
from sailk8s.backends.kubernetes import trainvalidation, validation
from sailk8s.backends.kubernetes.jobkinds import JOB_RESOURCES, RUNTIME_KIND, TRAINER_NODE, JobResource
from sailk8s.backends.kubernetes.manifest import CONTAINER, build_pytorchjob, kubectl_commands
from sailk8s.backends.kubernetes.status import derive_status
from sailk8s.backends.kubernetes.trainjob import build_trainjob, trainjob_notes
from sailk8s.backends.kubernetes.trainruntime import DEFAULT_RUNTIME, build_training_runtime
from sailk8s.backends.kubernetes.trainstatus import derive_trainjob_status
from sailk8s.spec import Pipeline, Stage

Obj = dict[str, Any]
Crd = str | os.PathLike[str] | None


@dataclass(frozen=True)
class JobApi:
    """What differs between the APIs, behind one set of calls."""

    name: str  # pytorchjob | trainjob
    resource: JobResource
    builder: Callable[..., Obj]
    deriver: Callable[..., AttemptStatus]
    container: str  # the training container of the job's pods (logs, exit codes)
    crd_hint: str

    @property
    def kind(self) -> str:
        return self.resource.kind

    def derive_status(self, job: Obj | None, pods: list[Obj], **kwargs: Any) -> AttemptStatus:
        """The attempt's status from its job and pods (see status / trainstatus), one vocabulary."""
        return self.deriver(job, pods, **kwargs)

    def build(
        self,
        pipeline: Pipeline,
        stage: Stage,
        attempt: int,
        *,
        namespace: str | None = None,
        store_endpoint: str | None = None,
        store_region: str | None = None,
        run_id: str = "",
    ) -> Obj:
        """The attempt's job manifest (pure)."""
        return self.builder(
            pipeline,
            stage,
            attempt,
            namespace=namespace,
            store_endpoint=store_endpoint,
            store_region=store_region,
            run_id=run_id,
        )

    def webhook_errors(self, manifest: Obj, pipeline: Pipeline | None = None) -> list[str]:
        """The operator's admission rules (no CRD file needed), one message per problem."""
        if self.name == "trainjob":
            runtime = reference_runtime(pipeline, manifest) if pipeline is not None else None
            return trainvalidation.trainjob_webhook_errors(manifest, runtime)
        return validation.webhook_errors(manifest)

    def check(self, manifest: Obj, pipeline: Pipeline | None = None) -> None:
        """Raise ManifestInvalid when the webhook rules fail (what submit and dry runs do)."""
        problems = self.webhook_errors(manifest, pipeline)
        if problems:
            raise validation.ManifestInvalid(manifest["metadata"]["name"], problems, self.resource.kind)

    def find_crd(self, crd: Crd = None) -> Any:
        """The CRD file (PyTorchJob) or folder-resolved file (TrainJob), None when absent."""
        if self.name == "trainjob":
            return trainvalidation.find_trainer_crd("TrainJob", os.path.dirname(str(crd)) if crd else None)
        return validation.find_crd(crd)

    def validate(self, manifest: Obj, crd: Crd = None, pipeline: Pipeline | None = None) -> bool:
        """Webhook rules and, when the CRD is found, its schema; True if the schema was checked."""
        if self.name == "trainjob":
            runtime = reference_runtime(pipeline, manifest) if pipeline is not None else None
            folder = os.path.dirname(str(crd)) if crd else None
            return trainvalidation.validate_trainjob(manifest, runtime, folder)
        return validation.validate_manifest(manifest, crd)

    def notes(self, stage: Stage) -> list[str]:
        """Stage fields this API cannot carry, one line each (printed by render)."""
        return trainjob_notes(stage) if self.name == "trainjob" else []

    def kubectl(
        self, namespace: str, run: str, stages: list[str] | tuple[str, ...] = (), attempt: int | None = None
    ) -> list[str]:
        """kubectl lines that list the run's jobs and follow each stage's rank 0."""
        return kubectl_commands(namespace, run, stages, attempt, job_api=self.name)


def reference_runtime(pipeline: Pipeline | None, job: Obj) -> Obj | None:
    """The chart's `sail-torch` runtime as the job will meet it; None for a runtime the user named."""
    if pipeline is None:
        return None
    ref = pipeline.kubernetes.runtime
    if ref.name != DEFAULT_RUNTIME:
        return None
    ns = (job.get("metadata") or {}).get("namespace") if ref.kind == RUNTIME_KIND else None
    return build_training_runtime(
        ref.name, image=pipeline.image, namespace=ns, store_secret=pipeline.store_secret
    )


PYTORCHJOB_API = JobApi(
    "pytorchjob",
    JOB_RESOURCES["pytorchjob"],
    build_pytorchjob,
    derive_status,
    CONTAINER,
    "pass --crd or set SAIL_PYTORCHJOB_CRD",
)
TRAINJOB_API = JobApi(
    "trainjob",
    JOB_RESOURCES["trainjob"],
    build_trainjob,
    derive_trainjob_status,
    TRAINER_NODE,
    "pass --crd (a file in the trainer-v2 CRD folder) or set SAIL_TRAINER_CRDS",
)


def job_api(name: str) -> JobApi:
    """The JobApi of `kubernetes.job_api` (pytorchjob | trainjob)."""
    return TRAINJOB_API if name == "trainjob" else PYTORCHJOB_API


def for_pipeline(pipeline: Pipeline) -> JobApi:
    """The JobApi a pipeline file asks for."""
    return job_api(pipeline.kubernetes.job_api)
