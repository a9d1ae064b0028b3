"""Check PyTorchJob manifests against the upstream CRD schema and the operator's webhook rules."""

from __future__ import annotations

import functools
import importlib
import os
import re
from pathlib import Path
from typing import Any

import yaml

from sailk8s.errors import BackendError

CRD_FILE = "kubeflow.org_pytorchjobs.yaml"
CRD_ENV = "SAIL_PYTORCHJOB_CRD"
REPLICA_TYPES = ("Master", "Worker")
RESTART_POLICIES = ("Always", "OnFailure", "Never", "ExitCode")
CLEAN_POD_POLICIES = ("All", "Running", "None")
RDZV_BACKENDS = ("c10d", "etcd", "etcd-v2")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def name_errors(manifest: dict[str, Any]) -> list[str]:
    """metadata.name must be a DNS-1035 label, as both operators require."""
    name = (manifest.get("metadata") or {}).get("name") or ""
    if len(name) > 63 or not _DNS1035.match(name):
        return [
            f"metadata.name: {name!r} is not a DNS-1035 label (lowercase letters, digits, '-', "
            "starting with a letter, at most 63 characters)"
        ]
    return []


class ManifestInvalid(BackendError):
    """A manifest we built breaks the CRD schema or a webhook rule (a bug or a bad spec)."""

    def __init__(self, name: str, problems: list[str], kind: str = "PyTorchJob") -> None:
        super().__init__(f"{kind} {name!r} is invalid: " + "; ".join(problems))
        self.problems = problems


def find_crd(
    path: str | os.PathLike[str] | None = None, filename: str = CRD_FILE, env_var: str = CRD_ENV
) -> Path | None:
    """The CRD file: the given path, $SAIL_PYTORCHJOB_CRD, or ../shared/crds from the repo root.

    The CRDs (kubeflow.org_pytorchjobs.yaml of Training Operator v1.9, trainer-v2/... of Trainer
    v2.3) are data we do not ship; `filename` is relative to crds/, `env_var` names the override.
    """
    if path is not None:
        return Path(path)
    env = os.environ.get(env_var) if env_var else None
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[3]
    candidate = repo_root.parent / "shared" / "crds" / filename
    return candidate if candidate.is_file() else None


@functools.lru_cache(maxsize=4)
def load_schema(path: str) -> dict[str, Any]:
    """The openAPIV3Schema of the CRD's first served version."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise BackendError(f"cannot read the CRD at {path}: {err}") from None
    except yaml.YAMLError as err:
        raise BackendError(f"{path} is not valid YAML: {err}") from None
    try:
        versions = doc["spec"]["versions"]
        chosen = next((v for v in versions if v.get("served", True)), versions[0])
        schema: dict[str, Any] = chosen["schema"]["openAPIV3Schema"]
    except (KeyError, IndexError, TypeError):
        raise BackendError(f"{path} is not a CustomResourceDefinition with an openAPIV3Schema") from None
    return schema


def schema_errors(manifest: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Draft 7 validation errors, each as `path: message`."""
    try:
        # Imported by name: jsonschema is a test extra and ships no type stubs.
        jsonschema = importlib.import_module("jsonschema")
    except ImportError:
        raise BackendError(
            "checking manifests against the CRD schema needs jsonschema: "
            "pip install 'sail-pipeline[test]' (or pip install jsonschema)"
        ) from None
    validator = jsonschema.Draft7Validator(schema)
    out = []
    for err in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in err.absolute_path) or "(root)"
        out.append(f"{where}: {err.message}")
    return out


def unknown_field_errors(obj: Any, schema: dict[str, Any], where: str = "") -> list[str]:
    """Fields the schema does not declare: the API server prunes them (or, with strict field
    validation, as kubectl asks, rejects them), so a field there would silently do nothing."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    errs: list[str] = []
    if isinstance(obj, dict) and "properties" in schema:
        props = schema["properties"]
        for key, value in obj.items():
            path = f"{where}.{key}" if where else str(key)
            if key in props:
                errs += unknown_field_errors(value, props[key], path)
            elif not schema.get("additionalProperties"):
                errs.append(f"{path}: unknown field (the CRD schema does not declare it)")
    elif isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in obj.items():
            errs += unknown_field_errors(value, schema["additionalProperties"], f"{where}.{key}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            errs += unknown_field_errors(item, schema["items"], f"{where}[{i}]")
    return errs


def webhook_errors(manifest: dict[str, Any]) -> list[str]:
    """The Training Operator v1.9 admission webhook's rules, plus enums the schema lacks."""
    errs: list[str] = []
    if manifest.get("apiVersion") != "kubeflow.org/v1" or manifest.get("kind") != "PyTorchJob":
        errs.append("apiVersion/kind: must be kubeflow.org/v1 PyTorchJob")
    errs += name_errors(manifest)
    spec = manifest.get("spec") or {}
    specs = spec.get("pytorchReplicaSpecs") or {}
    if not specs:
        errs.append("spec.pytorchReplicaSpecs: must not be empty")
    for rtype, rspec in specs.items():
        where = f"spec.pytorchReplicaSpecs.{rtype}"
        if rtype not in REPLICA_TYPES:
            errs.append(f"{where}: replica type must be one of {', '.join(REPLICA_TYPES)}")
        rspec = rspec or {}
        if rtype == "Master" and rspec.get("replicas", 1) != 1:
            errs.append(f"{where}.replicas: must be 1")
        policy = rspec.get("restartPolicy")
        if policy is not None and policy not in RESTART_POLICIES:
            errs.append(f"{where}.restartPolicy: {policy!r} is not one of {', '.join(RESTART_POLICIES)}")
        containers = ((rspec.get("template") or {}).get("spec") or {}).get("containers") or []
        if not containers:
            errs.append(f"{where}.template.spec.containers: must not be empty")
        for i, c in enumerate(containers):
            if not c.get("image"):
                errs.append(f"{where}.template.spec.containers[{i}].image: must be set")
        if containers and not any(c.get("name") == "pytorch" for c in containers):
            errs.append(f"{where}.template.spec.containers: one container must be named 'pytorch'")
    elastic = spec.get("elasticPolicy")
    if elastic is not None:
        if "Worker" not in specs:
            errs.append("spec.pytorchReplicaSpecs.Worker: must be configured when elasticPolicy is used")
        if spec.get("nprocPerNode") is not None and elastic.get("nProcPerNode") is not None:
            errs.append("spec.elasticPolicy.nProcPerNode: must not be used with spec.nprocPerNode")
        lo, hi = elastic.get("minReplicas"), elastic.get("maxReplicas")
        if lo is not None and hi is not None and lo > hi:
            errs.append("spec.elasticPolicy: minReplicas must be <= maxReplicas")
        backend = elastic.get("rdzvBackend")
        if backend is not None and backend not in RDZV_BACKENDS:
            errs.append(
                f"spec.elasticPolicy.rdzvBackend: {backend!r} is not one of {', '.join(RDZV_BACKENDS)}"
            )
    clean = (spec.get("runPolicy") or {}).get("cleanPodPolicy")
    if clean is not None and clean not in CLEAN_POD_POLICIES:
        errs.append(f"spec.runPolicy.cleanPodPolicy: {clean!r} is not one of {', '.join(CLEAN_POD_POLICIES)}")
    return errs


def validate_manifest(manifest: dict[str, Any], crd: str | os.PathLike[str] | None = None) -> bool:
    """Raise ManifestInvalid listing every problem; True if the CRD schema was checked too.

    Webhook rules always run; the schema check runs when the CRD file is found (see find_crd).
    """
    problems = webhook_errors(manifest)
    path = find_crd(crd)
    if path is not None:
        problems += schema_errors(manifest, load_schema(str(path)))
    if problems:
        raise ManifestInvalid((manifest.get("metadata") or {}).get("name", "?"), problems)
    return path is not None
