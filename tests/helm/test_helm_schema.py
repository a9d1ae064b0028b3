"""`helm lint --strict` is clean and values.schema.json rejects bad values with readable messages."""

from __future__ import annotations

import json
from typing import Any

import pytest
from chartkit import CHART_DIR, VALUE_SETS

from sailk8s.spec import STAGE_KINDS, Stage

# The oldest and newest Kubernetes versions the chart supports (README.md, "Run on a cluster").
KUBE_VERSIONS = ("v1.27.0", "v1.33.0")


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_lint_strict_is_clean_for_every_values_set(helm: Any, kube_version: str) -> None:
    for name, values in VALUE_SETS.items():
        report = helm.lint(CHART_DIR, values, strict=True, kube_version=kube_version)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        # Only the icon suggestion (severity 1, info) is tolerated.
        assert problems == [], (name, kube_version, problems)
        assert report["total_charts_linted"] == 1


@pytest.mark.parametrize(("values", "message"), [
    ({"imageTag": "1"}, "additional properties 'imageTag' not allowed"),
    ({"image": {"tag": 5}}, "at '/image/tag': got number, want string"),
    ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of"),
    ({"store": {"existingSecret": "Bad_Name"}}, "at '/store/existingSecret'"),
    ({"store": {"endpoint": "minio:9000"}}, "at '/store/endpoint'"),
    ({"pipeline": {"run": "Run_1"}}, "at '/pipeline/run'"),
    ({"pipeline": {"store": "file:///data"}}, "at '/pipeline/store'"),
    ({"pipeline": {"namespace": "other"}}, "additional properties 'namespace' not allowed"),
    ({"pipeline": {"stages": []}}, "at '/pipeline/stages': minItems"),
    ({"pipeline": {"stages": [{"name": "x", "kind": "train"}]}},
     "at '/pipeline/stages/0/kind': value must be one of 'ingest', 'caption'"),
    ({"pipeline": {"stages": [{"name": "x", "kind": "sft", "gpus": 8}]}},
     "at '/pipeline/stages/0': additional properties 'gpus' not allowed"),
    ({"pipeline": {"stages": [{"kind": "sft"}]}}, "missing property 'name'"),
    ({"nodePools": {"gpu": {}}}, "invalid propertyName 'gpu'"),
    ({"nodePools": {"sft": {"nodeSelector": {"pool": 1}}}}, "at '/nodePools/sft/nodeSelector/pool'"),
    ({"nodePools": {"sft": {"tolerations": [{"effect": "NoRun"}]}}},
     "at '/nodePools/sft/tolerations/0/effect': value must be one of"),
    ({"controller": {"backoffLimit": -1}}, "at '/controller/backoffLimit': minimum"),
    ({"controller": {"logFormat": "xml"}}, "at '/controller/logFormat'"),
    ({"controller": {"onDefinitionChange": "ignore"}}, "at '/controller/onDefinitionChange'"),
    ({"controller": {"extraEnv": [{"name": "SAIL_STORE_SECRET_KEY", "value": "x"}]}},
     "at '/controller/extraEnv/0/name'"),
    ({"controller": {"resources": {"limits": {"memory": "lots"}}}},
     "at '/controller/resources/limits/memory'"),
    ({"minio": {"enabled": "yes"}}, "at '/minio/enabled': got string, want boolean"),
    ({"minio": {"image": "quay.io/minio/minio:latest"}}, "at '/minio/image'"),
    ({"minio": {"image": "quay.io/minio/minio"}}, "at '/minio/image'"),
    ({"kueue": {"queue": "q"}}, "additional properties 'queue' not allowed"),
])
def test_schema_rejects_bad_values_naming_the_key(chart: Any, helm: Any, values: dict[str, Any],
                                                  message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        chart.validate_schema(chart.merge_values(values))
    assert message in str(err.value)


def test_schema_accepts_every_values_set(chart: Any) -> None:
    for values in VALUE_SETS.values():
        chart.validate_schema(chart.merge_values(values))


def test_schema_stage_fields_follow_the_spec() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    stage = schema["properties"]["pipeline"]["properties"]["stages"]["items"]
    assert set(stage["properties"]) == set(Stage.model_fields)
    assert stage["properties"]["kind"]["enum"] == list(STAGE_KINDS)
    assert schema["properties"]["nodePools"]["propertyNames"]["enum"] == list(STAGE_KINDS)


def test_every_object_in_the_schema_forbids_unknown_keys() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    # Free-form by design: label maps, affinity, and the spec's nested blocks the controller checks.
    free_form = {"affinity", "resources", "retry", "scheduling", "config", "global", "valueFrom"}

    def walk(node: Any, name: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, name
            for key, child in node.get("properties", {}).items():
                if key not in free_form:
                    walk(child, key)
            for key in ("items", "additionalProperties"):
                if isinstance(node.get(key), dict):
                    walk(node[key], name)

    walk(schema, "(root)")
