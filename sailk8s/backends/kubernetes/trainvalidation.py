"""Check TrainJobs and (Cluster)TrainingRuntimes against the Trainer v2.3 CRD schemas, their CEL
rules, and the rules of the trainer's admission webhooks (pkg/webhooks, the runtime plugins)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from sailk8s.backends.kubernetes.jobkinds import (
    ANCESTOR_TRAINER,
    LABEL_ANCESTOR,
    PET_VARS,
    RUNTIME_KIND,
    RUNTIME_KINDS,
    TRAINER_GROUP,
    TRAINER_NODE,
    TRAINJOB,
)
from sailk8s.backends.kubernetes.validation import (
    ManifestInvalid,
    find_crd,
    load_schema,
    name_errors,
    schema_errors,
    unknown_field_errors,
)

Obj = dict[str, Any]

CRD_DIR = "trainer-v2"
CRD_ENV = "SAIL_TRAINER_CRDS"  # a folder holding the three trainer.kubeflow.org_*.yaml files
CRD_FILES = {
    "TrainJob": "trainer.kubeflow.org_trainjobs.yaml",
    "ClusterTrainingRuntime": "trainer.kubeflow.org_clustertrainingruntimes.yaml",
    "TrainingRuntime": "trainer.kubeflow.org_trainingruntimes.yaml",
}
MANAGED_BY = ("trainer.kubeflow.org/trainjob-controller", "kueue.x-k8s.io/multikueue")
INITIALIZERS = ("dataset-initializer", "model-initializer")
# Ancestor label value -> the container its replicated job must have.
ANCESTOR_CONTAINERS = {ANCESTOR_TRAINER: TRAINER_NODE, **{i: i for i in INITIALIZERS}}
VOLCANO_QUEUE = "scheduling.volcano.sh/queue-name"
ML_POLICIES = ("torch", "mpi", "jax", "xgboost", "flux")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_PATH = re.compile(r"^[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://.+$")


def find_trainer_crd(kind: str, crd_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The CRD of `kind`: in crd_dir, $SAIL_TRAINER_CRDS, or ../shared/crds/trainer-v2."""
    filename = CRD_FILES[kind]
    folder = crd_dir or os.environ.get(CRD_ENV)
    if folder:
        path = Path(folder) / filename
        return path if path.is_file() else None
    return find_crd(None, f"{CRD_DIR}/{filename}", env_var="")


def _dig(obj: Any, *keys: str) -> Any:
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _replicated_jobs(runtime: Obj) -> list[Obj]:
    return list(_dig(runtime, "spec", "template", "spec", "replicatedJobs") or [])


def _pod_containers(rjob: Obj, key: str = "containers") -> list[Obj]:
    return list(_dig(rjob, "template", "spec", "template", "spec", key) or [])


def _container_names(runtime: Obj) -> dict[str, set[str]]:
    """Replicated job name -> the names of its containers and init containers."""
    return {
        str(rj.get("name")): {
            str(c.get("name")) for c in _pod_containers(rj) + _pod_containers(rj, "initContainers")
        }
        for rj in _replicated_jobs(runtime)
    }


def domain_prefixed_path_errors(where: str, value: str) -> list[str]:
    """Kubernetes' IsDomainPrefixedPath: `<DNS subdomain>/<path>`, as runtime patch managers must be."""
    prefix, sep, path = value.partition("/")
    if not sep or not prefix or not path:
        return [f"{where}: {value!r} must be a domain-prefixed path such as 'example.com/manager'"]
    errs = []
    if len(prefix) > 253 or not _SUBDOMAIN.match(prefix):
        errs.append(f"{where}: {prefix!r} is not a DNS-1123 subdomain")
    if not _PATH.match(path):
        errs.append(f"{where}: {path!r} holds characters a path may not")
    return errs


def _patch_errors(job: Obj, runtime: Obj | None) -> list[str]:
    """The JobSet plugin's rules on spec.runtimePatches."""
    errs: list[str] = []
    patches = _dig(job, "spec", "runtimePatches") or []
    managers = [p.get("manager", "") for p in patches]
    for i, manager in enumerate(managers):
        errs += domain_prefixed_path_errors(f"spec.runtimePatches[{i}].manager", str(manager))
        if managers.index(manager) != i:
            errs.append(f"spec.runtimePatches[{i}].manager: duplicate manager {manager!r}")
    known = _container_names(runtime) if runtime is not None else None
    for i, patch in enumerate(patches):
        for j, rjob in enumerate(
            _dig(patch, "trainingRuntimeSpec", "template", "spec", "replicatedJobs") or []
        ):
            where = f"spec.runtimePatches[{i}].trainingRuntimeSpec.template.spec.replicatedJobs[{j}]"
            name = str(rjob.get("name"))
            if known is not None and name not in known:
                errs.append(f"{where}: must not have a replicated job ({name!r}) that the runtime lacks")
                continue
            for key in ("initContainers", "containers"):
                for c in _pod_containers(rjob, key):
                    cname = str(c.get("name"))
                    if known is not None and cname not in known[name]:
                        errs.append(
                            f"{where}: must not have a {key[:-1]} ({cname!r}) that the runtime job "
                            f"{name!r} lacks"
                        )
                    elif key == "containers" and c.get("env") and cname in (TRAINER_NODE, *INITIALIZERS):
                        errs.append(
                            f"{where}: must not set env of the {cname!r} container (use spec.trainer.env)"
                        )
    return errs


def trainjob_webhook_errors(job: Obj, runtime: Obj | None = None) -> list[str]:
    """The TrainJob's CEL rules and the trainer's validating webhook; with the runtime it names,
    the rules that need it (runtime patches, initializers, Volcano queue) too."""
    errs: list[str] = []
    if job.get("apiVersion") != TRAINJOB.api_version or job.get("kind") != TRAINJOB.kind:
        errs.append(f"apiVersion/kind: must be {TRAINJOB.api_version} {TRAINJOB.kind}")
    errs += name_errors(job)
    spec = job.get("spec") or {}
    ref = spec.get("runtimeRef") or {}
    group, kind = ref.get("apiGroup", TRAINER_GROUP), ref.get("kind", "ClusterTrainingRuntime")
    if not ref.get("name"):
        errs.append("spec.runtimeRef.name: must be set")
    if group != TRAINER_GROUP or kind not in RUNTIME_KINDS:
        errs.append(
            f"spec.runtimeRef: unsupported runtime {kind}.{group} (one of "
            f"{', '.join(k + '.' + TRAINER_GROUP for k in RUNTIME_KINDS)})"
        )
    managed = spec.get("managedBy")
    if managed is not None and managed not in MANAGED_BY:
        errs.append(f"spec.managedBy: must be one of {', '.join(MANAGED_BY)} if set")
    for which in ("dataset", "model"):
        uri = _dig(spec, "initializer", which, "storageUri")
        if uri and not _URI.match(str(uri)):
            errs.append(f"spec.initializer.{which}.storageUri: {uri!r} is not a URI (scheme://...)")
    reserved = sorted({str(e.get("name")) for e in _dig(spec, "trainer", "env") or []} & set(PET_VARS))
    if reserved:
        errs.append(
            f"spec.trainer.env: must not set the torchrun variables the trainer sets: {', '.join(reserved)}"
        )
    nodes = _dig(spec, "trainer", "numNodes")
    if isinstance(nodes, int) and nodes < 1:
        errs.append(f"spec.trainer.numNodes: must be >= 1, got {nodes}")
    errs += _patch_errors(job, runtime)
    if runtime is not None:
        errs += _runtime_ref_errors(job, runtime)
    return errs


def _runtime_ref_errors(job: Obj, runtime: Obj) -> list[str]:
    """Rules that hold between a TrainJob and the runtime it names."""
    errs: list[str] = []
    spec = job.get("spec") or {}
    ref = spec.get("runtimeRef") or {}
    meta = runtime.get("metadata") or {}
    if ref.get("name") != meta.get("name") or ref.get("kind", "ClusterTrainingRuntime") != runtime.get(
        "kind"
    ):
        errs.append(
            f"spec.runtimeRef: names {ref.get('kind')}/{ref.get('name')}, not the runtime given "
            f"({runtime.get('kind')}/{meta.get('name')})"
        )
    job_ns = (job.get("metadata") or {}).get("namespace")
    if runtime.get("kind") == RUNTIME_KIND and meta.get("namespace") != job_ns:
        errs.append(f"spec.runtimeRef: a TrainingRuntime must be in the TrainJob's namespace ({job_ns})")
    containers = _container_names(runtime)
    for which in INITIALIZERS:
        if _dig(spec, "initializer", which.split("-")[0]) is not None and which not in containers.get(
            which, set()
        ):
            errs.append(
                f"spec.runtimeRef: the runtime must have a {which!r} job with a {which!r} container "
                f"for spec.initializer.{which.split('-')[0]}"
            )
    if _dig(runtime, "spec", "podGroupPolicy", "volcano") is not None:
        annotations = dict(_dig(runtime, "spec", "template", "metadata", "annotations") or {})
        for patch in spec.get("runtimePatches") or []:
            annotations.update(
                _dig(patch, "trainingRuntimeSpec", "template", "metadata", "annotations") or {}
            )
        if VOLCANO_QUEUE in annotations and not annotations[VOLCANO_QUEUE]:
            errs.append(f"metadata.annotations.{VOLCANO_QUEUE}: the Volcano queue name must not be empty")
    return errs


def runtime_webhook_errors(runtime: Obj) -> list[str]:
    """The (Cluster)TrainingRuntime's CEL rules and its validating webhook."""
    errs: list[str] = []
    if runtime.get("apiVersion") != TRAINJOB.api_version or runtime.get("kind") not in RUNTIME_KINDS:
        errs.append(f"apiVersion/kind: must be {TRAINJOB.api_version} {' or '.join(RUNTIME_KINDS)}")
    if not (runtime.get("metadata") or {}).get("name"):
        errs.append("metadata.name: must be set")
    ml = _dig(runtime, "spec", "mlPolicy") or {}
    if sum(p in ml for p in ML_POLICIES) > 1:
        errs.append(
            "spec.mlPolicy: only one of the policies (torch, mpi, jax, xgboost, flux) can be configured"
        )
    pgp = _dig(runtime, "spec", "podGroupPolicy") or {}
    if sum(p in pgp for p in ("coscheduling", "volcano")) > 1:
        errs.append("spec.podGroupPolicy: only one of coscheduling, volcano can be configured")
    containers = _container_names(runtime)
    for k, target in enumerate(_dig(ml, "torch", "envInjection", "targets") or []):
        where = f"spec.mlPolicy.torch.envInjection.targets[{k}]"
        names = target.get("containerNames") or []
        if TRAINER_NODE in names:
            errs.append(
                f"{where}.containerNames: must not include {TRAINER_NODE!r} (PET_* envs always go there)"
            )
        for name in names:
            if name not in containers.get(str(target.get("jobName")), set()):
                errs.append(
                    f"{where}: container {name!r} of job {target.get('jobName')!r} is not in the template"
                )
    tspec = _dig(runtime, "spec", "template", "spec") or {}
    rjobs = _replicated_jobs(runtime)
    if _dig(tspec, "startupPolicy", "startupPolicyOrder") == "InOrder" and any(
        "dependsOn" in r for r in rjobs
    ):
        errs.append("spec.template.spec: startupPolicy InOrder and dependsOn are mutually exclusive")
    for i, rjob in enumerate(rjobs):
        where = f"spec.template.spec.replicatedJobs[{i}]"
        ancestor = _dig(rjob, "template", "metadata", "labels", LABEL_ANCESTOR)
        if ancestor not in ANCESTOR_CONTAINERS:
            continue
        if rjob.get("replicas", 1) != 1:
            errs.append(f"{where}.replicas: always must be 1 (job of ancestor {ancestor!r})")
        if ANCESTOR_CONTAINERS[ancestor] not in {c.get("name") for c in _pod_containers(rjob)}:
            errs.append(
                f"{where}.template.spec.template.spec.containers: must contain the required container "
                f"{ANCESTOR_CONTAINERS[ancestor]!r} for the ancestor {ancestor!r}"
            )
    if not any(_dig(r, "template", "metadata", "labels", LABEL_ANCESTOR) == ANCESTOR_TRAINER for r in rjobs):
        errs.append(
            f"spec.template.spec.replicatedJobs: no job is labelled {LABEL_ANCESTOR}={ANCESTOR_TRAINER}, "
            "so a TrainJob's spec.trainer would reach no pod"
        )
    return errs


def _check(obj: Obj, problems: list[str], crd_dir: str | os.PathLike[str] | None) -> bool:
    path = find_trainer_crd(str(obj.get("kind")), crd_dir) if obj.get("kind") in CRD_FILES else None
    if path is not None:
        schema = load_schema(str(path))
        problems = problems + schema_errors(obj, schema) + unknown_field_errors(obj, schema)
    if problems:
        raise ManifestInvalid((obj.get("metadata") or {}).get("name", "?"), problems, str(obj.get("kind")))
    return path is not None


def validate_trainjob(
    job: Obj, runtime: Obj | None = None, crd_dir: str | os.PathLike[str] | None = None
) -> bool:
    """Raise ManifestInvalid listing every problem; True if the CRD schema was checked too."""
    return _check(job, trainjob_webhook_errors(job, runtime), crd_dir)


def validate_runtime(runtime: Obj, crd_dir: str | os.PathLike[str] | None = None) -> bool:
    """Raise ManifestInvalid listing every problem; True if the CRD schema was checked too."""
    return _check(runtime, runtime_webhook_errors(runtime), crd_dir)
