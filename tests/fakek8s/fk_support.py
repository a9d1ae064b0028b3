"""Builders and waits shared by the fake API server tests (a unique module name: conftest is ambiguous)."""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"


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


def wait_for_phase(core: client.CoreV1Api, pod: str, phase: str, timeout: float = 120.0) -> client.V1Pod:
    """Poll until the pod exists and has `phase` (`timeout`: a hang guard for a busy machine)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = core.read_namespaced_pod(pod, "default")
            if found.status.phase == phase:
                return found
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"pod {pod} never reached {phase}")
        time.sleep(0.02)


def wait_for_pod(core: client.CoreV1Api, pod: str, timeout: float = 120.0) -> client.V1Pod:
    """Poll until the pod exists (in any phase)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return core.read_namespaced_pod(pod, "default")
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"pod {pod} never appeared")
        time.sleep(0.02)
