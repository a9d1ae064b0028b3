"""kubeflow.jobApi=trainjob: the chart's sail-torch runtime equals the Python builder's and passes the
Trainer v2.3 rules, the pipeline asks for TrainJobs on it, RBAC and the pre-install check follow."""

from __future__ import annotations

from typing import Any

import pytest
from chartkit import NAMESPACE, VALUE_SETS, find, pipeline_of

from sailk8s.backends.kubernetes.jobapi import job_api
from sailk8s.backends.kubernetes.trainruntime import build_training_runtime
from sailk8s.backends.kubernetes.trainvalidation import (
    trainjob_webhook_errors,
    validate_runtime,
    validate_trainjob,
)

TRAINER = VALUE_SETS["trainer-v2-values"]
SECRET = "sail-store-credentials"


def runtimes(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in ("TrainingRuntime", "ClusterTrainingRuntime")]


def test_the_default_install_has_no_runtime_and_asks_for_pytorchjobs(render: Any) -> None:
    objects = render()
    assert runtimes(objects) == []
    assert pipeline_of(objects).kubernetes.job_api == "pytorchjob"
    (job,) = find(objects, "Job", "crd-check")
    assert job["spec"]["template"]["spec"]["containers"][0]["env"] == [
        {"name": "SAIL_JOB_API", "value": "pytorchjob"}
    ]


@pytest.mark.parametrize(
    ("values", "gang"),
    [
        (TRAINER, "coscheduling"),
        ({"kubeflow": {"jobApi": "trainjob", "trainer": {"gangScheduler": "volcano"}}}, "volcano"),
        ({"kubeflow": {"jobApi": "trainjob"}}, None),
    ],
)
def test_the_chart_runtime_is_the_builders(render: Any, values: dict[str, Any], gang: str | None) -> None:
    objects = render(values)
    (runtime,) = runtimes(objects)
    pipeline = pipeline_of(objects)
    timeout = values["kubeflow"].get("trainer", {}).get("scheduleTimeoutSeconds", 300)
    want = build_training_runtime(
        "sail-torch",
        image=pipeline.image,
        namespace=NAMESPACE,
        store_secret=SECRET,
        gang=gang,  # type: ignore[arg-type]
        schedule_timeout_seconds=timeout,
    )
    assert runtime["kind"] == want["kind"] == "TrainingRuntime"
    assert runtime["metadata"]["namespace"] == NAMESPACE and runtime["metadata"]["name"] == "sail-torch"
    assert runtime["spec"] == want["spec"]
    assert validate_runtime(runtime) is True  # the Trainer v2.3 CRD schema (../shared/crds) and webhook rules


def test_every_stage_renders_a_trainjob_the_chart_runtime_accepts(render: Any) -> None:
    objects = render(TRAINER)
    (runtime,) = runtimes(objects)
    pipeline = pipeline_of(objects)
    assert pipeline.kubernetes.job_api == "trainjob"
    assert (pipeline.kubernetes.runtime.name, pipeline.kubernetes.runtime.kind) == (
        "sail-torch",
        "TrainingRuntime",
    )
    api = job_api(pipeline.kubernetes.job_api)
    for stage in pipeline.stages:
        job = api.build(pipeline, stage, 1, namespace=NAMESPACE)
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-batch"
        assert trainjob_webhook_errors(job, runtime) == [], stage.name
        assert validate_trainjob(job, runtime) is True


def test_trainjob_rbac_and_check(render: Any) -> None:
    objects = render(TRAINER)
    (role,) = find(objects, "Role")
    groups = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert ("trainer.kubeflow.org", "trainjobs") in groups and ("kubeflow.org", "pytorchjobs") not in groups
    assert not [
        o for o in objects if o["kind"].startswith("Cluster")
    ]  # a namespaced runtime: nothing cluster-wide
    (job,) = find(objects, "Job", "crd-check")
    assert job["spec"]["template"]["spec"]["containers"][0]["env"] == [
        {"name": "SAIL_JOB_API", "value": "trainjob"}
    ]


def test_a_cluster_runtime_is_cluster_scoped_and_readable_by_name_only(render: Any) -> None:
    objects = render(
        {"kubeflow": {"jobApi": "trainjob", "trainer": {"runtime": {"kind": "ClusterTrainingRuntime"}}}}
    )
    (runtime,) = runtimes(objects)
    assert runtime["kind"] == "ClusterTrainingRuntime" and "namespace" not in runtime["metadata"]
    (cluster_role,) = find(objects, "ClusterRole")
    assert cluster_role["rules"] == [
        {
            "apiGroups": ["trainer.kubeflow.org"],
            "resources": ["clustertrainingruntimes"],
            "resourceNames": ["sail-torch"],
            "verbs": ["get"],
        }
    ]
    (binding,) = find(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    assert pipeline_of(objects).kubernetes.runtime.kind == "ClusterTrainingRuntime"


def test_an_existing_runtime_is_named_not_installed(render: Any) -> None:
    objects = render(
        {"kubeflow": {"jobApi": "trainjob", "trainer": {"runtime": {"install": False, "name": "team-torch"}}}}
    )
    assert runtimes(objects) == []
    assert pipeline_of(objects).kubernetes.runtime.name == "team-torch"


def test_schema_rejects_an_unknown_job_api(chart: Any) -> None:
    with pytest.raises(Exception, match="jobApi"):
        chart.validate_schema({"kubeflow": {"jobApi": "mpijob"}})
