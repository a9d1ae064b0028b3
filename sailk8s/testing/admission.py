"""Admission for PyTorchJobs: the Training Operator v1.9 webhook rules and, optionally, the CRD schema."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

from sailk8s.testing.apierrors import ApiError

Obj = dict[str, Any]

WEBHOOK = "validator.pytorchjob.training-operator.kubeflow.org"
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def webhook_problems(job: Obj) -> list[str]:
    """What the operator's validating webhook (v1.9 validatePyTorchJob) refuses, as field errors."""
    problems: list[str] = []
    name = (job.get("metadata") or {}).get("name") or ""
    if len(name) > 63 or not _DNS1035.match(name):
        problems.append(
            f'metadata.name: Invalid value: "{name}": a lowercase RFC 1035 label must consist of lower case '
            "alphanumeric characters or '-', start with an alphabetic character, and end with an "
            "alphanumeric character"
        )
    spec = job.get("spec") or {}
    replicas = spec.get("pytorchReplicaSpecs") or {}
    if not replicas:
        problems.append("spec.pytorchReplicaSpecs: Required value: must be specified")
    for rtype, rspec in replicas.items():
        where = f"spec.pytorchReplicaSpecs[{rtype}]"
        if rtype not in ("Master", "Worker"):
            problems.append(f'{where}: Unsupported value: "{rtype}": supported values: "Master", "Worker"')
        rspec = rspec or {}
        if rtype == "Master" and int(rspec.get("replicas", 1)) != 1:
            problems.append(f"{where}.replicas: Forbidden: must be 1")
        containers = ((rspec.get("template") or {}).get("spec") or {}).get("containers") or []
        if not containers:
            problems.append(f"{where}.template.spec.containers: Required value: must be specified")
        for i, container in enumerate(containers):
            if not container.get("image"):
                problems.append(
                    f"{where}.template.spec.containers[{i}].image: Required value: must be specified"
                )
        if containers and not any(c.get("name") == "pytorch" for c in containers):
            problems.append(
                f"{where}.template.spec.containers: Required value: must have a container named pytorch"
            )
    elastic = spec.get("elasticPolicy")
    if elastic is not None:
        if "Worker" not in replicas:
            problems.append(
                "spec.pytorchReplicaSpecs[Worker]: Required value: must be configured if elastic policy"
            )
        if spec.get("nprocPerNode") is not None and elastic.get("nProcPerNode") is not None:
            problems.append(
                "spec.elasticPolicy.nProcPerNode: Forbidden: must not be used with spec.nprocPerNode"
            )
    return problems


def load_crd(path: str | Path) -> Obj:
    """The CustomResourceDefinition object in a YAML file."""
    import yaml

    with open(path) as handle:  # the C loader: the upstream CRD is ~10k lines
        crd = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"{path} is not a CustomResourceDefinition")
    return crd


_VALIDATORS: dict[int, tuple[Obj, Any]] = {}  # id(crd) -> (crd, compiled validator); holding crd pins its id


def schema_problems(job: Obj, crd: Obj) -> list[str]:
    """Violations of the CRD's openAPIV3Schema, as the API server lists them."""
    cached = _VALIDATORS.get(id(crd))
    validator = cached[1] if cached is not None and cached[0] is crd else None
    if validator is None:
        # Imported by name: jsonschema is a test extra and ships no type stubs.
        jsonschema = importlib.import_module("jsonschema")
        validator = jsonschema.Draft7Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
        _VALIDATORS[id(crd)] = (crd, validator)
    problems = []
    for error in sorted(validator.iter_errors(job), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in error.absolute_path) or "<root>"
        problems.append(f"{where}: Invalid value: {error.message}")
    return problems


def admit(job: Obj, crd: Obj | None, webhook: bool) -> None:
    """Raise the 422 a real cluster answers for an invalid PyTorchJob.

    A real cluster rejects a bad PyTorchJob before the operator sees it; so does the fake, which
    makes manifest bugs fail end-to-end tests the way they would fail in production.
    """
    name = (job.get("metadata") or {}).get("name") or ""
    problems = schema_problems(job, crd) if crd is not None else []
    if problems:
        raise ApiError(
            422,
            "Invalid",
            f'PyTorchJob.kubeflow.org "{name}" is invalid: ' + ", ".join(problems),
            {"name": name, "group": "kubeflow.org", "kind": "PyTorchJob"},
        )
    problems = webhook_problems(job) if webhook else []
    if problems:
        raise ApiError(
            422,
            "Invalid",
            f'admission webhook "{WEBHOOK}" denied the request: PyTorchJob.kubeflow.org "{name}" is invalid: '
            + ", ".join(problems),
            {"name": name, "group": "kubeflow.org", "kind": "PyTorchJob"},
        )


TRAINER_WEBHOOK = "validator.trainjob.trainer.kubeflow.org"


def admit_trainjob(job: Obj, runtime: Obj | None, webhook: bool, crd_dir: str | Path | None = None) -> None:
    """Raise the 422 a Trainer v2.3 cluster answers: with `crd_dir`, the TrainJob CRD's schema
    (unknown fields too, as strict field validation does); then the validating webhook: the
    runtime must exist, and the job must pass the rules (ours, in trainvalidation) against it."""
    from sailk8s.backends.kubernetes import trainvalidation, validation

    name = (job.get("metadata") or {}).get("name") or ""
    crd = trainvalidation.find_trainer_crd("TrainJob", crd_dir) if crd_dir else None
    if crd is not None:
        schema = validation.load_schema(str(crd))
        problems = validation.schema_errors(job, schema) + validation.unknown_field_errors(job, schema)
        if problems:
            raise ApiError(422, "Invalid",
                           f'TrainJob.trainer.kubeflow.org "{name}" is invalid: ' + ", ".join(problems),
                           {"name": name, "group": "trainer.kubeflow.org", "kind": "TrainJob"})
    if not webhook:
        return
    if runtime is None:
        ref = (job.get("spec") or {}).get("runtimeRef") or {}
        problems = [f"spec.runtimeRef: Invalid value: {ref.get('kind', 'ClusterTrainingRuntime')} "
                    f"{ref.get('name')!r} not found: specified trainingRuntime must be created before the "
                    "TrainJob is created"]
    else:
        problems = trainvalidation.trainjob_webhook_errors(job, runtime)
    if problems:
        raise ApiError(
            422,
            "Invalid",
            f'admission webhook "{TRAINER_WEBHOOK}" denied the request: '
            f'TrainJob.trainer.kubeflow.org "{name}" is invalid: ' + ", ".join(problems),
            {"name": name, "group": "trainer.kubeflow.org", "kind": "TrainJob"},
        )


def minimal_crd() -> Obj:
    """A PyTorchJob CRD object without a schema, for discovery-by-CRD when no file is given."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "pytorchjobs.kubeflow.org"},
        "spec": {
            "group": "kubeflow.org",
            "names": {
                "kind": "PyTorchJob",
                "listKind": "PyTorchJobList",
                "plural": "pytorchjobs",
                "singular": "pytorchjob",
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }
