"""kubectl and the kubeflow-training SDK against the fake server: discovery, tables, logs, CRD absent."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest
from fk_support import GROUP, PLURAL, VERSION, pytorchjob
from kubeflow.training import KubeflowOrgV1PyTorchJob, TrainingClient
from kubernetes import client

from sailk8s.testing import FakeKubernetes, FakeTrainingOperator


def _kubectl(kubectl_bin: str, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [kubectl_bin, "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_discovery_documents(kube: FakeKubernetes) -> None:
    def get(path: str, accept: str = "application/json") -> tuple[str, dict[str, object]]:
        request = urllib.request.Request(kube.url + path, headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=60) as response:  # a hang guard
            return response.headers["Content-Type"], json.loads(response.read())

    assert get("/api")[1]["versions"] == ["v1"]
    groups = {g["name"] for g in get("/apis")[1]["groups"]}  # type: ignore[attr-defined]
    assert {"kubeflow.org", "coordination.k8s.io"} <= groups
    resources = {r["name"] for r in get("/apis/kubeflow.org/v1")[1]["resources"]}  # type: ignore[attr-defined]
    assert resources == {"pytorchjobs", "pytorchjobs/status"}
    assert "leases" in {r["name"] for r in get("/apis/coordination.k8s.io/v1")[1]["resources"]}  # type: ignore[attr-defined]
    assert "pods/log" in {r["name"] for r in get("/api/v1")[1]["resources"]}  # type: ignore[attr-defined]
    assert get("/version")[1]["major"] == "1"
    content_type, aggregated = get(
        "/apis", "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    )
    assert "as=APIGroupDiscoveryList" in content_type
    assert aggregated["kind"] == "APIGroupDiscoveryList"


def test_kubectl_get_pytorchjobs_by_run_label(
    kube: FakeKubernetes, custom: client.CustomObjectsApi, kubectl_bin: str, kubeconfig: Path
) -> None:
    custom.create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, pytorchjob("r1-sft-1", labels={"sail.io/run": "r1"})
    )
    custom.create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, pytorchjob("r2-sft-1", labels={"sail.io/run": "r2"})
    )
    result = _kubectl(kubectl_bin, kubeconfig, "get", "pytorchjobs", "-l", "sail.io/run=r1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "AGE"]
    assert [line.split()[0] for line in lines[1:]] == ["r1-sft-1"]
    as_json = json.loads(_kubectl(kubectl_bin, kubeconfig, "get", "pytorchjobs", "-o", "json").stdout)
    assert sorted(i["metadata"]["name"] for i in as_json["items"]) == ["r1-sft-1", "r2-sft-1"]
    names = _kubectl(kubectl_bin, kubeconfig, "get", "pytorchjob", "r2-sft-1", "-o", "name").stdout.strip()
    assert names == "pytorchjob.kubeflow.org/r2-sft-1"


def test_kubectl_logs_and_get_pods(
    kube: FakeKubernetes, custom: client.CustomObjectsApi, kubectl_bin: str, kubeconfig: Path
) -> None:
    with FakeTrainingOperator(kube, duration=0.2) as operator:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, pytorchjob("r1-sft-1", workers=1, labels={"sail.io/run": "r1"})
        )
        operator.wait_for_job("r1-sft-1")
    pods = _kubectl(kubectl_bin, kubeconfig, "get", "pods", "-l", "sail.io/run=r1")
    assert pods.returncode == 0, pods.stderr
    assert pods.stdout.splitlines()[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert "Completed" in pods.stdout and "r1-sft-1-worker-0" in pods.stdout
    logs = _kubectl(kubectl_bin, kubeconfig, "logs", "r1-sft-1-master-0")
    assert logs.returncode == 0, logs.stderr
    assert "simulated master 0 started" in logs.stdout
    selected = _kubectl(
        kubectl_bin,
        kubeconfig,
        "logs",
        "-l",
        "sail.io/run=r1,training.kubeflow.org/replica-type=master",
        "-f",
    )
    assert selected.returncode == 0, selected.stderr
    assert "simulated master 0 exited 0" in selected.stdout


def test_kubectl_create(kube: FakeKubernetes, kubectl_bin: str, kubeconfig: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "job.json"
    manifest.write_text(json.dumps(pytorchjob("applied")))
    # The fake serves no OpenAPI documents, so kubectl's client-side schema validation is off.
    result = _kubectl(kubectl_bin, kubeconfig, "create", "--validate=false", "-f", str(manifest))
    assert result.returncode == 0, result.stderr
    assert kube.state.find(kube.type("pytorchjobs", "kubeflow.org"), "default", "applied") is not None


def test_training_client_creates_and_lists(kube: FakeKubernetes) -> None:
    training = TrainingClient(client_configuration=kube.client_configuration(), namespace="default")
    model = KubeflowOrgV1PyTorchJob(**{"api_version": "kubeflow.org/v1", "kind": "PyTorchJob"})
    manifest = pytorchjob("sdk-job")
    model.metadata = client.V1ObjectMeta(name="sdk-job")
    model.spec = training.api_client.deserialize(_Response(manifest["spec"]), "KubeflowOrgV1PyTorchJobSpec")
    with FakeTrainingOperator(kube, duration=0.1) as operator:
        training.create_job(model)
        operator.wait_for_job("sdk-job")
    jobs = training.list_jobs(job_kind="PyTorchJob")
    assert [j.metadata.name for j in jobs] == ["sdk-job"]
    assert training.is_job_succeeded("sdk-job", job_kind="PyTorchJob")
    assert training.get_job_pod_names("sdk-job") == ["sdk-job-master-0"]


class _Response:
    """Lets ApiClient.deserialize read a plain dict (it expects an HTTP response)."""

    def __init__(self, payload: object) -> None:
        self.data = json.dumps(payload)


def test_crd_not_installed_is_404_everywhere(
    kube: FakeKubernetes, custom: client.CustomObjectsApi, kubectl_bin: str, kubeconfig: Path
) -> None:
    kube.crd_installed = False
    with pytest.raises(client.ApiException) as info:
        custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    assert info.value.status == 404
    assert json.loads(info.value.body)["message"] == "the server could not find the requested resource"
    result = _kubectl(kubectl_bin, kubeconfig, "get", "pytorchjobs")
    assert result.returncode != 0
    assert "the server doesn't have a resource type" in result.stderr
    kube.crd_installed = True
    assert custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["items"] == []


def test_kubectl_watch_and_delete(
    kube: FakeKubernetes, custom: client.CustomObjectsApi, kubectl_bin: str, kubeconfig: Path
) -> None:
    with FakeTrainingOperator(kube, duration=0.5):
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, pytorchjob("j1"))
        watched = _kubectl(kubectl_bin, kubeconfig, "get", "pytorchjobs", "-w", "--request-timeout=2s")
    assert watched.returncode == 0, watched.stderr
    states = [line.split()[1] for line in watched.stdout.splitlines()[1:] if line.startswith("j1")]
    assert states[-1] == "Succeeded" and len(states) >= 2  # a listed row, then watched Table rows
    deleted = _kubectl(kubectl_bin, kubeconfig, "delete", "pytorchjob", "j1")
    assert deleted.returncode == 0, deleted.stderr
    assert custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["items"] == []
