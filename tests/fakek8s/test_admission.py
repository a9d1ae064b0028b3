"""PyTorchJob admission (webhook rules, CRD schema) and the CRD object that switches kubeflow.org/v1 on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fk_support import GROUP, PLURAL, VERSION, pytorchjob
from kubernetes import client

from sailk8s.testing import FakeKubernetes

CRD_FILE = Path(__file__).resolve().parents[3] / "shared" / "crds" / "kubeflow.org_pytorchjobs.yaml"


def _message(exc: client.ApiException) -> str:
    return str(json.loads(exc.body)["message"])


def test_webhook_rejects_a_job_without_a_pytorch_container(custom: client.CustomObjectsApi) -> None:
    job = pytorchjob("j1")
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["name"] = "main"
    with pytest.raises(client.ApiException) as info:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, job)
    assert info.value.status == 422
    assert 'admission webhook "validator.pytorchjob.training-operator.kubeflow.org" denied' in _message(
        info.value
    )
    assert "container named pytorch" in _message(info.value)


def test_webhook_rules_apply_to_dry_run_and_patch(
    custom: client.CustomObjectsApi, kube: FakeKubernetes
) -> None:
    bad = pytorchjob("j1")
    bad["spec"]["pytorchReplicaSpecs"]["Chief"] = bad["spec"]["pytorchReplicaSpecs"]["Master"]
    before = kube.state.resource_version
    with pytest.raises(client.ApiException) as info:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, bad, dry_run="All")
    assert info.value.status == 422 and 'Unsupported value: "Chief"' in _message(info.value)
    assert kube.state.resource_version == before
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, pytorchjob("j1"))
    with pytest.raises(client.ApiException) as patched:
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            "default",
            PLURAL,
            "j1",
            {"spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 2}}}},
        )
    assert patched.value.status == 422 and "must be 1" in _message(patched.value)


def test_webhook_rejects_names_that_are_not_dns_1035(custom: client.CustomObjectsApi) -> None:
    with pytest.raises(client.ApiException) as info:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, pytorchjob("1-starts-with-digit")
        )
    assert info.value.status == 422 and "RFC 1035" in _message(info.value)


@pytest.mark.skipif(not CRD_FILE.exists(), reason="the upstream PyTorchJob CRD (../shared/crds) is absent")
def test_crd_schema_validation() -> None:
    with FakeKubernetes(crd_file=CRD_FILE) as kube, client.ApiClient(kube.client_configuration()) as api:
        custom = client.CustomObjectsApi(api)
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, pytorchjob("good"))
        bad = pytorchjob("bad")
        bad["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
        with pytest.raises(client.ApiException) as info:
            custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, bad)
        assert info.value.status == 422
        assert "spec.pytorchReplicaSpecs.Master.replicas" in _message(info.value)
        served = client.ApiextensionsV1Api(api).read_custom_resource_definition("pytorchjobs.kubeflow.org")
        assert served.spec.versions[0].additional_printer_columns[0].name == "State"


def test_crd_object_switches_the_api_group(
    kube: FakeKubernetes, api: client.ApiClient, custom: client.CustomObjectsApi
) -> None:
    extensions = client.ApiextensionsV1Api(api)
    assert extensions.read_custom_resource_definition("pytorchjobs.kubeflow.org").spec.group == "kubeflow.org"
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, pytorchjob("j1"))
    extensions.delete_custom_resource_definition("pytorchjobs.kubeflow.org")
    assert not kube.crd_installed
    with pytest.raises(client.ApiException) as info:
        custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    assert info.value.status == 404
    kube.crd_installed = True
    assert (
        custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["items"] == []
    )  # jobs went with it


def test_cluster_without_the_operator() -> None:
    with FakeKubernetes(install_crd=False) as kube, client.ApiClient(kube.client_configuration()) as api:
        groups = [g.name for g in client.ApisApi(api).get_api_versions().groups]
        assert "kubeflow.org" not in groups
        with pytest.raises(client.ApiException) as info:
            client.CustomObjectsApi(api).create_namespaced_custom_object(
                GROUP, VERSION, "default", PLURAL, pytorchjob("j1")
            )
        assert info.value.status == 404
