"""The fake Trainer v2: TrainJob + runtime -> JobSet-style node pods with the PET_* env, conditions,
suspension (Kueue), signal deaths replaced, app failures failing the job, and admission."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from sailk8s.backends.kubernetes.trainruntime import build_training_runtime
from sailk8s.testing import FakeKubernetes, FakeTrainingOperator, behaviors
from sailk8s.testing.podspecs import container_env
from sailk8s.testing.trainpods import strategic_merge

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"


def trainjob(name: str, nodes: int = 2, **spec: Any) -> dict[str, Any]:
    labels = {"sail.io/run": "r1", "sail.io/stage": "s"}
    patch = {
        "manager": "sail.io/sailk8s",
        "trainingRuntimeSpec": {
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": "node",
                            "template": {
                                "spec": {
                                    "template": {
                                        "metadata": {"labels": labels},
                                        "spec": {
                                            "nodeSelector": {"pool": "gpu"},
                                            "volumes": [{"name": "dshm", "emptyDir": {"sizeLimit": "1Gi"}}],
                                        },
                                    }
                                }
                            },
                        }
                    ]
                }
            }
        },
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "runtimeRef": {"name": "sail-torch"},
            "runtimePatches": [patch],
            "trainer": {
                "numNodes": nodes,
                "numProcPerNode": 2,
                "image": "img:2",
                "command": ["python", "-m", "jobs.launch", "-m", "jobs.ingest"],
                "env": [{"name": "SAIL_RUN", "value": "r1"}],
            },
            **spec,
        },
    }


@pytest.fixture
def runtime(kube: FakeKubernetes) -> dict[str, Any]:
    return kube.install_runtime(build_training_runtime(image="img:1", store_secret=None))


def wait_until(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.02)
    raise TimeoutError(check)


def job_of(kube: FakeKubernetes, name: str) -> dict[str, Any]:
    found = kube.state.find(kube.type(PLURAL, GROUP), "default", name)
    assert found is not None
    return found


def conditions(job: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in (job.get("status") or {}).get("conditions") or []}


def test_node_pods_carry_runtime_patch_trainer_and_pet_env(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi, runtime: dict[str, Any]
) -> None:
    with FakeTrainingOperator(kube, duration=0.3) as operator:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, trainjob("t1"))
        job = wait_until(lambda: "Complete" in conditions(job_of(kube, "t1")) and job_of(kube, "t1"))
        assert operator.errors == []
    assert conditions(job)["Complete"] == ("True", "AllJobsCompleted")
    assert job["status"]["jobsStatus"][0]["succeeded"] == 1
    pods = sorted(
        core.list_namespaced_pod("default", label_selector="sail.io/run=r1,sail.io/stage=s").items,
        key=lambda p: p.metadata.labels["batch.kubernetes.io/job-completion-index"],
    )
    assert [p.metadata.name[: len("t1-node-0-0")] for p in pods] == ["t1-node-0-0", "t1-node-0-1"]
    pod = pods[1]
    labels = pod.metadata.labels
    assert (
        labels["jobset.sigs.k8s.io/jobset-name"] == "t1"
        and labels["jobset.sigs.k8s.io/replicatedjob-name"] == "node"
    )
    assert labels["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    assert pod.metadata.owner_references[0].kind == "TrainJob"
    assert pod.spec.node_selector == {"pool": "gpu"}  # from the runtime patch
    (shm,) = pod.spec.volumes
    assert (shm.empty_dir.medium, shm.empty_dir.size_limit) == ("Memory", "1Gi")  # merged by name
    (c,) = pod.spec.containers
    assert (c.name, c.image, c.command[-1]) == ("node", "img:2", "jobs.ingest")
    assert c.security_context.allow_privilege_escalation is False  # the runtime's defaults stay
    env, missing = container_env(kube, kube.state.find(kube.type("pods"), "default", pod.metadata.name) or {})
    assert missing is None
    assert {
        k: env[k]
        for k in (
            "PET_NNODES",
            "PET_NPROC_PER_NODE",
            "PET_NODE_RANK",
            "PET_MASTER_ADDR",
            "PET_MASTER_PORT",
            "SAIL_RUN",
        )
    } == {
        "PET_NNODES": "2",
        "PET_NPROC_PER_NODE": "2",
        "PET_NODE_RANK": "1",
        "PET_MASTER_ADDR": "t1-node-0-0.t1",
        "PET_MASTER_PORT": "29500",
        "SAIL_RUN": "r1",
    }


def test_suspended_trainjob_has_no_pods_until_resumed(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi, runtime: dict[str, Any]
) -> None:
    with FakeTrainingOperator(kube, duration=0.3):
        custom.create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, trainjob("t2", suspend=True)
        )
        wait_until(lambda: conditions(job_of(kube, "t2")).get("Suspended") == ("True", "Suspended"))
        time.sleep(0.2)
        assert core.list_namespaced_pod("default").items == []
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, "t2", {"spec": {"suspend": False}}
        )
        job = wait_until(lambda: "Complete" in conditions(job_of(kube, "t2")) and job_of(kube, "t2"))
    assert conditions(job)["Suspended"] == ("False", "Resumed")


def test_signal_death_is_replaced_and_an_app_exit_fails_the_job(
    kube: FakeKubernetes, custom: client.CustomObjectsApi, runtime: dict[str, Any]
) -> None:
    with FakeTrainingOperator(kube, duration=0.3) as operator:
        operator.script(behaviors.fail(exit_code=137, after=0.05), job="t3", replica="worker")
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, trainjob("t3"))
        job = wait_until(lambda: "Complete" in conditions(job_of(kube, "t3")) and job_of(kube, "t3"))
        assert operator.restarts(job["metadata"]["uid"]) == 1
        operator.script(behaviors.fail(exit_code=3, after=0.05), job="t4", replica="master")
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, trainjob("t4"))
        failed = wait_until(lambda: "Failed" in conditions(job_of(kube, "t4")) and job_of(kube, "t4"))
        assert operator.errors == []
    assert conditions(failed)["Failed"] == ("True", "FailedJobs")
    assert operator.restarts(failed["metadata"]["uid"]) == 0


def test_admission_needs_the_runtime_and_applies_the_webhook_rules(
    kube: FakeKubernetes, custom: client.CustomObjectsApi
) -> None:
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, trainjob("t5"))
    assert err.value.status == 422 and "must be created before the TrainJob" in err.value.body
    kube.install_runtime(build_training_runtime(image="img:1", store_secret=None))
    bad = trainjob("t6")
    bad["spec"]["trainer"]["env"].append({"name": "PET_NNODES", "value": "9"})
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, bad)
    assert err.value.status == 422 and "PET_NNODES" in err.value.body


def test_strategic_merge_merges_maps_and_named_lists_and_replaces_the_rest() -> None:
    base = {
        "labels": {"a": "1"},
        "volumes": [{"name": "v", "emptyDir": {"medium": "Memory"}}],
        "tolerations": [{"key": "x"}],
    }
    patch = {
        "labels": {"b": "2"},
        "volumes": [{"name": "v", "emptyDir": {"sizeLimit": "1Gi"}}, {"name": "w"}],
        "tolerations": [{"key": "y"}],
    }
    assert strategic_merge(base, patch) == {
        "labels": {"a": "1", "b": "2"},
        "volumes": [{"name": "v", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}, {"name": "w"}],
        "tolerations": [{"key": "y"}],
    }


def test_with_the_trainer_crds_the_schema_is_enforced_too() -> None:
    crds = Path(__file__).resolve().parents[3] / "shared" / "crds" / "trainer-v2"
    if not crds.is_dir():
        pytest.skip(f"Trainer v2 CRDs not found at {crds}")
    pytest.importorskip("jsonschema")
    with FakeKubernetes(trainer_crds=crds) as kube:
        kube.install_runtime(build_training_runtime(image="img:1", store_secret=None))
        api = client.CustomObjectsApi(client.ApiClient(kube.client_configuration()))
        bad = trainjob("t7")
        bad["spec"]["trainer"]["nodes"] = 2  # a typo the API server would otherwise prune silently
        with pytest.raises(client.ApiException) as err:
            api.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, bad)
        assert err.value.status == 422 and "spec.trainer.nodes: unknown field" in err.value.body
        api.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, trainjob("t8"))
