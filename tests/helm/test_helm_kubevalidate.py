"""Every rendered object passes kubernetes-validate --strict on the oldest and newest supported versions."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from chartkit import ROOT, SUPPORTED, VALUE_SETS

from sailk8s.backends.kubernetes.trainvalidation import validate_runtime

kv = pytest.importorskip("kubernetes_validate")
from kubernetes_validate import utils as kv_utils  # noqa: E402


def test_chart_kube_version_matches_the_oldest_validated_version() -> None:
    chart = yaml.safe_load((ROOT / "helm/sail-pipeline/Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={SUPPORTED[0]}.0-0"


@pytest.mark.parametrize("version", SUPPORTED)
@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_objects_validate_strictly(render: Any, version: str, values_name: str) -> None:
    objects = render(VALUE_SETS[values_name])
    assert objects
    for obj in objects:
        if obj["apiVersion"] == "trainer.kubeflow.org/v1alpha1":
            # The sail-torch runtime: its CRD schema (strict on unknown fields) and webhook rules.
            validate_runtime(obj)
            continue
        # Every other object this chart renders is a built-in kind: none may slip through unchecked.
        assert obj["apiVersion"] in {"v1", "apps/v1", "batch/v1", "rbac.authorization.k8s.io/v1"}
        try:
            kv_utils.validate(obj, version, strict=True)
        except kv_utils.ValidationError as err:
            pytest.fail(f"{values_name}: {obj['kind']}/{obj['metadata']['name']} on {version}: "
                        f"{'.'.join(map(str, err.path))}: {err.message}")


def test_strict_validation_catches_an_unknown_field(render: Any) -> None:
    job = next(o for o in render() if o["kind"] == "Job")
    job["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFs"] = True
    with pytest.raises(kv_utils.ValidationError):
        kv_utils.validate(job, SUPPORTED[0], strict=True)
