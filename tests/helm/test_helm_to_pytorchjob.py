"""From chart values to the PyTorchJobs the controller will create, through the real builder."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import KIND_IMAGE, NAMESPACE, ROOT, VALUE_SETS, pipeline_of

from sailk8s.backends.kubernetes.manifest import CONTAINER, build_pytorchjob

CRD = ROOT.parent / "shared" / "crds" / "kubeflow.org_pytorchjobs.yaml"


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def crd_validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    if not CRD.exists():
        pytest.skip(f"{CRD} is absent")
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_stage_jobs_run_the_kind_image_module_and_secret(render: Any, crd_validator: Any,
                                                         values_name: str) -> None:
    pipeline = pipeline_of(render(VALUE_SETS[values_name]))
    for stage in pipeline.stages:
        job = build_pytorchjob(pipeline, stage, 1, namespace=NAMESPACE)
        errors = [e.message for e in crd_validator.iter_errors(job)]
        assert errors == [], (values_name, stage.name, errors)
        (container,) = [c for c in pod_spec(job)["containers"] if c["name"] == CONTAINER]
        image = container["image"]
        assert image.rsplit("/", 1)[-1].startswith(KIND_IMAGE[stage.kind] + ":"), (values_name, stage.name)
        argv = container.get("command", []) + container.get("args", [])
        module = argv[len(argv) - argv[::-1].index("-m")]  # the last -m: the launcher comes first
        assert module == f"jobs.{stage.kind}" and importlib.util.find_spec(module) is not None
        env = {e["name"]: e for e in container["env"]}
        for key in ("SAIL_STORE_ACCESS_KEY", "SAIL_STORE_SECRET_KEY"):
            ref = env[key]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == pipeline.store_secret and ref["key"] == key and "value" not in env[key]


def test_node_pools_reach_the_pods(render: Any) -> None:
    pipeline = pipeline_of(render(VALUE_SETS["gpu-pools-values"]))
    spec = pod_spec(build_pytorchjob(pipeline, pipeline.stage("pretrain"), 1, namespace=NAMESPACE))
    assert spec["nodeSelector"] == {"node.kubernetes.io/instance-type": "p5.48xlarge"}
    assert {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoExecute",
            "tolerationSeconds": 600} in spec["tolerations"]
    assert spec["priorityClassName"] == "training-high"


def test_kueue_queue_reaches_the_job_labels(render: Any) -> None:
    pipeline = pipeline_of(render(VALUE_SETS["kueue-values"]))
    job = build_pytorchjob(pipeline, pipeline.stage("pretrain"), 1, namespace=NAMESPACE)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-vl"


def test_workload_images_are_built_by_the_workload_dockerfile() -> None:
    text = (Path(ROOT) / "images" / "workload" / "Dockerfile").read_text()
    for target in {KIND_IMAGE[k].removeprefix("sail-") for k in KIND_IMAGE}:
        assert f" AS {target}\n" in text
